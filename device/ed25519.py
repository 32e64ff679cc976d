"""Ed25519 for the daemon through the system's libcrypto (OpenSSL >= 1.1.1), which the daemon has mapped
anyway (Python's `ssl`, for MQTT over TLS), instead of `cryptography`, whose Rust module costs the daemon
6-10 MB RSS for one signature per verdict (docs/performance.md, "Memory").

The subset of cryptography's API that device/ uses, with the same names, so the callers do not change:
Ed25519PrivateKey (generate, from_private_bytes, sign, public_key, private_bytes, private_bytes_raw),
Ed25519PublicKey (from_public_bytes, verify, public_bytes, public_bytes_raw), InvalidSignature, and
`serialization` (Encoding, PrivateFormat, PublicFormat, NoEncryption, load_pem_private_key,
load_pem_public_key) for the two PEM forms the box writes (PKCS#8 v1 private, SubjectPublicKeyInfo
public). RFC 8032 signatures are deterministic: tests/test_ed25519.py checks every signature, key and
PEM byte for byte against cryptography. Any other PEM (encrypted, PKCS#8 v2, another algorithm) goes
to cryptography as before, and where libcrypto cannot be loaded the module is cryptography's own.
"""
from __future__ import annotations

import base64
import ctypes
import ctypes.util
import os
from contextlib import contextmanager
from types import SimpleNamespace


def _libcrypto():
    try:
        import _ssl  # noqa: F401 - the libcrypto Python's ssl is linked with is the one to use
    except ImportError:
        pass
    for name in (ctypes.util.find_library("crypto"), "libcrypto.so.3", "libcrypto.so.1.1"):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
            lib.EVP_PKEY_new_raw_private_key  # noqa: B018 - OpenSSL >= 1.1.1
        except (OSError, AttributeError):
            continue
        P, S, I = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int
        for fn, res, args in (
                ("EVP_PKEY_new_raw_private_key", P, (I, P, ctypes.c_char_p, S)),
                ("EVP_PKEY_new_raw_public_key", P, (I, P, ctypes.c_char_p, S)),
                ("EVP_PKEY_get_raw_public_key", I, (P, ctypes.c_char_p, ctypes.POINTER(S))),
                ("EVP_PKEY_free", None, (P,)),
                ("EVP_MD_CTX_new", P, ()),
                ("EVP_MD_CTX_free", None, (P,)),
                ("EVP_DigestSignInit", I, (P, P, P, P, P)),
                ("EVP_DigestSign", I, (P, ctypes.c_char_p, ctypes.POINTER(S), ctypes.c_char_p, S)),
                ("EVP_DigestVerifyInit", I, (P, P, P, P, P)),
                ("EVP_DigestVerify", I, (P, ctypes.c_char_p, S, ctypes.c_char_p, S))):
            f = getattr(lib, fn)
            f.restype, f.argtypes = res, args
        return lib
    return None


_LIB = None if os.environ.get("KYC_EDGE_ED25519") == "cryptography" else _libcrypto()
_NID_ED25519 = 1087
# the fixed DER prefixes of the two forms the box writes (RFC 8410)
_PKCS8_V1 = bytes.fromhex("302e020100300506032b657004220420")
_SPKI = bytes.fromhex("302a300506032b6570032100")


class InvalidSignature(Exception):
    pass


@contextmanager
def _md_ctx():
    """One EVP_MD_CTX for one sign or verify, always freed."""
    ctx = _LIB.EVP_MD_CTX_new()
    if not ctx:
        raise MemoryError("EVP_MD_CTX_new")
    try:
        yield ctx
    finally:
        _LIB.EVP_MD_CTX_free(ctx)


class _Fmt:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


Encoding = SimpleNamespace(PEM=_Fmt("PEM"), DER=_Fmt("DER"), Raw=_Fmt("Raw"))
PrivateFormat = SimpleNamespace(PKCS8=_Fmt("PKCS8"), Raw=_Fmt("Raw"))
PublicFormat = SimpleNamespace(SubjectPublicKeyInfo=_Fmt("SubjectPublicKeyInfo"), Raw=_Fmt("Raw"))


class NoEncryption:
    pass


def _name(fmt) -> str | None:
    """Ours or cryptography's enum member (tools and tests pass theirs) -> its name."""
    return getattr(fmt, "name", None) or str(fmt).rsplit(".", 1)[-1]   # theirs print as "Encoding.Raw"


def _pem(label: str, der: bytes) -> bytes:
    b = base64.b64encode(der)
    lines = b"\n".join(b[i:i + 64] for i in range(0, len(b), 64))
    return b"-----BEGIN " + label.encode() + b"-----\n" + lines + b"\n-----END " + label.encode() + b"-----\n"


def _unpem(data: bytes, label: str) -> bytes | None:
    """The DER inside a PEM block with this label (exactly one block, nothing else), or None."""
    lines = bytes(data).strip().splitlines()
    if len(lines) < 3 or lines[0].strip() != b"-----BEGIN " + label.encode() + b"-----" \
            or lines[-1].strip() != b"-----END " + label.encode() + b"-----":
        return None
    try:
        return base64.b64decode(b"".join(x.strip() for x in lines[1:-1]), validate=True)
    except ValueError:
        return None


class _Key:
    def __init__(self, pkey: int):
        self._pkey = pkey

    def __del__(self):
        if getattr(self, "_pkey", None) and _LIB is not None:
            _LIB.EVP_PKEY_free(self._pkey)
            self._pkey = None


class Ed25519PublicKey(_Key):
    def __init__(self, pkey: int, raw: bytes):
        super().__init__(pkey)
        self._raw = raw

    @classmethod
    def from_public_bytes(cls, data: bytes) -> "Ed25519PublicKey":
        data = bytes(data)
        if len(data) != 32:
            raise ValueError("An Ed25519 public key is 32 bytes long")
        pkey = _LIB.EVP_PKEY_new_raw_public_key(_NID_ED25519, None, data, 32)
        if not pkey:
            raise ValueError("invalid Ed25519 public key")
        return cls(pkey, data)

    def public_bytes_raw(self) -> bytes:
        return self._raw

    def public_bytes(self, encoding, format) -> bytes:  # noqa: A002 - cryptography's signature
        enc, fmt = _name(encoding), _name(format)
        if enc == "Raw" and fmt == "Raw":
            return self._raw
        if fmt == "SubjectPublicKeyInfo" and enc in ("PEM", "DER"):
            der = _SPKI + self._raw
            return der if enc == "DER" else _pem("PUBLIC KEY", der)
        raise ValueError(f"unsupported public key encoding {encoding!r} / {format!r}")

    def verify(self, signature: bytes, data: bytes) -> None:
        signature, data = bytes(signature), bytes(data)
        with _md_ctx() as ctx:
            ok = (len(signature) == 64 and _LIB.EVP_DigestVerifyInit(ctx, None, None, None, self._pkey) == 1
                  and _LIB.EVP_DigestVerify(ctx, signature, len(signature), data, len(data)) == 1)
        if not ok:
            raise InvalidSignature()

    def __eq__(self, other) -> bool:
        return isinstance(other, Ed25519PublicKey) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)


class Ed25519PrivateKey(_Key):
    def __init__(self, pkey: int, seed: bytes):
        super().__init__(pkey)
        self._seed = seed
        buf, n = ctypes.create_string_buffer(32), ctypes.c_size_t(32)
        if _LIB.EVP_PKEY_get_raw_public_key(pkey, buf, ctypes.byref(n)) != 1 or n.value != 32:
            raise ValueError("EVP_PKEY_get_raw_public_key")
        self._pub = Ed25519PublicKey.from_public_bytes(buf.raw)

    @classmethod
    def generate(cls) -> "Ed25519PrivateKey":
        return cls.from_private_bytes(os.urandom(32))    # RFC 8032: the private key is 32 random bytes

    @classmethod
    def from_private_bytes(cls, data: bytes) -> "Ed25519PrivateKey":
        data = bytes(data)
        if len(data) != 32:
            raise ValueError("An Ed25519 private key is 32 bytes long")
        pkey = _LIB.EVP_PKEY_new_raw_private_key(_NID_ED25519, None, data, 32)
        if not pkey:
            raise ValueError("invalid Ed25519 private key")
        return cls(pkey, data)

    def public_key(self) -> Ed25519PublicKey:
        return self._pub

    def private_bytes_raw(self) -> bytes:
        return self._seed

    def private_bytes(self, encoding, format, encryption_algorithm) -> bytes:  # noqa: A002
        if type(encryption_algorithm).__name__ != "NoEncryption":
            raise ValueError("only NoEncryption is supported here")
        enc, fmt = _name(encoding), _name(format)
        if enc == "Raw" and fmt == "Raw":
            return self._seed
        if fmt == "PKCS8" and enc in ("PEM", "DER"):
            der = _PKCS8_V1 + self._seed
            return der if enc == "DER" else _pem("PRIVATE KEY", der)
        raise ValueError(f"unsupported private key encoding {encoding!r} / {format!r}")

    def sign(self, data: bytes) -> bytes:
        data = bytes(data)
        with _md_ctx() as ctx:
            sig, n = ctypes.create_string_buffer(64), ctypes.c_size_t(64)
            if _LIB.EVP_DigestSignInit(ctx, None, None, None, self._pkey) != 1 \
                    or _LIB.EVP_DigestSign(ctx, sig, ctypes.byref(n), data, len(data)) != 1 or n.value != 64:
                raise ValueError("EVP_DigestSign failed")
            return sig.raw


def _from_cryptography(key):
    """A key cryptography loaded: an Ed25519 one becomes ours, any other is returned as it is (so the
    caller's 'not an Ed25519 key' check still refuses it)."""
    from cryptography.hazmat.primitives.asymmetric import ed25519 as c
    if isinstance(key, c.Ed25519PrivateKey):
        return Ed25519PrivateKey.from_private_bytes(key.private_bytes_raw())
    if isinstance(key, c.Ed25519PublicKey):
        return Ed25519PublicKey.from_public_bytes(key.public_bytes_raw())
    return key


def load_pem_private_key(data: bytes, password=None):
    der = _unpem(data, "PRIVATE KEY") if password is None else None
    if der is not None and len(der) == 48 and der.startswith(_PKCS8_V1):
        return Ed25519PrivateKey.from_private_bytes(der[16:])
    from cryptography.hazmat.primitives import serialization as cs
    return _from_cryptography(cs.load_pem_private_key(data, password=password))


def load_pem_public_key(data: bytes):
    der = _unpem(data, "PUBLIC KEY")
    if der is not None and len(der) == 44 and der.startswith(_SPKI):
        return Ed25519PublicKey.from_public_bytes(der[12:])
    from cryptography.hazmat.primitives import serialization as cs
    return _from_cryptography(cs.load_pem_public_key(data))


def as_ours(key):
    """A key object from cryptography (tools, tests) as this module's, so it can be mixed with ours."""
    if isinstance(key, (Ed25519PrivateKey, Ed25519PublicKey)):
        return key
    if hasattr(key, "private_bytes_raw"):
        return Ed25519PrivateKey.from_private_bytes(key.private_bytes_raw())
    if hasattr(key, "public_bytes_raw"):
        return Ed25519PublicKey.from_public_bytes(key.public_bytes_raw())
    return key


serialization = SimpleNamespace(Encoding=Encoding, PrivateFormat=PrivateFormat, PublicFormat=PublicFormat,
                                NoEncryption=NoEncryption, load_pem_private_key=load_pem_private_key,
                                load_pem_public_key=load_pem_public_key)

if _LIB is None:       # no usable libcrypto: cryptography's own classes, as before
    from cryptography.exceptions import InvalidSignature  # noqa: F811
    from cryptography.hazmat.primitives import serialization  # noqa: F811, F401 - re-exported
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey  # noqa: F811

    def as_ours(key):  # noqa: F811
        return key
