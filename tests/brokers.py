"""Start a real mosquitto on a free loopback port for tests (plain, or TLS + ACL + passwords).

    Mosquitto(workdir, extra_conf=...)                 plain, anonymous unless extra_conf says otherwise
    pki = make_pki(dir, ["dev1", "dev2", "operator"])  CA + server (127.0.0.1/localhost) + client certs
    Mosquitto.secure(workdir, pki, passwords={"dev1": "pw"}, acl=ACL_TEXT)   TLS + certs + passwords + ACL
    b.kill() (SIGKILL), b.stop() (SIGTERM), b.start() again on the same port; persistence=True keeps
    sessions and queued messages across restarts.
"""
from __future__ import annotations

import datetime as _dt
import ipaddress
import os
import shutil
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from device.localbroker import LocalBroker, free_port, mosquitto_bin  # noqa: F401  (re-exported)


class Mosquitto(LocalBroker):
    """The package's LocalBroker plus a TLS / password / ACL constructor for the link tests."""

    @classmethod
    def secure(cls, workdir: Path, pki: "Pki", *, passwords: dict[str, str] | None = None,
               acl: str | None = None, require_certificate: bool = True, **kw) -> "Mosquitto":
        """TLS listener with the test CA; client certificates required; optional password file
        and ACL file (mosquitto acl_file syntax)."""
        d = Path(workdir)
        conf = (f"cafile {pki.ca_cert}\ncertfile {pki.server_cert}\nkeyfile {pki.server_key}\n"
                f"require_certificate {'true' if require_certificate else 'false'}\n"
                "tls_version tlsv1.2\n")
        if passwords is not None:
            pw = d / "mosquitto.passwd"
            write_password_file(pw, passwords)
            conf += f"allow_anonymous false\npassword_file {pw}\n"
        else:
            conf += "allow_anonymous true\n"
        if acl is not None:
            af = d / "mosquitto.acl"
            af.write_text(acl)
            conf += f"acl_file {af}\n"
        return cls(d, conf, tls=True, **kw)


# ---------------------------------------------------------------- passwords
def write_password_file(path: Path, users: dict[str, str]) -> None:
    """mosquitto password file. Uses mosquitto_passwd when installed, else the $6$ (salted
    SHA-512) format mosquitto 2 reads."""
    path = Path(path)
    path.write_text("")
    tool = shutil.which("mosquitto_passwd")
    for user, pw in users.items():
        if tool:
            subprocess.run([tool, "-b", str(path), user, pw], check=True, capture_output=True)
        else:
            import base64
            import hashlib
            salt = os.urandom(12)
            h = hashlib.sha512(pw.encode() + salt).digest()
            with path.open("a") as f:
                f.write(f"{user}:$6${base64.b64encode(salt).decode()}${base64.b64encode(h).decode()}\n")
    os.chmod(path, 0o600)


# ---------------------------------------------------------------- test PKI
@dataclass
class Pki:
    dir: Path
    ca_cert: Path
    server_cert: Path
    server_key: Path
    clients: dict[str, tuple[Path, Path]] = field(default_factory=dict)   # name -> (cert, key)

    def client(self, name: str) -> tuple[Path, Path]:
        return self.clients[name]


def make_pki(directory: Path, clients: list[str] | tuple[str, ...] = ("dev1",), *,
             other_ca_clients: tuple[str, ...] = ()) -> Pki:
    """A throw-away CA, a server cert for 127.0.0.1/localhost, and one client cert per name
    (CN = name). `other_ca_clients` get certs from a second, untrusted CA. Keys stay in
    `directory` (tmp_path), never in the repo."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(minutes=5)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key, path: Path) -> Path:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        os.chmod(path, 0o600)
        return path

    def make_ca(cn: str):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(now + _dt.timedelta(days=2))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .sign(key, hashes.SHA256()))
        return key, cert

    def issue(ca_key, ca_cert, cn: str, server: bool):
        key = ec.generate_private_key(ec.SECP256R1())
        b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca_cert.subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now).not_valid_after(now + _dt.timedelta(days=2))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                   else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if server:
            b = b.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return key, b.sign(ca_key, hashes.SHA256())

    def write_cert(cert, path: Path) -> Path:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    ca_key, ca_cert = make_ca("kyc-edge test CA")
    pki = Pki(d, write_cert(ca_cert, d / "ca.crt"), Path(), Path())
    sk, sc = issue(ca_key, ca_cert, "localhost", True)
    pki.server_cert, pki.server_key = write_cert(sc, d / "server.crt"), write_key(sk, d / "server.key")
    for cn in clients:
        k, c = issue(ca_key, ca_cert, cn, False)
        pki.clients[cn] = (write_cert(c, d / f"{cn}.crt"), write_key(k, d / f"{cn}.key"))
    if other_ca_clients:
        rk, rc = make_ca("rogue CA")
        for cn in other_ca_clients:
            k, c = issue(rk, rc, cn, False)
            pki.clients[cn] = (write_cert(c, d / f"{cn}.rogue.crt"), write_key(k, d / f"{cn}.rogue.key"))
    return pki


def client_tls_context(pki: Pki, name: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca_cert))
    if name:
        cert, key = pki.client(name)
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


# ---------------------------------------------------------------- MQTT test subscriber
class Sub:
    """A paho MQTT 5 (or 3.1.1) subscriber collecting (topic, payload, properties, retain)."""

    def __init__(self, url_or_port, topic: str = "kyc/#", *, protocol: str = "5",
                 tls_context: ssl.SSLContext | None = None, username: str = "", password: str = "",
                 client_id: str = ""):
        import threading
        import paho.mqtt.client as mqtt
        port = url_or_port if isinstance(url_or_port, int) else int(str(url_or_port).rsplit(":", 1)[1])
        self.msgs: list = []
        self.cv = threading.Condition()
        self.subscribed = threading.Event()
        proto = mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=proto)
        if username:
            self.c.username_pw_set(username, password)
        if tls_context is not None:
            self.c.tls_set_context(tls_context)
        self.c.on_message = self._on_message
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        if not self.subscribed.wait(10):
            raise RuntimeError("test subscriber could not subscribe")

    def _on_message(self, c, u, m) -> None:
        with self.cv:
            self.msgs.append((m.topic, bytes(m.payload), getattr(m, "properties", None), bool(m.retain)))
            self.cv.notify_all()

    def on(self, suffix: str) -> list:
        with self.cv:
            return [m for m in self.msgs if m[0].endswith(suffix)]

    def wait_for(self, pred, timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        with self.cv:
            while not pred():
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self.cv.wait(min(left, 0.1))
            return True

    def publish(self, topic: str, payload, **kw):
        return self.c.publish(topic, payload, **kw).wait_for_publish(5)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()
