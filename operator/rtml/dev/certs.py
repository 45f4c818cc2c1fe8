"""Certificates for the local control plane: a CA, the API server's serving certificate, client
certificates for the admin and the controller manager, and the service-account signing key."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ADMIN_USER = "rtml-admin"
ADMIN_GROUP = "system:masters"
CONTROLLER_MANAGER_USER = "system:kube-controller-manager"
# The first address of --service-cluster-ip-range: the ClusterIP of the `kubernetes` Service.
FIRST_SERVICE_IP = "10.96.0.1"
SERVING_DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
# 10.244.0.1: the node's bridge, where pods reach the API server (rtml.dev.nodeconfig.BRIDGE_IP).
SERVING_IPS = ("127.0.0.1", FIRST_SERVICE_IP, "10.244.0.1")
APISERVER_KUBELET_CLIENT_USER = "kube-apiserver-kubelet-client"
FRONT_PROXY_USER = "front-proxy-client"
_VALIDITY = dt.timedelta(days=365)
_CLOCK_SKEW = dt.timedelta(minutes=5)

CertKey = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class CertFiles:
    """Where the PEM files of one control plane live."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def apiserver_cert(self) -> Path:
        return self.directory / "apiserver.crt"

    @property
    def apiserver_key(self) -> Path:
        return self.directory / "apiserver.key"

    @property
    def admin_cert(self) -> Path:
        return self.directory / "admin.crt"

    @property
    def admin_key(self) -> Path:
        return self.directory / "admin.key"

    @property
    def controller_manager_cert(self) -> Path:
        return self.directory / "kube-controller-manager.crt"

    @property
    def controller_manager_key(self) -> Path:
        return self.directory / "kube-controller-manager.key"

    @property
    def service_account_key(self) -> Path:
        return self.directory / "service-account.key"

    @property
    def service_account_pub(self) -> Path:
        return self.directory / "service-account.pub"


def generate(directory: Path) -> CertFiles:
    """Write a fresh CA and every certificate and key the control plane needs into ``directory``."""
    files = CertFiles(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _ca_certificate(ca_key)
    _write_key(files.ca_key, ca_key)
    _write_cert(files.ca_cert, ca_cert)

    serving_key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName(
        [x509.DNSName(name) for name in SERVING_DNS_NAMES]
        + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in SERVING_IPS]
    )
    serving = _leaf(
        ca_cert,
        ca_key,
        serving_key,
        subject=_name("kube-apiserver"),
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        san=san,
    )
    _write_key(files.apiserver_key, serving_key)
    _write_cert(files.apiserver_cert, serving)

    issue_client_cert(files, ADMIN_USER, (ADMIN_GROUP,), files.admin_cert, files.admin_key)
    issue_client_cert(
        files,
        CONTROLLER_MANAGER_USER,
        (),
        files.controller_manager_cert,
        files.controller_manager_key,
    )

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(files.service_account_key, sa_key)
    files.service_account_pub.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return files


def issue_client_cert(
    ca: CertFiles,
    common_name: str,
    organizations: tuple[str, ...],
    cert_path: Path,
    key_path: Path,
) -> None:
    """Sign a client certificate for user ``common_name`` in groups ``organizations``.

    The API server maps the CN to the user name and each O to a group.
    """
    ca_cert, ca_key = _ca(ca)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(common_name, organizations)
    cert = _leaf(
        ca_cert, ca_key, key, subject=subject, usage=ExtendedKeyUsageOID.CLIENT_AUTH, san=None
    )
    _write_key(key_path, key)
    _write_cert(cert_path, cert)


def _ca(ca: CertFiles) -> tuple[x509.Certificate, CertKey]:
    ca_cert = x509.load_pem_x509_certificate(ca.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.ca_key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"the CA key in {ca.ca_key} is not an EC key written by rtml")
    return ca_cert, ca_key


def issue_serving_cert(
    ca: CertFiles, common_name: str, dns_names: tuple[str, ...], ips: tuple[str, ...], stem: Path
) -> tuple[Path, Path]:
    """A serving certificate (e.g. the kubelet's) for these names and addresses, signed by the
    control plane's CA; written to STEM.crt and STEM.key, which are returned."""
    ca_cert, ca_key = _ca(ca)
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName(
        [x509.DNSName(n) for n in dns_names]
        + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    )
    cert = _leaf(ca_cert, ca_key, key, subject=_name(common_name),
                 usage=ExtendedKeyUsageOID.SERVER_AUTH, san=san)  # fmt: skip
    crt, key_path = stem.with_suffix(".crt"), stem.with_suffix(".key")
    _write_key(key_path, key)
    _write_cert(crt, cert)
    return crt, key_path


def _name(common_name: str, organizations: tuple[str, ...] = ()) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _ca_certificate(key: CertKey) -> x509.Certificate:
    name = _name("rtml-dev-ca")
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + _VALIDITY)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _leaf(
    ca_cert: x509.Certificate,
    ca_key: CertKey,
    key: CertKey,
    *,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    san: x509.SubjectAlternativeName | None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _write_key(path: Path, key: CertKey | rsa.RSAPrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
