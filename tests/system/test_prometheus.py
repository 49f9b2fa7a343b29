"""A real Prometheus (Debian's ``prometheus``) scrapes ``morgan up``; every PromQL
expression in deploy/monitoring/ evaluates and returns data after real turns.

``morgan up`` runs with MORGAN_METRICS_PORT: its n-th kind serves /metrics on that port
+ 1 + n, the gateway on its HTTP port. Prometheus scrapes them every second with a
config derived from deploy/monitoring/prometheus.yml: the same jobs, metrics paths,
``honor_labels`` and relabelling, with each Consul service replaced by a static target
that carries the ``__meta_consul_*`` labels Consul would give it, and the shipped
alerts.yml as its rule file. After one client mistake (an unknown message type, which
the gateway rejects: rejection reasons are open-ended, so their series appear when
first seen), one spoken and one typed turn, every dashboard panel's query and every
alert rule is sent to /api/v1/query. Series whose label values are known in advance
(a processor's outcomes per kind and tier, the gateway's turn outcomes) must exist at
zero from the start, so a rate or ratio of something that has not happened reads 0.

Dashboard queries must return data as they are. An alert expression is a condition,
empty while all is well (``x > 3``), so what must return data is what it watches:
the expression with its condition taken away, by these rules (``watched``):

    a > b (any comparison)   ->  watched(a)    the left-hand side: the measured value
    a or b, a and b          ->  watched(a), watched(b), each on its own
    absent(a)                ->  watched(a)    what must exist for the alert to keep quiet

That a condition is false on this healthy, CPU-only ``morgan up`` is asserted too, for
the alerts that say something is missing (``QUIET``); a condition that can fire here
for good reason (``MorganGpuTierDown`` on a host without a GPU, and a slow turn on a
loaded CPU) is only evaluated.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import socket
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

from processors import hardware, registry
from testbed.audio import silence, speak
from testbed.morgan_process import ROOT, MorganUp, VoiceClient, free_port

pytestmark = pytest.mark.system

PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")
MONITORING = ROOT / "deploy" / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "morgan-overview.json"
RULES = MONITORING / "alerts.yml"
KINDS = ("vad", "stt", "llm", "tts")
HOST = "test-host"
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "15s", "$__range": "5m"}
"""Grafana's built-in variables, as a 5-minute view has them; any other ``$`` fails."""
QUIET = {"MorganTargetDown", "MorganKindWithoutWorker", "MorganNoGateway", "MorganWorkBacklog"}
"""Alerts that must not fire on a healthy ``morgan up`` that has spoken one turn."""
TURN_S = 90.0
SCRAPE_S = 30.0
"""Longest Prometheus may take to see every target up, or a finished turn, seconds."""


def metrics_base() -> int:
    """A MORGAN_METRICS_PORT whose next ``len(KINDS)`` ports are free too."""
    while True:
        base = free_port()
        if base + len(KINDS) < 65536 and all(_free(base + 1 + i) for i in range(len(KINDS))):
            return base


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def consul_tags(kind: str) -> str:
    """``__meta_consul_tags`` as Consul SD gives it for this host's worker of ``kind``
    (tags of streams/registry.py's ``service_tags``, joined and wrapped in commas)."""
    tiers = hardware.detect().tiers if registry.is_tiered(kind) else ()
    tags = [kind, *(f"tier={t}" for t in tiers)]
    return "," + ",".join(tags) + ","


def scrape_config(http_port: int, metrics_port: int) -> dict[str, Any]:
    """deploy/monitoring/prometheus.yml for this ``morgan up``: its jobs with static
    targets in place of Consul, scraped every second."""
    shipped = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in shipped["scrape_configs"]}
    services = {"morgan-gateway": [f"127.0.0.1:{http_port}"]}
    services |= {f"morgan-{k}": [f"127.0.0.1:{metrics_port + 1 + i}"] for i, k in enumerate(KINDS)}
    scrape = []
    for name in ("morgan-gateway", "morgan-processors"):
        job = dict(jobs[name])
        (consul,) = job.pop("consul_sd_configs")
        assert set(consul["services"]) <= set(services), consul["services"]
        job["static_configs"] = [
            {
                "targets": services[service],
                "labels": {
                    "__meta_consul_node": HOST,
                    "__meta_consul_service": service,
                    "__meta_consul_tags": consul_tags(service.removeprefix("morgan-")),
                },
            }
            for service in consul["services"]
        ]
        job["scrape_interval"] = job["scrape_timeout"] = "1s"
        scrape.append(job)
    return {
        "global": {**shipped["global"], "scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": scrape,
    }


@dataclass
class Prometheus:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def morgan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MorganUp, int]]:
    if PROMETHEUS is None or PROMTOOL is None:
        pytest.fail("Debian's prometheus is not installed: scripts/setup --test")
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
def prometheus(
    morgan: tuple[MorganUp, int], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    up, base = morgan
    tmp = tmp_path_factory.mktemp("prometheus")
    config = tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(up.http_port, base), sort_keys=False))
    assert PROMETHEUS is not None and PROMTOOL is not None
    for check in (["check", "config", str(config)], ["check", "rules", str(RULES)]):
        done = subprocess.run([PROMTOOL, *check], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
    port = free_port()
    log = tmp / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc, log)
        yield Prometheus(proc, url, log)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 60) -> None:
    """Until Prometheus answers ``/-/ready`` (it binds its port after opening its TSDB)."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, log.read_text(errors="replace")[-4000:]
        try:
            if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"prometheus not ready in {timeout_s} s"
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
    await until(http, 'count(up{job=~"morgan-.*"} == 1) == 5', prometheus)
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
    await until(http, 'count(up{job=~"morgan-.*"} == 1) == 5', prometheus)
    gateway = await query(http, 'up{job="morgan-gateway"}')
    assert [s["metric"]["host"] for s in gateway] == [HOST]
    labels = {
        s["metric"]["kind"]: s["metric"] for s in await query(http, "up{job='morgan-processors'}")
    }
    assert set(labels) == set(KINDS)
    for kind, metric in labels.items():
        assert metric["host"] == HOST
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
