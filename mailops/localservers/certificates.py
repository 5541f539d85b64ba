"""Self-signed certificates for the local stand-ins (TLS of the demo's servers, the identity provider's signing key)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path
from typing import TYPE_CHECKING

from mailops.fileio import atomic_write

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

LOOPBACK = "127.0.0.1"


def self_signed(common_name: str, *, tls_server: bool = False) -> tuple[RSAPrivateKey, x509.Certificate]:
    """A fresh RSA key and a 30-day certificate for it; ``tls_server``: valid for localhost and 127.0.0.1, as a CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
    )
    if tls_server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    return key, builder.sign(key, hashes.SHA256())


def write_self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1 (the local servers' TLS) in ``directory``; returns (cert, key)."""
    from cryptography.hazmat.primitives import serialization

    key, cert = self_signed("localhost", tls_server=True)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    atomic_write(key_path, private, mode=0o600)
    return cert_path, key_path
