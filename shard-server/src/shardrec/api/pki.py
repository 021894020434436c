"""A per-cluster certificate authority and the shards' server certificates (`cryptography`).

ECK is the anchor: each cluster gets its own self-signed CA, so a certificate is only ever trusted
by the routers of the cluster whose CA signed it; the shard certificate names the DNS names (and,
locally, the addresses) a router dials. Keys are ECDSA P-256 (fast handshakes, small keys).

Renewal is decided by `needs_renewal`, a pure function of a certificate's validity and the clock:
renew once less than `renew_before` (default a third of the lifetime) is left, so a missed
reconcile or two never lets a certificate expire in service. Both the operator and the local
runtime use this module; it lives in `shardrec.api` because the operator may import nothing of
the data plane (import-linter).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY: Final = timedelta(days=365 * 5)
SERVER_VALIDITY: Final = timedelta(days=90)
CLOCK_SKEW: Final = timedelta(minutes=5)
"""Certificates start this long before `now`, so a node whose clock is a little behind accepts them."""


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its PEM (PKCS#8, unencrypted) private key."""

    cert_pem: bytes
    key_pem: bytes


@dataclass(frozen=True)
class Validity:
    not_before: datetime
    not_after: datetime


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def new_ca(common_name: str, now: datetime, valid_for: timedelta = CA_VALIDITY) -> KeyPair:
    """A self-signed CA that may sign server certificates only (path length 0)."""
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + valid_for)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def new_server_cert(
    ca: KeyPair,
    dns_names: Sequence[str],
    now: datetime,
    *,
    ip_addresses: Sequence[str] = (),
    valid_for: timedelta = SERVER_VALIDITY,
) -> KeyPair:
    """A TLS server certificate for `dns_names` (wildcards allowed) and `ip_addresses`, signed by `ca`."""
    if not dns_names and not ip_addresses:
        raise ValueError("a server certificate needs at least one DNS name or address")
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key is not an ECDSA key")
    key = _key()
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(address)) for address in ip_addresses]
    common_name = dns_names[0] if dns_names else ip_addresses[0]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(min(now + valid_for, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def validity(cert_pem: bytes) -> Validity:
    cert = x509.load_pem_x509_certificate(cert_pem)
    return Validity(cert.not_valid_before_utc, cert.not_valid_after_utc)


def dns_names(cert_pem: bytes) -> list[str]:
    cert = x509.load_pem_x509_certificate(cert_pem)
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )


def needs_renewal(valid: Validity, now: datetime, renew_before: timedelta | None = None) -> bool:
    """Whether a certificate valid over `valid` should be replaced at `now`: once less than
    `renew_before` is left (default: a third of its lifetime), or when it is not yet valid."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    if renew_before is None:
        renew_before = (valid.not_after - valid.not_before) / 3
    return now < valid.not_before or now >= valid.not_after - renew_before


def signed_by(cert_pem: bytes, ca_pem: bytes) -> bool:
    """Whether `cert_pem`'s signature verifies with `ca_pem`'s key (a CA replaced since: False)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    ca = x509.load_pem_x509_certificate(ca_pem)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
