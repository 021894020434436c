"""TLS contexts of the router -> shard hop (the certificates come from `shardrec.api.pki`).

A shard serves with its certificate and key (`--tls-cert`, `--tls-key`); the router trusts only
its cluster's CA (`--shard-ca`), so a certificate from any other CA, or none, is refused at the
handshake. TLS 1.2 is the floor (Python's default minimum is also 1.2 today; stated so that a
different OpenSSL build cannot lower it).
"""

from __future__ import annotations

import ssl
from pathlib import Path


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


def client_context(ca_file: Path) -> ssl.SSLContext:
    """Verify the peer's chain against `ca_file` only, and its name (the URL's host, or the
    server name the caller passes)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class CertificateReloader:
    """Serve a renewed certificate without a restart: when the certificate or key file changed
    (a mounted Secret the operator renewed), load the pair into the live server context, which
    every new handshake then uses; established connections keep theirs. A pair that does not load
    (a half-written update, a key that does not match yet) is skipped until the next check."""

    def __init__(self, context: ssl.SSLContext, cert_file: Path, key_file: Path) -> None:
        self.context = context
        self.cert_file = cert_file
        self.key_file = key_file
        self._identity = self._current()

    def _current(self) -> tuple[tuple[int, int, int], ...] | None:
        try:
            return tuple(
                (s.st_ino, s.st_size, s.st_mtime_ns) for s in (self.cert_file.stat(), self.key_file.stat())
            )
        except OSError:
            return None

    def check(self) -> bool:
        """Reload when the files changed; True when a new pair was loaded."""
        identity = self._current()
        if identity is None or identity == self._identity:
            return False
        try:
            self.context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError, ValueError):
            return False
        self._identity = identity
        return True
