"""
Certificates made at test time: a CA, server and client certificates
signed by it (or by an intermediate), written as PEM files.

    ca = CertificateAuthority(tmp_path)
    leaf = ca.issue("www.example.test", "*.api.example.test")
    leaf.cert, leaf.key, leaf.chain   # paths; chain is the leaf plus intermediates
    ca.cert                             # the CA certificate (trust anchor)

Keys are ECDSA P-256 unless C{kind="rsa"} (2048 bits). Everything is
generated with the cryptography package, so no test depends on openssl's
command line for its certificates.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_ONE_DAY = datetime.timedelta(days=1)


def newKey(kind: str = "ec"):
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def keyPEM(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def certPEM(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _subjectAltNames(names) -> list:
    entries = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return entries


@dataclass
class Issued:
    """
    Files of one issued certificate.

    @ivar cert: the certificate alone.
    @ivar key: its private key.
    @ivar chain: the certificate followed by any intermediates (what a
        server presents).
    @ivar certificate: the L{x509.Certificate} itself.
    """

    cert: Path
    key: Path
    chain: Path
    certificate: x509.Certificate


class CertificateAuthority:
    """
    A CA whose files live in C{directory}.

    @param intermediate: sign leaves with an intermediate CA, so servers
        must present a chain.
    """

    def __init__(self, directory, name: str = "lbproxy test CA", intermediate: bool = False, kind: str = "ec") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._rootKey = newKey(kind)
        now = datetime.datetime.now(datetime.timezone.utc)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.certificate = self._caCertificate(subject, subject, self._rootKey.public_key(), self._rootKey, now)
        self.cert = self._write(f"{_slug(name)}.pem", certPEM(self.certificate))
        self._signKey, self._signCert = self._rootKey, self.certificate
        self._intermediates: list[x509.Certificate] = []
        if intermediate:
            key = newKey(kind)
            sub = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name + " intermediate")])
            cert = self._caCertificate(sub, subject, key.public_key(), self._rootKey, now)
            self._signKey, self._signCert = key, cert
            self._intermediates.append(cert)
        self._serial = 1

    def _caCertificate(self, subject, issuer, publicKey, signingKey, now):
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(publicKey)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _ONE_DAY)
            .not_valid_after(now + 365 * _ONE_DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(publicKey), critical=False)
            .sign(signingKey, hashes.SHA256())
        )

    def _write(self, name: str, data: bytes) -> Path:
        path = self.directory / name
        path.write_bytes(data)
        return path

    def issue(
        self,
        *names: str,
        client: bool = False,
        kind: str = "ec",
        expired: bool = False,
        commonName: str | None = None,
        fileName: str | None = None,
    ) -> Issued:
        """
        Issue a certificate for C{names} (DNS names or IP addresses; the
        first is also the common name unless C{commonName} is given).

        @param client: a client certificate (clientAuth) instead of a
            server one (serverAuth).
        @param expired: valid only in the past.
        """
        key = newKey(kind)
        now = datetime.datetime.now(datetime.timezone.utc)
        if expired:
            start, end = now - 30 * _ONE_DAY, now - _ONE_DAY
        else:
            start, end = now - _ONE_DAY, now + 90 * _ONE_DAY
        cn = commonName or (names[0] if names else "client")
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lbproxy tests"),
                x509.NameAttribute(NameOID.COMMON_NAME, cn),
            ]))
            .issuer_name(self._signCert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._signKey.public_key()),
                critical=False,
            )
        )
        if names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(_subjectAltNames(names)), critical=False
            )
        cert = builder.sign(self._signKey, hashes.SHA256())
        self._serial += 1
        base = fileName or f"{self._serial:03d}-{_slug(cn)}"
        certFile = self._write(f"{base}.crt", certPEM(cert))
        keyFile = self._write(f"{base}.key", keyPEM(key))
        chain = self._write(
            f"{base}.chain.pem", certPEM(cert) + b"".join(certPEM(c) for c in self._intermediates)
        )
        return Issued(cert=certFile, key=keyFile, chain=chain, certificate=cert)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in text)
