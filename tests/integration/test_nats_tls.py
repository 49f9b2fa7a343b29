"""mTLS to a real nats-server: clients and routes need a certificate from the CA.

Certificates come from ``morgan certs`` (morgan/certs.py), servers from
``streams.embedded.start(tls=ServerTls(...))`` and clients from ``streams.bus.connect``,
the code every Morgan process uses. A refusal is checked on both ends: the client gets
no connection, and the server's log names the reason.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from cryptography import x509

from morgan import certs
from streams import bus, embedded
from streams.embedded import ClusterConfig, EmbeddedNats, ServerTls
from streams.settings import Settings
from testbed.ports import free_port


@dataclass(frozen=True)
class Pki:
    ca: Path
    """Directory of the deployment's CA (ca.pem, ca-key.pem); every server trusts it."""
    other_ca: Path
    """A second CA, trusted by no server."""

    def server(self, name: str, *, signed_by: Path | None = None, ip: bool = True) -> ServerTls:
        """TLS for a server named ``name`` on 127.0.0.1 (an IP SAN unless not ``ip``),
        trusting the deployment's CA; its certificate from ``signed_by`` (default: that CA)."""
        ca = signed_by or self.ca
        files = certs.issue_host(ca, ca, name, dns=["localhost"], ips=["127.0.0.1"] if ip else [])
        return ServerTls(cert=files.cert, key=files.key, ca=self.ca / "ca.pem")


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    pki = Pki(tmp_path / "ca", tmp_path / "other-ca")
    certs.make_ca(pki.ca)
    certs.make_ca(pki.other_ca)
    return pki


@pytest_asyncio.fixture
async def server(pki: Pki, tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    async with await embedded.start(store_dir=tmp_path / "nats", tls=pki.server("node")) as srv:
        yield srv


def client(
    srv: EmbeddedNats, pki: Pki, cert: certs.Issued | None, *, trust: Path | None = None
) -> Settings:
    """A process's settings for ``srv``: trusting ``trust`` (default: the deployment's
    CA), presenting ``cert`` (None: no client certificate)."""
    return Settings(
        nats_url=srv.url,
        nats_tls_ca=str((trust or pki.ca) / "ca.pem"),
        nats_tls_cert=str(cert.cert) if cert else "",
        nats_tls_key=str(cert.key) if cert else "",
    )


async def refused(settings: Settings) -> OSError:
    """Connect as a Morgan process does; the error that ended the connection."""
    with pytest.raises(OSError) as info:
        await bus.connect(settings, "tls-test", connect_timeout=2, keep_trying=False)
    return info.value


async def logged(srv: EmbeddedNats, text: bytes, timeout: float = 5.0) -> None:
    """Wait until the server's log holds ``text``."""
    async with asyncio.timeout(timeout):
        while text not in srv.log:
            await asyncio.sleep(0.02)


async def monitor(srv: EmbeddedNats, path: str) -> Any:
    async with httpx.AsyncClient() as http:
        return (await http.get(srv.monitor_url + path, timeout=5)).json()


# ---- clients ------------------------------------------------------------------------------


async def test_client_with_a_certificate_from_the_ca_gets_jetstream_acks_over_tls(
    server: EmbeddedNats, pki: Pki
) -> None:
    gateway = certs.issue_client(pki.ca, pki.ca, "gateway")
    nc = await bus.connect(client(server, pki, gateway), "tls-test", keep_trying=False)
    try:
        js = nc.jetstream()
        await js.add_stream(name="T", subjects=["t.>"])
        acks = [await js.publish("t.x", b"%d" % i) for i in range(3)]
        (conn,) = (await monitor(server, "/connz?auth=1"))["connections"]
    finally:
        await nc.close()
    assert [a.seq for a in acks] == [1, 2, 3]
    assert conn["tls_version"] == "1.3"
    assert conn["tls_peer_certs"][0]["subject"] == "CN=gateway"


async def test_client_without_a_certificate_is_refused(server: EmbeddedNats, pki: Pki) -> None:
    await refused(client(server, pki, None))
    await logged(server, b"TLS handshake error: tls: client didn't provide a certificate")


async def test_client_with_a_certificate_from_another_ca_is_refused(
    server: EmbeddedNats, pki: Pki
) -> None:
    stranger = certs.issue_client(pki.other_ca, pki.other_ca, "gateway")
    await refused(client(server, pki, stranger))
    await logged(server, b"certificate signed by unknown authority (CN=gateway")


async def test_client_with_an_expired_certificate_is_refused(
    server: EmbeddedNats, pki: Pki
) -> None:
    month_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    expired = certs.issue_client(pki.ca, pki.ca, "gateway", days=1, now=month_ago)
    await refused(client(server, pki, expired))
    await logged(server, b"certificate has expired or is not yet valid")


async def test_plain_tcp_client_is_told_tls_is_required_and_disconnected(
    server: EmbeddedNats,
) -> None:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        info = await asyncio.wait_for(reader.readline(), 5)
        writer.write(b'CONNECT {"verbose":false}\r\nPING\r\n')
        await writer.drain()
        rest = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert json.loads(info.removeprefix(b"INFO "))["tls_required"] is True
    assert rest == b""  # closed at once: no PONG, nothing delivered


async def test_client_refuses_a_server_whose_certificate_another_ca_signed(
    server: EmbeddedNats, pki: Pki
) -> None:
    gateway = certs.issue_client(pki.ca, pki.ca, "gateway")
    error = await refused(client(server, pki, gateway, trust=pki.other_ca))
    assert "certificate verify failed" in str(error)


async def test_client_refuses_a_server_whose_certificate_does_not_name_the_address_dialled(
    pki: Pki, tmp_path: Path
) -> None:
    gateway = certs.issue_client(pki.ca, pki.ca, "gateway")
    tls = pki.server("node", ip=False)  # names localhost, not 127.0.0.1
    async with await embedded.start(store_dir=tmp_path / "n", tls=tls) as srv:
        error = await refused(client(srv, pki, gateway))
    assert "IP address mismatch" in str(error)


# ---- routes -------------------------------------------------------------------------------


@asynccontextmanager
async def pair(pki: Pki, tmp_path: Path, second: ServerTls) -> AsyncIterator[list[EmbeddedNats]]:
    """Two clustered servers routed to each other: ``a`` with a certificate from the CA,
    ``b`` with ``second``."""
    ports = free_port(), free_port()
    routes = tuple(f"nats-route://127.0.0.1:{p}" for p in ports)
    async with AsyncExitStack() as stack:
        nodes = []
        for name, port, tls in (("a", ports[0], pki.server("a")), ("b", ports[1], second)):
            cluster = ClusterConfig("morgan", port, routes)
            srv = await embedded.start(
                store_dir=tmp_path / name, server_name=name, cluster=cluster, tls=tls
            )
            nodes.append(await stack.enter_async_context(srv))
        yield nodes


async def route_names(srv: EmbeddedNats) -> set[str]:
    return {r["remote_name"] for r in (await monitor(srv, "/routez"))["routes"]}


async def test_two_servers_with_certificates_from_the_ca_form_a_cluster_over_tls(
    pki: Pki, tmp_path: Path
) -> None:
    gateway = certs.issue_client(pki.ca, pki.ca, "gateway")
    async with pair(pki, tmp_path, pki.server("b")) as (a, b):
        async with asyncio.timeout(10):
            while await route_names(a) != {"b"}:
                await asyncio.sleep(0.05)
        nc_a = await bus.connect(client(a, pki, gateway), "on-a", keep_trying=False)
        nc_b = await bus.connect(client(b, pki, gateway), "on-b", keep_trying=False)
        try:
            sub = await nc_b.subscribe("crossing")
            await nc_b.flush()
            async with asyncio.timeout(10):  # until b's interest has reached a
                while not sub.delivered:
                    await nc_a.publish("crossing", b"from a")
                    await asyncio.sleep(0.05)
            msg = await sub.next_msg()
        finally:
            await nc_a.close()
            await nc_b.close()
    assert msg.data == b"from a"


async def test_a_node_whose_certificate_another_ca_signed_gets_no_route(
    pki: Pki, tmp_path: Path
) -> None:
    async with pair(pki, tmp_path, pki.server("b", signed_by=pki.other_ca)) as (a, b):
        # b dials a: b has no certificate from the CA a asks for, so a gets none
        await logged(a, b"TLS route handshake error: tls: client didn't provide a certificate")
        # a dials b (a second later, its retry): a rejects the certificate b serves
        await logged(a, b"certificate signed by unknown authority (CN=b")
        assert await route_names(a) == set()
        assert await route_names(b) == set()


# ---- rotation (docs/deploy.md, "TLS and certificates") ----------------------------------


async def handshake(srv: EmbeddedNats, trust: Path, cert: certs.Issued) -> x509.Certificate:
    """A fresh TLS connection as a NATS client makes it (INFO in plain text, then TLS):
    the certificate the server presents, once it has answered PING."""
    ctx = ssl.create_default_context(cafile=trust)
    ctx.load_cert_chain(cert.cert, cert.key)
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    try:
        await asyncio.wait_for(reader.readline(), 5)
        await writer.start_tls(ctx, server_hostname=srv.host)
        writer.write(b'CONNECT {"verbose":false}\r\nPING\r\n')
        assert await asyncio.wait_for(reader.readline(), 5) == b"PONG\r\n"
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
    return x509.load_der_x509_certificate(der)


async def reload(srv: EmbeddedNats) -> None:
    """``nats-server --signal reload=<pid>`` (the same as SIGHUP); wait until it is done."""
    done = srv.log.count(b"Reloaded server configuration")
    signal = await asyncio.create_subprocess_exec(
        embedded.binary(), "--signal", f"reload={srv.process.pid}"
    )
    assert await signal.wait() == 0
    async with asyncio.timeout(5):
        while srv.log.count(b"Reloaded server configuration") == done:
            await asyncio.sleep(0.02)


async def test_a_reissued_server_certificate_is_served_after_a_reload_and_clients_stay(
    server: EmbeddedNats, pki: Pki
) -> None:
    gateway = certs.issue_client(pki.ca, pki.ca, "gateway")
    nc = await bus.connect(client(server, pki, gateway), "stays", keep_trying=False)
    try:
        old = await handshake(server, pki.ca / "ca.pem", gateway)
        new = x509.load_pem_x509_certificate(pki.server("node").cert.read_bytes())
        assert (await handshake(server, pki.ca / "ca.pem", gateway)) == old  # until reloaded
        await reload(server)
        assert (await handshake(server, pki.ca / "ca.pem", gateway)) == new != old
        await nc.flush(timeout=2)
        assert nc.stats["reconnects"] == 0
    finally:
        await nc.close()


async def test_a_bundle_of_the_old_and_new_ca_admits_certificates_of_both_after_a_reload(
    server: EmbeddedNats, pki: Pki
) -> None:
    old_client = certs.issue_client(pki.ca, pki.ca, "gateway")
    new_client = certs.issue_client(pki.other_ca, pki.other_ca, "gateway")
    await refused(client(server, pki, new_client))
    bundle = pki.ca / "ca.pem"  # the file the server's ca_file names, as on a host
    bundle.write_bytes(bundle.read_bytes() + (pki.other_ca / "ca.pem").read_bytes())
    await reload(server)
    for cert in (old_client, new_client):
        nc = await bus.connect(client(server, pki, cert), "rotating", keep_trying=False)
        await nc.close()
