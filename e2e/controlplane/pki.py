"""The control plane's PKI (one CA, one leaf certificate, one service-account key) and its kubeconfig.

One interface, generate_pki(directory) -> Pki, over two back ends: the openssl CLI when it is on PATH,
else the `cryptography` package. Both write the same files with the same subjects, SANs and usages.
Part of e2e/controlplane (cluster.py puts this directory on sys.path; see its docstring).
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from processes import ControlPlaneError

CERT_DNS_SANS = (
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
    "localhost",
)
CERT_IP_SANS = ("127.0.0.1", "::1", "10.96.0.1")  # 10.96.0.1 = first IP of SERVICE_CIDR


@dataclass(frozen=True)
class Pki:
    """One CA, one leaf cert used by every component and client (O=system:masters), one SA signing key."""

    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path
    sa_key: Path
    sa_pub: Path

    @classmethod
    def in_dir(cls, d: Path) -> Pki:
        return cls(d / "ca.crt", d / "ca.key", d / "admin.crt", d / "admin.key", d / "sa.key", d / "sa.pub")


def generate_pki(directory: Path) -> Pki:
    """Write the PKI into directory; prefers the openssl CLI, falls back to the `cryptography` package."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki.in_dir(directory)
    if shutil.which("openssl"):
        _pki_with_openssl(pki)
    else:
        _pki_with_cryptography(pki)
    for key in (pki.ca_key, pki.key, pki.sa_key):
        key.chmod(0o600)
    return pki


def _openssl(*args: str) -> None:
    res = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60, check=False)
    if res.returncode != 0:
        raise ControlPlaneError(f"openssl {' '.join(args)} failed: {res.stderr.strip()}")


def issue_with_openssl(
    pki: Pki, *, key: Path, cert: Path, subject: str, extensions: Sequence[str], days: int
) -> None:
    """A new key at `key` and a certificate at `cert` for `subject`, signed by the cluster's CA
    (openssl CLI). `extensions` are x509v3 lines (basicConstraints=..., subjectAltName=...).
    Used for the admin certificate here and for the real node's kubelet and kube-proxy."""
    csr, ext = cert.with_suffix(".csr"), cert.with_suffix(".ext")
    ext.write_text("".join(f"{line}\n" for line in extensions))
    _openssl(
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-subj",
        subject,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(pki.ca_cert),
        "-CAkey",
        str(pki.ca_key),
        "-set_serial",
        f"0x{secrets.token_hex(16)}",
        "-days",
        str(days),
        "-extfile",
        str(ext),
        "-out",
        str(cert),
    )
    csr.unlink()
    ext.unlink()


def _pki_with_openssl(pki: Pki) -> None:
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(pki.ca_key),
        "-out",
        str(pki.ca_cert),
        "-days",
        "3650",
        "-subj",
        "/CN=shardrec-e2e-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
    )
    sans = [f"DNS:{d}" for d in CERT_DNS_SANS] + [f"IP:{ip}" for ip in CERT_IP_SANS]
    issue_with_openssl(
        pki,
        key=pki.key,
        cert=pki.cert,
        subject="/O=system:masters/CN=shardrec-admin",
        extensions=[
            "basicConstraints=CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            "extendedKeyUsage=serverAuth,clientAuth",
            f"subjectAltName={','.join(sans)}",
        ],
        days=3650,
    )
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(pki.sa_key))
    _openssl("pkey", "-in", str(pki.sa_key), "-pubout", "-out", str(pki.sa_pub))


def _pki_with_cryptography(pki: Pki) -> None:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def new_key() -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def write_key(k: rsa.RSAPrivateKey, path: Path) -> None:
        path.write_bytes(
            k.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )

    now = dt.datetime.now(dt.UTC)
    ca_key, leaf_key, sa_key = new_key(), new_key(), new_key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shardrec-e2e-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in CERT_DNS_SANS]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in CERT_IP_SANS]
    leaf = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
                    x509.NameAttribute(NameOID.COMMON_NAME, "shardrec-admin"),
                ]
            )
        )
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    write_key(ca_key, pki.ca_key)
    write_key(leaf_key, pki.key)
    write_key(sa_key, pki.sa_key)
    pki.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    pki.sa_pub.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def write_kubeconfig(path: Path, server: str, pki: Pki) -> None:
    """JSON is valid YAML, so no YAML library is needed; absolute paths keep it usable from any cwd."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "shardrec-e2e",
                "cluster": {"server": server, "certificate-authority": str(pki.ca_cert.resolve())},
            }
        ],
        "users": [
            {
                "name": "shardrec-admin",
                "user": {"client-certificate": str(pki.cert.resolve()), "client-key": str(pki.key.resolve())},
            }
        ],
        "contexts": [
            {"name": "shardrec-e2e", "context": {"cluster": "shardrec-e2e", "user": "shardrec-admin"}}
        ],
        "current-context": "shardrec-e2e",
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)
