"""The sandbox's own certificate authority and the loopback server certificate it signs.

Created with ``cryptography`` on first start in the state folder and reused afterwards; clients
trust the CA file (``ca_file``). TLS validity is checked by real clients against the machine's
clock, so these certificates take their dates from a :class:`~engine.clock.RealClock` (the
certificates of the simulated S2S trust, by contrast, live in the sandbox's clock).
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from engine.clock import Clock, RealClock

CA_NAME = "sss-sim sandbox CA"


def default_state_dir() -> Path:
    """Where the sandbox keeps its CA and certificates: ``$SSS_HOME`` or ``~/.local/share/sss-sim``."""
    env = os.environ.get("SSS_HOME")
    return Path(env) if env else Path.home() / ".local" / "share" / "sss-sim"


@dataclass(frozen=True)
class TlsFiles:
    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _still_valid(path: Path, clock: Clock, margin: timedelta) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return False
    now = clock.now()
    return cert.not_valid_before_utc <= now and now + margin < cert.not_valid_after_utc


def ensure_tls(state_dir: Path | None = None, clock: Clock | None = None) -> TlsFiles:
    """Create (or reuse) the CA and a server certificate for 127.0.0.1, ::1 and localhost."""
    clock = clock or RealClock()
    folder = (state_dir or default_state_dir()) / "tls"
    folder.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(folder / "ca.pem", folder / "server.pem", folder / "server-key.pem")
    margin = timedelta(days=1)
    now = clock.now()
    if not (_still_valid(files.ca_file, clock, margin) and (folder / "ca-key.pem").exists()):
        ca_key = _key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
        ca = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write_key(folder / "ca-key.pem", ca_key)
        files.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        files.cert_file.unlink(missing_ok=True)
    if _still_valid(files.cert_file, clock, margin) and files.key_file.exists():
        return files
    ca = x509.load_pem_x509_certificate(files.ca_file.read_bytes())
    ca_key = serialization.load_pem_private_key((folder / "ca-key.pem").read_bytes(), password=None)
    key = _key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(files.key_file, key)
    files.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return files
