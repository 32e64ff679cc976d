"""The workstation tools' MQTT credentials and TLS, one definition (ingest, listen, start, rollout)."""
from __future__ import annotations

import ssl


def apply_auth(c, *, tls: bool, username: str = "", password: str | None = None, ca_file: str = "",
               cert_file: str = "", key_file: str = "", tls_context: ssl.SSLContext | None = None) -> None:
    """Username/password and, for mqtts, a server-verifying TLS context (client cert if given)."""
    if username:
        c.username_pw_set(username, password)
    if tls:
        ctx = tls_context or ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file or None)
        if cert_file and tls_context is None:
            ctx.load_cert_chain(cert_file, key_file or None)
        c.tls_set_context(ctx)
