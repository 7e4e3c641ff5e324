"""
The gRPC health check against a real grpcio server (grpc_health.v1's
HealthServicer) on 127.0.0.1, with the real reactor.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from lbproxy.config import HealthConfig
from lbproxy.core.pool import Server
from lbproxy.health.checks import HealthCheckFailed
from lbproxy.health.grpc import GRPCCheck
from lbproxy.config.tls import BackendTLSConfig
from lbproxy.tls.client import BackendTLS
from support import missing

from certs import CertificateAuthority

pytestmark = pytest.mark.integration


def healthServer(credentials=None):
    """
    A started grpcio server with the standard health service, its
    servicer and its address as an lbproxy endpoint string.

    @param credentials: a callable making the server's
        C{grpc.ServerCredentials} (TLS) from the C{grpc} module.
    """
    try:
        from concurrent import futures

        import grpc
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    except ImportError as e:
        missing(f"grpcio and grpcio-health-checking are needed: {e}")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials(grpc))
    server.start()
    return server, servicer, health_pb2, f"tcp:host=127.0.0.1:port={port}"


class GRPCHealthLoopbackTests(TestCase):
    def setUp(self) -> None:
        self.server, self.servicer, self.pb2, self.address = healthServer()
        self.addCleanup(self.server.stop, None)

    def check(self, service: str = "") -> GRPCCheck:
        return GRPCCheck(reactor, HealthConfig(type="grpc", timeout=5.0, service=service))

    async def failureReason(self, service: str) -> str:
        with self.assertRaises(HealthCheckFailed) as raised:
            await self.check(service).check(Server("g", self.address))
        return str(raised.exception)

    async def test_serving(self) -> None:
        """
        The whole server ("") is SERVING by default, and so is a service
        set SERVING.
        """
        self.assertIsNone(await self.check().check(Server("g", self.address)))
        self.servicer.set("demo.Echo", self.pb2.HealthCheckResponse.SERVING)
        self.assertIsNone(await self.check("demo.Echo").check(Server("g", self.address)))

    async def test_notServing(self) -> None:
        self.servicer.set("demo.Echo", self.pb2.HealthCheckResponse.SERVING)
        self.assertIsNone(await self.check("demo.Echo").check(Server("g", self.address)))
        self.servicer.set("demo.Echo", self.pb2.HealthCheckResponse.NOT_SERVING)
        self.assertEqual(await self.failureReason("demo.Echo"), "NOT_SERVING")
        self.servicer.set("demo.Echo", self.pb2.HealthCheckResponse.SERVING)
        self.assertIsNone(await self.check("demo.Echo").check(Server("g", self.address)))

    async def test_unknownService(self) -> None:
        """
        grpcio's servicer answers an unknown name with grpc-status 5
        (NOT_FOUND) in a Trailers-Only response, as grpc.health.v1 says.
        """
        reason = await self.failureReason("no.such.Service")
        self.assertEqual(reason, "grpc-status 5 (NOT_FOUND)")

    async def test_serviceUnknown(self) -> None:
        """
        A service whose status is SERVICE_UNKNOWN (the status Watch uses for
        an unknown name) fails with that status.
        """
        self.servicer.set("demo.Echo", self.pb2.HealthCheckResponse.SERVICE_UNKNOWN)
        self.assertEqual(await self.failureReason("demo.Echo"), "SERVICE_UNKNOWN")

    async def test_unknownStatus(self) -> None:
        self.servicer.set("demo.Echo", self.pb2.HealthCheckResponse.UNKNOWN)
        self.assertEqual(await self.failureReason("demo.Echo"), "UNKNOWN status")


class GRPCHealthTLSLoopbackTests(TestCase):
    """
    Over the pool's TLS, ALPN offers h2: grpcio selects it; a server that
    selects http/1.1 fails the check with that reason.
    """

    def setUp(self) -> None:
        directory = tempfile.mkdtemp(prefix="lbproxy-grpchealth-")
        self.addCleanup(shutil.rmtree, directory, True)
        self.ca = CertificateAuthority(os.path.join(directory, "ca"))
        self.issued = self.ca.issue("grpc.test", "127.0.0.1")
        self.tls = BackendTLS("grpc", BackendTLSConfig(ca=str(self.ca.cert)), "lb.toml")
        self.tls.load()

    def check(self) -> GRPCCheck:
        return GRPCCheck(reactor, HealthConfig(type="grpc", tls=True, timeout=5.0), self.tls)

    async def test_servingOverTLS(self) -> None:
        key, chain = self.issued.key.read_bytes(), self.issued.chain.read_bytes()
        server, _, _, address = healthServer(lambda grpc: grpc.ssl_server_credentials([(key, chain)]))
        self.addCleanup(server.stop, None)
        self.assertIsNone(await self.check().check(Server("g", address)))

    async def test_http11Selected(self) -> None:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
        from twisted.internet.ssl import CertificateOptions

        options = CertificateOptions(
            privateKey=load_pem_private_key(self.issued.key.read_bytes(), None),
            certificate=self.issued.certificate,
            acceptableProtocols=[b"http/1.1"],
        )
        port = reactor.listenSSL(0, Factory.forProtocol(Protocol), options, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        address = f"tcp:host=127.0.0.1:port={port.getHost().port}"
        with self.assertRaises(HealthCheckFailed) as raised:
            await self.check().check(Server("g", address))
        self.assertEqual(str(raised.exception), "not HTTP/2 (ALPN selected http/1.1)")
