"""Morgan's Consul client over HTTPS with client certificates (mTLS), against an agent
that requires them (the fake with ``verify_incoming``).

Certificates come from tests/tls_helpers.py. A refused client must fail in the TLS
handshake: the agent answers no request (``fake.requests`` stays 0) and notes why OpenSSL
refused it, which is the same reason a real agent's TLS alert would carry.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from streams.consul import Consul, ConsulError
from streams.settings import Settings
from tests.fakes.consul import FakeConsul, TLSFiles
from tests.tls_helpers import DAY, CertAuthority, CertFiles


@pytest.fixture
def ca(tmp_path: Path) -> CertAuthority:
    return CertAuthority("consul-ca", tmp_path / "ca")


@pytest_asyncio.fixture
async def agent(ca: CertAuthority) -> AsyncIterator[FakeConsul]:
    server = ca.issue("consul-server", hosts=("127.0.0.1", "localhost", "server.dc1.consul"))
    async with FakeConsul(tls=TLSFiles(server.cert, server.key, client_ca=ca.cert_file)) as f:
        yield f


def tls_settings(
    tmp_path: Path, addr: str, *, ca: Path | None, client: CertFiles | None, ssl: bool = True
) -> Settings:
    return Settings(
        data_dir=tmp_path,
        consul_http_addr=addr,
        consul_http_ssl=ssl,
        consul_cacert=str(ca or ""),
        consul_client_cert=str(client.cert) if client else "",
        consul_client_key=str(client.key) if client else "",
    )


@pytest.mark.parametrize("form", ["CONSUL_HTTP_SSL", "https://"])
async def test_a_client_with_the_agents_ca_and_a_client_certificate_registers_and_reads_kv(
    agent: FakeConsul, ca: CertAuthority, tmp_path: Path, form: str
) -> None:
    """Both ways of asking for HTTPS: a bare address with CONSUL_HTTP_SSL=true, or an
    ``https://`` address."""
    client = ca.issue("morgan-gateway", client=True, server=False)
    addr, ssl = (agent.addr, True) if form == "CONSUL_HTTP_SSL" else (agent.url, False)
    settings = tls_settings(tmp_path, addr, ca=ca.cert_file, client=client, ssl=ssl)
    async with Consul(settings) as consul:
        await consul.register_service(
            {
                "ID": "gw-1",
                "Name": "morgan-gateway",
                "Port": 8080,
                "Tags": ["gateway"],
                "Check": {"TTL": "10s", "Status": "passing"},
            }  # fmt: skip
        )
        _, instances = await consul.health_service("morgan-gateway")
        assert await consul.kv_put("morgan/config/global", b'{"log_level": "DEBUG"}')
        _, pairs = await consul.kv_get("morgan/config/", recurse=True)
    assert [(i.id, i.port) for i in instances] == [("gw-1", 8080)]
    assert [(p.key, p.value) for p in pairs] == [
        ("morgan/config/global", b'{"log_level": "DEBUG"}')
    ]
    assert agent.tls_refusals == []


@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("no client certificate", "PEER_DID_NOT_RETURN_A_CERTIFICATE"),
        ("a certificate from another CA", "unable to get local issuer certificate"),
        ("an expired certificate", "certificate has expired"),
    ],
)
async def test_the_agent_refuses_the_tls_handshake_of_a_client_without_a_valid_certificate(
    agent: FakeConsul, ca: CertAuthority, tmp_path: Path, case: str, why: str
) -> None:
    if case == "no client certificate":
        client = None
    elif case == "a certificate from another CA":
        foreign = CertAuthority("someone-else", tmp_path / "foreign")
        client = foreign.issue("morgan-gateway", client=True, server=False)
    else:
        client = ca.issue("morgan-gateway", client=True, server=False, valid_for=(-2 * DAY, -DAY))
    settings = tls_settings(tmp_path, agent.addr, ca=ca.cert_file, client=client)
    async with Consul(settings) as consul:
        with pytest.raises(ConsulError) as refused:
            await consul.kv_get("morgan/config/global")
    assert refused.value.status is None  # no HTTP answer: the connection was dropped
    assert agent.requests == 0
    assert agent.tls_refusals == [why]


async def test_a_client_that_does_not_trust_the_agents_ca_refuses_the_agent(
    agent: FakeConsul, ca: CertAuthority, tmp_path: Path
) -> None:
    """Without CONSUL_CACERT the system's CAs apply, and they never signed the agent."""
    client = ca.issue("morgan-gateway", client=True, server=False)
    settings = tls_settings(tmp_path, agent.addr, ca=None, client=client)
    async with Consul(settings) as consul:
        with pytest.raises(ConsulError, match="CERTIFICATE_VERIFY_FAILED") as refused:
            await consul.kv_get("morgan/config/global")
    assert refused.value.status is None
    assert agent.requests == 0
