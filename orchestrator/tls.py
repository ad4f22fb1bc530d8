"""Reads and checks the PEM files of the TLS settings at start-up, so a wrong file is a clear error naming the
file and the setting, not a handshake failure on the first call."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

_KEY_TYPES = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None


def certificates(path: Path) -> list[x509.Certificate]:
    """Every certificate in the PEM file at `path` (a chain or a CA bundle); at least one."""
    data = _read(path)
    try:
        found = x509.load_pem_x509_certificates(data)
    except ValueError:
        found = []
    if not found:
        raise ValueError(f"{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    return found


def private_key(path: Path) -> PrivateKeyTypes:
    """The unencrypted PEM private key at `path`: gRPC and Envoy take no passphrase."""
    data = _read(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ValueError(f"{path} is an encrypted private key; gRPC and Envoy need it unencrypted") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"{path} holds no PEM private key (-----BEGIN ... PRIVATE KEY-----)") from None
    if not isinstance(key, _KEY_TYPES):
        raise ValueError(f"{path} holds a {type(key).__name__}, not an RSA, EC or EdDSA private key")
    return key


def check_pair(cert_path: Path, key_path: Path, *, now: datetime | None = None) -> list[x509.Certificate]:
    """The chain at `cert_path`, after checking that its first certificate is the key's and is valid now."""
    chain = certificates(cert_path)
    key = private_key(key_path)
    leaf = chain[0]
    if leaf.public_key() != key.public_key():
        raise ValueError(f"the key in {key_path} is not the key of the first certificate in {cert_path}")
    moment = now or datetime.now(UTC)
    if moment < leaf.not_valid_before_utc:
        raise ValueError(
            f"the certificate in {cert_path} is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )
    if moment > leaf.not_valid_after_utc:
        raise ValueError(f"the certificate in {cert_path} expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    return chain


def issued_by(chain: list[x509.Certificate], authorities: list[x509.Certificate]) -> bool:
    """Whether the chain's first certificate leads, through the chain's own intermediates, to a certificate
    signed by one of `authorities` (or is one of them). Signatures only: validity and usage are the TLS
    libraries' business; this only catches a certificate paired with the wrong CA file."""
    current, rest = chain[0], list(chain[1:])
    for _ in range(len(chain)):
        if current in authorities or any(_signed(current, ca) for ca in authorities):
            return True
        parents = [c for c in rest if _signed(current, c)]
        if not parents:
            return False
        current = parents[0]
        rest.remove(current)
    return False


def _signed(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def names(certificate: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses of a certificate's subjectAltName."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName), *map(str, san.get_values_for_type(x509.IPAddress))]


def matches(name: str, certificate: x509.Certificate) -> bool:
    """Whether `name` (a host name or an IP address) is one the certificate's subjectAltName covers."""
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        address = None
    for san in names(certificate):
        if address is not None:
            try:
                if ipaddress.ip_address(san) == address:
                    return True
            except ValueError:
                continue
        elif san.lower() == name.lower() or (
            san.startswith("*.") and "." in name and name.split(".", 1)[1].lower() == san[2:].lower()
        ):
            return True
    return False
