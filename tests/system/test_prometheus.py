"""A real Prometheus (Debian's ``prometheus``) scrapes ``morgan up``; every PromQL
expression in deploy/monitoring/ evaluates and returns data after real turns.

``morgan up`` runs every kind of ``Settings().kind_list`` (MORGAN_KINDS, default the
shipped pipeline and the data layer's history and memory) with MORGAN_METRICS_PORT: its
n-th kind serves /metrics on that port + 1 + n, the gateway on its HTTP port. Prometheus
scrapes them every second with a config derived from deploy/monitoring/prometheus.yml:
every job that finds Morgan in Consul, with its metrics path, params, ``honor_labels``
and relabelling, each Consul service replaced by a static target that carries the
``__meta_consul_*`` labels Consul SD would give it (node, service, tags, and the health
of its passing TTL check), and the shipped alerts.yml as its rule file. The job that
probes each gateway's /health goes through a real blackbox exporter (Debian's
``prometheus-blackbox-exporter``) running the shipped deploy/monitoring/blackbox.yml,
at the address the shipped relabelling names ``blackbox:9115``. After one client
mistake (an unknown message type, which the gateway rejects: rejection reasons are
open-ended, so their series appear when first seen), one spoken and one typed turn,
every dashboard panel's query and every alert rule is sent to /api/v1/query. Series
whose label values are known in advance (a processor's outcomes per kind and tier, the
gateway's turn outcomes) must exist at zero from the start, so a rate or ratio of
something that has not happened reads 0.

Dashboard queries must return data as they are. An alert expression is a condition,
empty while all is well (``x > 3``), so what must return data is what it watches:
the expression with its condition taken away, by these rules (``watched``):

    a > b (any comparison)   ->  watched(a)    the left-hand side: the measured value
    a or b, a and b          ->  watched(a), watched(b), each on its own
    absent(a)                ->  watched(a)    what must exist for the alert to keep quiet

That a condition is false on this healthy, CPU-only ``morgan up`` is asserted too, for
the alerts that say something is missing, broken or behind (``QUIET``); a condition that
can fire here for good reason (``MorganGpuTierDown`` on a host without a GPU, and a slow
turn on a loaded CPU) is only evaluated.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import pytest
import pytest_asyncio
import yaml

from gateway import presence
from processors import hardware, registry
from streams.registry import PASSING, service_name, service_tags
from streams.settings import Settings
from testbed import processes
from testbed.audio import silence, speak
from testbed.morgan_process import ROOT, MorganUp, VoiceClient
from testbed.ports import bindable, free_port

pytestmark = pytest.mark.system

PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")
BLACKBOX = shutil.which("prometheus-blackbox-exporter")
MONITORING = ROOT / "deploy" / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "morgan-overview.json"
RULES = MONITORING / "alerts.yml"
BLACKBOX_CONFIG = MONITORING / "blackbox.yml"
KINDS = Settings().kind_list
"""The kinds ``morgan up`` starts by default (or as MORGAN_KINDS says), one worker each."""
GATEWAY = service_name("gateway")
HOST = "test-host"
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "15s", "$__range": "5m"}
"""Grafana's built-in variables, as a 5-minute view has them; any other ``$`` fails."""
QUIET = {
    "MorganTargetDown",
    "MorganKindWithoutWorker",
    "MorganNoGateway",
    "MorganGatewayUnavailable",
    "MorganWorkBacklog",
    # The data layer: the embedded PostgreSQL and Qdrant's local mode are up, so history
    # and memory take each event at once and write it the first time ...
    "MorganHistoryBehind",
    "MorganDataWritesFailing",
    # ... every process's Consul check passes, and the gateway's /health says "ok".
    "MorganStoreUnreachable",
    "MorganGatewayDegraded",
}
"""Alerts that must not fire on a healthy ``morgan up`` that has spoken one turn."""
TURN_S = 90.0
SCRAPE_S = 30.0
"""Longest Prometheus may take to see every target up, or a finished turn, seconds."""


def metrics_base() -> int:
    """A MORGAN_METRICS_PORT whose next ``len(KINDS)`` ports are free too."""
    while True:
        base = free_port()
        if base + len(KINDS) < 65536 and all(bindable(base + 1 + i) for i in range(len(KINDS))):
            return base


def consul_services(http_port: int, metrics_port: int) -> dict[str, dict[str, str]]:
    """Consul service -> the one target Consul SD gives for it on this host: its
    ``__address__`` and ``__meta_consul_*`` labels. Tags are streams/registry.py's
    ``service_tags`` as the processes register them (processors/announce.py,
    gateway/presence.py), joined and wrapped in commas; health is what a healthy
    process's TTL check reports."""
    hw = hardware.detect()
    tags = {
        GATEWAY: service_tags(
            "gateway",
            tier_tags=(),
            hw_tags={"os": hw.os, "arch": hw.arch},
            model="",
            extra_tags=presence.traefik_tags(http_port),
        )
    }
    addresses = {GATEWAY: f"127.0.0.1:{http_port}"}
    for i, kind in enumerate(KINDS):
        tags[service_name(kind)] = service_tags(
            kind,
            tier_tags=hw.tiers if registry.is_tiered(kind) else (),
            hw_tags={"cuda": hw.cuda_devices > 0, "os": hw.os, "arch": hw.arch},
            model="",
        )
        addresses[service_name(kind)] = f"127.0.0.1:{metrics_port + 1 + i}"
    return {
        service: {
            "__address__": addresses[service],
            "__meta_consul_node": HOST,
            "__meta_consul_service": service,
            "__meta_consul_tags": "," + ",".join(tags[service]) + ",",
            "__meta_consul_health": PASSING,
        }
        for service in addresses
    }


def probe_timeout(job: dict[str, Any]) -> str:
    """The timeout of the blackbox module a probing job asks for (blackbox.yml)."""
    (module,) = job["params"]["module"]
    timeout: str = yaml.safe_load(BLACKBOX_CONFIG.read_text())["modules"][module]["timeout"]
    return timeout


def scrape_config(http_port: int, metrics_port: int, blackbox: str) -> dict[str, Any]:
    """deploy/monitoring/prometheus.yml for this ``morgan up``: its jobs that find Morgan
    in Consul, with static targets in place of Consul, scraped every second; a probing
    job (through the blackbox exporter) as often as its probe may take, and sent to
    ``blackbox`` (host:port) rather than the compose service ``blackbox:9115``."""
    shipped = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    services = consul_services(http_port, metrics_port)
    known = {GATEWAY} | {service_name(k) for k in registry.kinds()}
    scraped: set[str] = set()
    scrape = []
    for shipped_job in shipped["scrape_configs"]:
        if "consul_sd_configs" not in shipped_job:
            continue  # traefik, consul, prometheus itself: not part of morgan up
        job = dict(shipped_job)
        (consul,) = job.pop("consul_sd_configs")
        assert set(consul["services"]) <= known, (job["job_name"], consul["services"])
        scraped |= set(consul["services"])
        job["static_configs"] = [
            {
                "targets": [services[service]["__address__"]],
                "labels": {k: v for k, v in services[service].items() if k != "__address__"},
            }
            for service in consul["services"]
            if service in services  # Consul has no instance of a kind that is not run
        ]
        job["scrape_interval"] = job["scrape_timeout"] = "1s"
        if job.get("metrics_path") == "/probe":
            rules = job["relabel_configs"]
            to_exporter = [
                i
                for i, rule in enumerate(rules)
                if rule.get("target_label") == "__address__" and "source_labels" not in rule
            ]
            assert len(to_exporter) == 1, (job["job_name"], rules)
            rules = list(rules)
            rules[to_exporter[0]] = {**rules[to_exporter[0]], "replacement": blackbox}
            job["relabel_configs"] = rules
            job["scrape_interval"] = job["scrape_timeout"] = probe_timeout(job)
        scrape.append(job)
    assert set(services) <= scraped, f"not scraped: {sorted(set(services) - scraped)}"
    return {
        "global": {**shipped["global"], "scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": scrape,
    }


def target_count(config: dict[str, Any]) -> int:
    """How many targets ``config`` scrapes: all of them ``morgan-*`` jobs."""
    jobs = config["scrape_configs"]
    assert all(job["job_name"].startswith("morgan-") for job in jobs), jobs
    return sum(len(static["targets"]) for job in jobs for static in job["static_configs"])


@dataclass
class Daemon:
    """A server this module started, and the file its output goes to."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@dataclass
class Prometheus(Daemon):
    targets: int
    """How many targets it scrapes: each is up once it answers."""


@contextlib.contextmanager
def daemon(argv: list[str], port: int, log: Path, ready: str) -> Iterator[Daemon]:
    """Run ``argv`` (listening on ``port``) until the block ends, once GET ``ready``
    answers 200."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        started = Daemon(proc, f"http://127.0.0.1:{port}", log)
        wait_ready(started, ready)
        yield started
    finally:
        processes.stop(proc)


@pytest.fixture(scope="module")
def morgan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MorganUp, int]]:
    if PROMETHEUS is None or PROMTOOL is None:
        pytest.fail("Debian's prometheus is not installed: scripts/setup --test")
    if BLACKBOX is None:
        pytest.fail("Debian's prometheus-blackbox-exporter is not installed: scripts/setup --test")
    base = metrics_base()
    up = MorganUp(
        tmp_path_factory.mktemp("morgan"),
        MORGAN_VAD_SILENCE_MS="500",
        MORGAN_KINDS=",".join(KINDS),
        MORGAN_METRICS_PORT=str(base),
    )
    try:
        up.wait_ready()
        yield up, base
    finally:
        code = up.stop()
        assert code == 0, up.log()


@pytest.fixture(scope="module")
def blackbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """The blackbox exporter with the shipped blackbox.yml."""
    assert BLACKBOX is not None
    tmp = tmp_path_factory.mktemp("blackbox")
    port = free_port()
    argv = [
        BLACKBOX,
        f"--config.file={BLACKBOX_CONFIG}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with daemon(argv, port, tmp / "blackbox.log", "/-/healthy") as started:
        yield started


@pytest.fixture(scope="module")
def prometheus(
    morgan: tuple[MorganUp, int], blackbox: Daemon, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    up, base = morgan
    tmp = tmp_path_factory.mktemp("prometheus")
    config = tmp / "prometheus.yml"
    settings = scrape_config(up.http_port, base, blackbox.url.removeprefix("http://"))
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    assert PROMETHEUS is not None and PROMTOOL is not None
    for check in (["check", "config", str(config)], ["check", "rules", str(RULES)]):
        done = subprocess.run([PROMTOOL, *check], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
    port = free_port()
    argv = [
        PROMETHEUS,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with daemon(argv, port, tmp / "prometheus.log", "/-/ready") as started:
        yield Prometheus(started.proc, started.url, started.log, target_count(settings))


def wait_ready(server: Daemon, path: str, timeout_s: float = 60) -> None:
    """Until ``server`` answers GET ``path`` with 200 (Prometheus binds its port after
    opening its TSDB, then answers ``/-/ready``; the blackbox exporter ``/-/healthy``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert server.proc.poll() is None, server.output()
        try:
            if httpx.get(f"{server.url}{path}", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{server.log.stem} not ready in {timeout_s} s"
        time.sleep(0.2)


@pytest_asyncio.fixture
async def http(prometheus: Prometheus) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=prometheus.url, timeout=10) as client:
        yield client


async def query(http: httpx.AsyncClient, expr: str) -> list[dict[str, Any]]:
    """The instant vector (or scalar, as one sample) ``expr`` evaluates to now; an
    evaluation error fails the test with Prometheus' message."""
    r = await http.get("/api/v1/query", params={"query": expr})
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", (expr, body)
    data = body["data"]
    if data["resultType"] in ("scalar", "string"):
        return [{"metric": {}, "value": data["result"]}]
    result: list[dict[str, Any]] = data["result"]
    return result


async def until(http: httpx.AsyncClient, expr: str, prometheus: Prometheus) -> None:
    """Polls until ``expr`` returns data (Prometheus scrapes every second)."""
    deadline = time.monotonic() + SCRAPE_S
    while not await query(http, expr):
        assert prometheus.proc.poll() is None, prometheus.output()
        assert time.monotonic() < deadline, f"no data for {expr} in {SCRAPE_S} s"
        await asyncio.sleep(0.5)


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every Prometheus target, Grafana variables filled in;
    Loki (LogQL) targets are not PromQL and are left to tests/unit/test_promtail.py."""
    board = json.loads(DASHBOARD.read_text())
    out = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            if target["datasource"]["type"] != "prometheus":
                continue
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            assert "$" not in expr, f"{panel['title']}: unknown variable in {expr}"
            out.append((f"{panel['title']} ({target['refId']})", expr))
    return out


def alert_rules() -> list[tuple[str, str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [(rule["alert"], rule["expr"]) for g in groups for rule in g["rules"]]


COMPARISONS = {"==", "!=", ">", "<", ">=", "<="}
SET_OPS = {"or", "and"}


def arms(expr: str) -> list[str]:
    """The alternatives of a top-level ``or`` (the whole expression when there is none)."""
    node = _unwrapped(promql_parser.parse(expr))
    out = []
    while isinstance(node, promql_parser.BinaryExpr) and str(node.op).lower() == "or":
        out.append(str(node.rhs))
        node = _unwrapped(node.lhs)
    return [str(node), *reversed(out)]


def _unwrapped(node: Any) -> Any:
    while isinstance(node, promql_parser.ParenExpr):
        node = node.expr
    return node


def watched(expr: str) -> list[str]:
    """What an alert condition watches (module docstring): expressions that must each
    return data while nothing is wrong."""
    node = promql_parser.parse(expr)
    return [str(n) for n in _watched(node)]


def _watched(node: Any) -> list[Any]:
    if isinstance(node, promql_parser.ParenExpr):
        return _watched(node.expr)
    if isinstance(node, promql_parser.BinaryExpr):
        op = str(node.op).lower()
        if op in COMPARISONS and not (node.modifier is not None and node.modifier.return_bool):
            return _watched(node.lhs)
        if op in SET_OPS:
            return _watched(node.lhs) + _watched(node.rhs)
    if isinstance(node, promql_parser.Call) and node.func.name == "absent":
        return _watched(node.args[0])
    return [node]


def has_values(result: list[dict[str, Any]]) -> bool:
    """Some sample is a number (histogram_quantile over no observations gives NaN)."""
    return any(not math.isnan(float(sample["value"][1])) for sample in result)


async def test_every_dashboard_and_alert_query_returns_data_after_a_turn(
    morgan: tuple[MorganUp, int], prometheus: Prometheus, http: httpx.AsyncClient
) -> None:
    up, _ = morgan
    await until(http, f'count(up{{job=~"morgan-.*"}} == 1) == {prometheus.targets}', prometheus)
    client = await VoiceClient.open(up.url)
    await client.ws.send(json.dumps({"type": "nonsense"}))  # one client mistake: a rejection
    await client.wait_for(lambda: client.first("error") is not None, TURN_S)
    await client.send_audio(silence(400) + speak("what is the capital of france") + silence(1500))
    await client.wait_for(lambda: any(t.complete for t in client.turns.values()), TURN_S)
    await client.ws.send(json.dumps({"type": "text", "text": "Say hello to my friend Sam."}))
    await client.wait_for(lambda: sum(t.complete for t in client.turns.values()) == 2, TURN_S)
    await client.close()
    for source in ("speech", "text"):  # both turns, as the gateway measured them
        seen = f'morgan_gateway_first_audio_seconds_count{{input="{source}"}} > 0'
        await until(http, seen, prometheus)
    await until(http, 'morgan_processor_messages_total{kind="tts", outcome="ok"}', prometheus)
    # Every kind has taken a message: the event taps (history, memory) after the reply too.
    took = 'count by (kind) (morgan_processor_queue_wait_seconds_count{job="morgan-processors"})'
    await until(http, f"count({took} > 0) == {len(KINDS)}", prometheus)

    empty = []
    for title, expr in dashboard_queries():
        if not await query(http, expr):
            empty.append(f"dashboard {title}: {expr}")
    for alert, expr in alert_rules():
        if alert in QUIET:
            firing = await query(http, expr)
            assert not firing, f"{alert} fires on a healthy morgan up: {firing}"
        for arm in arms(expr):  # a firing arm has data; a quiet one, what it watches
            if await query(http, arm):
                continue
            for part in watched(arm):
                if not await query(http, part):
                    empty.append(f"alert {alert}: {part}")
    assert not empty, "no data for:\n" + "\n".join(empty)

    p50 = (
        "histogram_quantile(0.5, sum by (le) (rate(morgan_gateway_first_audio_seconds_bucket[5m])))"
    )
    assert has_values(await query(http, p50))  # the latency panel shows a real number


async def test_prometheus_evaluates_every_shipped_alert_rule_without_error(
    prometheus: Prometheus, http: httpx.AsyncClient
) -> None:
    names = {alert for alert, _ in alert_rules()}
    deadline = time.monotonic() + SCRAPE_S
    while True:
        r = await http.get("/api/v1/rules", params={"type": "alert"})
        rules = [rule for g in r.json()["data"]["groups"] for rule in g["rules"]]
        evaluated = [rule for rule in rules if rule.get("lastEvaluation", "").startswith("2")]
        if {rule["name"] for rule in evaluated} == names or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert {rule["name"] for rule in rules} == names
    bad = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert not bad, bad


async def test_targets_are_labelled_by_the_shipped_relabelling(
    prometheus: Prometheus, http: httpx.AsyncClient
) -> None:
    await until(http, f'count(up{{job=~"morgan-.*"}} == 1) == {prometheus.targets}', prometheus)
    gateway = await query(http, 'up{job="morgan-gateway"}')
    assert [(s["metric"]["host"], s["metric"]["consul_health"]) for s in gateway] == [
        (HOST, PASSING)
    ]
    labels = {
        s["metric"]["kind"]: s["metric"] for s in await query(http, "up{job='morgan-processors'}")
    }
    assert set(labels) == set(KINDS)
    for kind, metric in labels.items():
        assert (metric["host"], metric["consul_health"]) == (HOST, PASSING), metric
        tier = (
            ("gpu" if "gpu" in hardware.detect().tiers else "cpu")
            if registry.is_tiered(kind)
            else None
        )
        assert metric.get("tier") == tier, metric
    # honor_labels: a processor's own kind label is kept, not renamed to exported_kind
    await until(http, "morgan_processor_model_load_seconds", prometheus)
    for sample in await query(http, "morgan_processor_model_load_seconds"):
        assert "exported_kind" not in sample["metric"], sample


async def test_each_gateways_health_is_probed_through_the_blackbox_exporter(
    morgan: tuple[MorganUp, int], prometheus: Prometheus, http: httpx.AsyncClient
) -> None:
    up, _ = morgan
    await until(http, 'probe_success{job="morgan-gateway-health"} == 1', prometheus)
    (probe,) = await query(http, 'probe_failed_due_to_regex{job="morgan-gateway-health"}')
    # the gateway's own address, not the exporter's; its /health said "ok", not "degraded"
    assert probe["metric"]["instance"] == f"127.0.0.1:{up.http_port}", probe
    assert probe["metric"]["host"] == HOST, probe
    assert probe["value"][1] == "0", probe
    (status,) = await query(http, 'probe_http_status_code{job="morgan-gateway-health"}')
    assert status["value"][1] == "200", status
