"""
Loading a listener's certificates (L{lbproxy.tls.certificates}) and
choosing one by SNI.
"""

from __future__ import annotations

import builtins
import io
import os
import random
import string
from unittest import mock

import pytest
from OpenSSL import SSL

from certs import CertificateAuthority
from lbproxy.config.tls import CertificateConfig
from lbproxy.errors import ConfigError
from lbproxy.tls.certificates import alpnSelector, certificateNames, loadCertificates
from lbproxy.tls.server import ServerTLS
from tlsmemory import clientContext, handshake, listenerTLS

SOURCE = "test.toml"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(directory)
    return {
        "ca": ca,
        "default": ca.issue("default.example.test"),
        "www": ca.issue("www.example.test", "example.test"),
        "wild": ca.issue("*.api.example.test", commonName="wildcard"),
        "cnonly": ca.issue(commonName="cn.example.test"),
        "expired": ca.issue("old.example.test", expired=True),
        "rsa": ca.issue("rsa.example.test", kind="rsa"),
    }


def loaded(*issued, **kwargs):
    server = ServerTLS("web", listenerTLS(*issued, **kwargs), SOURCE)
    server.load()
    return server


def commonName(server, name, pki):
    result = handshake(server, clientContext(pki["ca"].cert), name)
    assert result.ok, result.error
    return result.serverCommonName


class TestNames:
    def test_subjectAltName(self, pki):
        assert certificateNames(pki["www"].certificate) == ("www.example.test", "example.test")

    def test_commonNameWithoutSubjectAltName(self, pki):
        assert certificateNames(pki["cnonly"].certificate) == ("cn.example.test",)

    def test_configuredNamesReplaceTheCertificates(self, pki):
        server = loaded(pki["default"], pki["www"], names={1: ("other.example.test",)})
        names = [c.names for c in server.certificates.certificates]
        assert names == [("default.example.test",), ("other.example.test",)]
        assert commonName(server, b"other.example.test", pki) == "www.example.test"
        assert commonName(server, b"www.example.test", pki) == "default.example.test"


class TestSelection:
    def test_exactName(self, pki):
        server = loaded(pki["default"], pki["www"], pki["wild"])
        assert commonName(server, b"www.example.test", pki) == "www.example.test"
        assert commonName(server, b"example.test", pki) == "www.example.test"

    def test_caseAndTrailingDot(self, pki):
        server = loaded(pki["default"], pki["www"])
        assert commonName(server, b"WWW.Example.Test.", pki) == "www.example.test"

    def test_noNameOrUnknownNameGetsTheDefault(self, pki):
        server = loaded(pki["default"], pki["www"])
        assert commonName(server, None, pki) == "default.example.test"
        assert commonName(server, b"unknown.example.test", pki) == "default.example.test"

    def test_wildcardOneLabelDeep(self, pki):
        server = loaded(pki["default"], pki["wild"])
        assert commonName(server, b"v1.api.example.test", pki) == "wildcard"
        assert commonName(server, b"api.example.test", pki) == "default.example.test"
        assert commonName(server, b"a.v1.api.example.test", pki) == "default.example.test"

    def test_exactBeforeWildcard(self, pki, tmp_path):
        ca = pki["ca"]
        exact = ca.issue("v2.api.example.test", commonName="exact")
        server = loaded(pki["default"], pki["wild"], exact)
        assert commonName(server, b"v2.api.example.test", pki) == "exact"
        assert commonName(server, b"v3.api.example.test", pki) == "wildcard"

    def test_firstCertificateWinsADuplicateName(self, pki):
        ca = pki["ca"]
        second = ca.issue("www.example.test", commonName="second")
        server = loaded(pki["default"], pki["www"], second)
        assert commonName(server, b"www.example.test", pki) == "www.example.test"

    def test_rsaAndEcdsaSideBySide(self, pki):
        server = loaded(pki["default"], pki["rsa"])
        assert commonName(server, b"rsa.example.test", pki) == "rsa.example.test"

    def test_randomNamesReadNothingAndGrowNothing(self, pki):
        """
        2,000 handshakes with random SNI names: no file is opened and the
        lookup tables keep their size.
        """
        server = loaded(pki["default"], pki["www"], pki["wild"])
        sizes = server.certificates.sizes
        exact = dict(server.certificates._exact)
        wildcard = dict(server.certificates._wildcard)
        opened = []

        def refuse(*args, **kwargs):
            opened.append(args)
            raise AssertionError(f"file opened during a handshake: {args}")

        client = clientContext(pki["ca"].cert)
        rng = random.Random(4)
        defaults = 0
        with mock.patch.object(builtins, "open", refuse), mock.patch.object(
            io, "open", refuse
        ), mock.patch.object(os, "open", refuse), mock.patch.object(os, "stat", refuse):
            for n in range(2000):
                label = "".join(rng.choice(string.ascii_lowercase) for _ in range(12))
                name = f"{label}.{rng.choice(['example.test', 'api.example.test', 'x.test'])}"
                result = handshake(server, client, name.encode("ascii"), exchange=False)
                assert result.ok, result.error
                if result.serverCommonName == "default.example.test":
                    defaults += 1
        assert opened == []
        assert server.certificates.sizes == sizes
        assert server.certificates._exact == exact
        assert server.certificates._wildcard == wildcard
        # The api.example.test third went to the wildcard.
        assert 1000 < defaults < 1800


class TestLoadErrors:
    def check(self, config, key, *words):
        with pytest.raises(ConfigError) as raised:
            loadCertificates("web", config, SOURCE)
        error = raised.value
        assert error.key == key
        line = str(error)
        assert "\n" not in line
        assert line.startswith(f"{SOURCE}: {key}: ")
        for word in words:
            assert word in line
        return line

    def test_missingCertificate(self, pki, tmp_path):
        missing = str(tmp_path / "gone.pem")
        config = listenerTLS(pki["default"])
        config = config.__class__(certificates=(CertificateConfig(cert=missing, key=missing),))
        self.check(config, "listeners.web.tls.certificates[0].cert", missing, "No such file")

    def test_missingKey(self, pki, tmp_path):
        missing = str(tmp_path / "gone.key")
        config = listenerTLS(pki["default"])
        config = config.__class__(
            certificates=(config.certificates[0], CertificateConfig(cert=str(pki["www"].chain), key=missing))
        )
        self.check(config, "listeners.web.tls.certificates[1].key", missing)

    def test_notPEM(self, pki, tmp_path):
        garbage = tmp_path / "garbage.pem"
        garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
        config = listenerTLS(pki["default"])
        config = config.__class__(certificates=(CertificateConfig(cert=str(garbage), key=str(pki["default"].key)),))
        self.check(config, "listeners.web.tls.certificates[0].cert", str(garbage), "PEM")

    def test_keyNotPEM(self, pki, tmp_path):
        garbage = tmp_path / "garbage.key"
        garbage.write_bytes(b"hello\n")
        config = listenerTLS(pki["default"])
        config = config.__class__(certificates=(CertificateConfig(cert=str(pki["default"].chain), key=str(garbage)),))
        self.check(config, "listeners.web.tls.certificates[0].key", str(garbage), "private key")

    def test_keyOfAnotherCertificate(self, pki):
        config = listenerTLS(pki["default"])
        config = config.__class__(
            certificates=(CertificateConfig(cert=str(pki["default"].chain), key=str(pki["www"].key)),)
        )
        self.check(
            config, "listeners.web.tls.certificates[0].key", str(pki["www"].key), "does not belong", str(pki["default"].chain)
        )

    def test_expired(self, pki):
        self.check(
            listenerTLS(pki["default"], pki["expired"]),
            "listeners.web.tls.certificates[1].cert",
            str(pki["expired"].chain),
            "expired",
        )

    def test_notYetValid(self, pki, tmp_path):
        import datetime

        from cryptography import x509 as cx509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import NameOID

        from certs import certPEM, keyPEM, newKey

        key = newKey()
        name = cx509.Name([cx509.NameAttribute(NameOID.COMMON_NAME, "future.example.test")])
        start = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=2)
        certificate = (
            cx509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(cx509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=30))
            .sign(key, hashes.SHA256())
        )
        cert, keyFile = tmp_path / "future.pem", tmp_path / "future.key"
        cert.write_bytes(certPEM(certificate))
        keyFile.write_bytes(keyPEM(key))
        config = listenerTLS(pki["default"])
        config = config.__class__(certificates=(CertificateConfig(cert=str(cert), key=str(keyFile)),))
        self.check(config, "listeners.web.tls.certificates[0].cert", str(cert), "not valid before")

    def test_clientCANotPEM(self, pki, tmp_path):
        garbage = tmp_path / "ca.pem"
        garbage.write_bytes(b"nothing here\n")
        config = listenerTLS(pki["default"], clientCA=str(garbage), clientVerify="optional")
        self.check(config, "listeners.web.tls.client_ca", str(garbage), "PEM")

    def test_missingClientCA(self, pki, tmp_path):
        missing = str(tmp_path / "ca.pem")
        config = listenerTLS(pki["default"], clientCA=missing, clientVerify="required")
        self.check(config, "listeners.web.tls.client_ca", missing)

    def test_keyInTheCertificateFile(self, pki, tmp_path):
        both = tmp_path / "both.pem"
        both.write_bytes(pki["www"].chain.read_bytes() + pki["www"].key.read_bytes())
        config = listenerTLS(pki["default"])
        config = config.__class__(certificates=(CertificateConfig(cert=str(both), key=str(both)),))
        assert loadCertificates("web", config, SOURCE).certificates[0].names == ("www.example.test", "example.test")


class TestALPN:
    def test_firstOfOursTheClientOffers(self):
        select = alpnSelector(["http/1.1"])
        assert select(None, [b"h2", b"http/1.1"]) == b"http/1.1"

    def test_noOverlapMeansNoALPN(self):
        select = alpnSelector(["http/1.1"])
        assert select(None, [b"h2"]) is SSL.NO_OVERLAPPING_PROTOCOLS

    def test_noProtocolsNoCallback(self):
        assert alpnSelector([]) is None
