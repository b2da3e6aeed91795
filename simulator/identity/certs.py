"""S2S certificates: create, write and load the .pfx / .cer pair the setup flow works with.

The CRM proves itself to the identity service with an x509 certificate (SPEC 1.2, 1.3). These
helpers make such certificates and read them back with the checks the real scripts perform:
the file exists, the password opens it, it carries its private key, it is valid *in the
sandbox's clock time* (a training scenario fast-forwards a year and watches it expire) and the
private key of the .pfx belongs to the public certificate in the .cer.

Every failure is a :class:`CertificateError` with a stable ``code`` and a message naming the
file and the problem.
"""

from __future__ import annotations

import base64
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from engine.clock import Clock, as_utc

FILE_MISSING = "file_missing"
UNREADABLE = "unreadable"
WRONG_PASSWORD = "wrong_password"
NO_PRIVATE_KEY = "no_private_key"
NO_CERTIFICATE = "no_certificate"
UNSUPPORTED_KEY = "unsupported_key"
EXPIRED = "expired"
NOT_YET_VALID = "not_yet_valid"
KEY_MISMATCH = "key_mismatch"


class CertificateError(Exception):
    """A certificate problem; ``code`` is one of the module constants (``expired``, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ------------------------------------------------------------------------------ identities

def thumbprint(cert: x509.Certificate) -> str:
    """The SHA-1 thumbprint as Windows shows it: 40 upper-case hex digits."""
    return cert.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303 - a name, not a security check


def thumbprint_sha256(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex().upper()


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def x5t(cert: x509.Certificate) -> str:
    """The JOSE ``x5t`` header value: base64url of the SHA-1 digest of the DER certificate."""
    return _b64url(cert.fingerprint(hashes.SHA1()))


def x5t_s256(cert: x509.Certificate) -> str:
    """The JOSE ``x5t#S256`` header value: base64url of the SHA-256 digest."""
    return _b64url(cert.fingerprint(hashes.SHA256()))


def thumbprint_from_x5t(value: str) -> str:
    """Decode an ``x5t`` / ``x5t#S256`` header to an upper-case hex thumbprint (ValueError if bad)."""
    if not isinstance(value, str) or len(value) > 128:
        raise ValueError("not a thumbprint")
    raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    if len(raw) not in (20, 32):
        raise ValueError("not a SHA-1 or SHA-256 digest")
    return raw.hex().upper()


def private_key_pem(key: rsa.RSAPrivateKey) -> str:
    """The private key as unencrypted PKCS#8 PEM (what msal and the engine take)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode("ascii")


def certificate_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def key_matches(key: rsa.RSAPrivateKey, cert: x509.Certificate) -> bool:
    pub = cert.public_key()
    return isinstance(pub, rsa.RSAPublicKey) and pub.public_numbers() == key.public_key().public_numbers()


# ------------------------------------------------------------------------------ creation

def make_certificate(common_name: str, days: int, clock: Clock, not_before: datetime | None = None,
                     *, key_size: int = 2048) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """A self-signed RSA certificate for ``CN=common_name``, valid for ``days`` from ``not_before``.

    ``not_before`` defaults to the clock's current time (whole seconds), so the validity window
    lives in the sandbox's time, not the machine's. The key itself comes from real randomness.
    """
    if days <= 0:
        raise ValueError("days must be positive")
    start = as_utc(not_before) if not_before is not None else clock.now()
    start = start.replace(microsecond=0)
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(start + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True, content_commitment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _password_bytes(password: str | bytes | None) -> bytes | None:
    if password is None or password in ("", b""):
        return None
    return password.encode("utf-8") if isinstance(password, str) else password


def write_pfx(path: str | Path, key: rsa.RSAPrivateKey | None, cert: x509.Certificate,
              password: str | bytes | None) -> Path:
    """Write a PKCS#12 (.pfx) file with the key and certificate, protected by ``password``.

    ``key=None`` writes a .pfx that holds only the certificate (to exercise "no private key").
    """
    path = Path(path)
    pw = _password_bytes(password)
    enc = serialization.BestAvailableEncryption(pw) if pw else serialization.NoEncryption()
    if key is None:
        data = pkcs12.serialize_key_and_certificates(b"s2s", None, None, [cert], enc)
    else:
        data = pkcs12.serialize_key_and_certificates(b"s2s", key, cert, None, enc)
    path.write_bytes(data)
    return path


def write_cer(path: str | Path, cert: x509.Certificate) -> Path:
    """Write the public certificate as DER (the usual .cer)."""
    path = Path(path)
    path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    return path


# ------------------------------------------------------------------------------ loading

def _read(path: str | Path, what: str) -> bytes:
    p = Path(path)
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise CertificateError(FILE_MISSING, f"The {what} file {p} does not exist.") from None
    except IsADirectoryError:
        raise CertificateError(FILE_MISSING, f"The {what} path {p} is a folder, not a file.") from None
    except OSError as exc:
        raise CertificateError(UNREADABLE, f"The {what} file {p} cannot be read: {exc.strerror}.") from None


def _looks_like_pkcs12(data: bytes) -> bool:
    """A PFX is a DER SEQUENCE whose first element is INTEGER 3 (the PKCS#12 version)."""
    if len(data) < 8 or data[0] != 0x30:
        return False
    i = 1
    first = data[i]
    i += 1 + (first & 0x7F if first & 0x80 else 0)
    return data[i:i + 3] == b"\x02\x01\x03"


def check_validity(cert: x509.Certificate, clock: Clock, *, label: str = "The certificate") -> None:
    """Raise ``expired`` / ``not_yet_valid`` unless the certificate is valid at the clock's time."""
    now = clock.now()
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    subject = cert.subject.rfc4514_string()
    if now > end:
        raise CertificateError(EXPIRED, f"{label} ({subject}, thumbprint {thumbprint(cert)}) expired on "
                                        f"{end:%Y-%m-%d %H:%M:%S} UTC; it is now {now:%Y-%m-%d %H:%M:%S} UTC.")
    if now < start:
        raise CertificateError(NOT_YET_VALID, f"{label} ({subject}, thumbprint {thumbprint(cert)}) is not valid "
                                              f"before {start:%Y-%m-%d %H:%M:%S} UTC; it is now "
                                              f"{now:%Y-%m-%d %H:%M:%S} UTC.")


def load_pfx(path: str | Path, password: str | bytes | None, clock: Clock, require_valid: bool = True
             ) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """Open a .pfx with its password; it must carry an RSA private key matching its certificate.

    With ``require_valid`` the certificate must also be valid at the clock's current time.
    """
    data = _read(path, ".pfx")
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(data, _password_bytes(password))
    except (ValueError, TypeError):
        if _looks_like_pkcs12(data):
            raise CertificateError(WRONG_PASSWORD, f"The password does not open {path} (wrong password for "
                                                   f"the private key).") from None
        raise CertificateError(UNREADABLE, f"{path} is not a PKCS#12 (.pfx) file.") from None
    if key is None:
        raise CertificateError(NO_PRIVATE_KEY, f"{path} holds no private key; export the certificate "
                                               f"together with its private key.")
    if cert is None:
        raise CertificateError(NO_CERTIFICATE, f"{path} holds a private key but no certificate.")
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CertificateError(UNSUPPORTED_KEY, f"The private key in {path} is not an RSA key.")
    if not key_matches(key, cert):
        raise CertificateError(KEY_MISMATCH, f"The private key in {path} does not belong to its certificate.")
    if require_valid:
        check_validity(cert, clock, label=f"The certificate in {path}")
    return key, cert


def load_cer(path: str | Path) -> x509.Certificate:
    """Read a public certificate, DER (.cer) or PEM."""
    data = _read(path, ".cer")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise CertificateError(UNREADABLE, f"{path} is not an x509 certificate (.cer, DER or PEM).") from None


def check_pair(key: rsa.RSAPrivateKey, cer: x509.Certificate, *, pfx_path: str | Path = "the .pfx",
               cer_path: str | Path = "the .cer") -> None:
    """Raise ``key_mismatch`` unless the .pfx private key belongs to the .cer public certificate."""
    if not key_matches(key, cer):
        raise CertificateError(KEY_MISMATCH, f"The private key in {pfx_path} does not match the public "
                                             f"certificate in {cer_path} (thumbprint {thumbprint(cer)}).")


def load_pair(pfx_path: str | Path, password: str | bytes | None, cer_path: str | Path, clock: Clock,
              require_valid: bool = True) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """The ConfigureCrmServerSideSync checks in one call: open the .pfx, read the .cer, match them."""
    key, cert = load_pfx(pfx_path, password, clock, require_valid)
    cer = load_cer(cer_path)
    check_pair(key, cer, pfx_path=pfx_path, cer_path=cer_path)
    return key, cer
