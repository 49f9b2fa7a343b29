"""deploy/ agrees with the registered processor kinds (processors.registry and each Spec).

Every built-in kind runs somewhere in the compose files and in the swarm stack, started
by its own name; a tiered kind has a gpu-tier and a cpu-tier service; Prometheus scrapes
every kind's metrics port and the alerts watch every kind; and no deploy file names a
kind that is not registered. The data-layer kinds get the stores they use, history runs
on two hosts and their EVENTS consumers never give up and are replicated three times.
"""

from __future__ import annotations

import plistlib
import re
import shlex
from collections import defaultdict
from typing import Any

import pytest

from processors import registry
from streams import definitions
from streams.registry import service_name
from streams.settings import Settings
from tests.unit.deploy_helpers import (
    COMPOSE_HOSTS,
    DEPLOY,
    compose,
    env_of,
    is_morgan,
    load_yaml,
    secret_names,
    stack,
)

BUILT_IN = sorted(registry.BUILT_IN)
REGISTERED = set(registry.kinds())
TIERED = sorted(k for k in BUILT_IN if registry.spec(k).tiered)


def started_kind(command: Any) -> str | None:
    """The kind a Morgan container's command starts, or None (the gateway, ...).

    The images run ``python -m <command>`` (deploy/docker), so a processor's command is
    ``["processors", KIND]``; ``python -m processors KIND`` and ``morgan run KIND`` count too.
    """
    args = shlex.split(command) if isinstance(command, str) else [str(a) for a in command or []]
    for i, arg in enumerate(args[:-1]):
        if arg == "processors" or (arg == "run" and i > 0 and args[i - 1].endswith("morgan")):
            return args[i + 1]
    return None


def processors_in(services: dict[str, Any], where: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """``where/service`` -> (the kind it starts, the service) for every Morgan processor."""
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for name, svc in services.items():
        if not is_morgan(svc) or svc.get("command") == ["gateway"]:
            continue
        kind = started_kind(svc.get("command"))
        assert kind is not None, f"{where}/{name}: cannot tell which kind {svc.get('command')} runs"
        found[f"{where}/{name}"] = (kind, svc)
    return found


def compose_processors() -> dict[str, tuple[str, dict[str, Any]]]:
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for host in COMPOSE_HOSTS:
        found |= processors_in(compose(host)["services"], host)
    return found


def stack_processors() -> dict[str, tuple[str, dict[str, Any]]]:
    return processors_in(stack()["services"], "swarm")


DEPLOYMENTS = {"compose": compose_processors, "swarm stack": stack_processors}


def tiers_of(svc: dict[str, Any]) -> set[str]:
    return {t.strip() for t in env_of(svc).get("MORGAN_TIERS", "").split(",") if t.strip()}


def test_the_registry_knows_the_shipped_pipeline() -> None:
    # not vacuous: the lists below are derived
    assert BUILT_IN == ["history", "llm", "memory", "stt", "tts", "vad"]
    assert TIERED == ["stt", "tts"]


@pytest.mark.parametrize("deployment", sorted(DEPLOYMENTS))
def test_every_built_in_kind_has_a_service_started_with_its_own_name(deployment: str) -> None:
    services = DEPLOYMENTS[deployment]()
    by_kind: dict[str, list[str]] = defaultdict(list)
    for where, (kind, _) in services.items():
        by_kind[kind].append(where)
    missing = [k for k in BUILT_IN if not by_kind[k]]
    assert not missing, f"{deployment}: no service runs kind(s) {missing}"


@pytest.mark.parametrize("deployment", sorted(DEPLOYMENTS))
def test_no_service_starts_a_kind_that_is_not_registered(deployment: str) -> None:
    unknown = {w: k for w, (k, _) in DEPLOYMENTS[deployment]().items() if k not in REGISTERED}
    assert not unknown, f"{deployment}: services run unregistered kinds {unknown}"


@pytest.mark.parametrize("deployment", sorted(DEPLOYMENTS))
def test_each_service_is_named_after_the_kind_it_runs(deployment: str) -> None:
    for where, (kind, svc) in DEPLOYMENTS[deployment]().items():
        name = where.split("/", 1)[1]
        allowed = {kind} | {f"{kind}-{t}" for t in tiers_of(svc)}
        assert name in allowed, f"{where} runs {kind}: name it one of {sorted(allowed)}"


@pytest.mark.parametrize("deployment", sorted(DEPLOYMENTS))
def test_every_tiered_kind_is_served_on_the_gpu_and_on_the_cpu_fallback(deployment: str) -> None:
    served: dict[str, set[str]] = defaultdict(set)
    for _, (kind, svc) in DEPLOYMENTS[deployment]().items():
        served[kind] |= tiers_of(svc)
    for kind in TIERED:
        assert served[kind] >= {"gpu", "cpu"}, (
            f"{deployment}: tiered kind {kind} is served on {sorted(served[kind])}, "
            "need a gpu-tier and a cpu-tier service (MORGAN_TIERS)"
        )


@pytest.mark.parametrize("deployment", sorted(DEPLOYMENTS))
def test_every_processor_serves_metrics_for_prometheus(deployment: str) -> None:
    for where, (kind, svc) in DEPLOYMENTS[deployment]().items():
        port = env_of(svc).get("MORGAN_METRICS_PORT", "0")
        assert port.isdigit() and int(port) > 0, (
            f"{where} ({kind}) sets no MORGAN_METRICS_PORT: it registers port 0 and "
            "Prometheus drops it"
        )


def prometheus_job(name: str) -> dict[str, Any]:
    conf = load_yaml(DEPLOY / "monitoring" / "prometheus.yml")
    jobs = {job["job_name"]: job for job in conf["scrape_configs"]}
    assert name in jobs, f"prometheus.yml has no job {name!r}; jobs: {sorted(jobs)}"
    job: dict[str, Any] = jobs[name]
    return job


def test_prometheus_scrapes_every_registered_kind_and_no_other() -> None:
    job = prometheus_job("morgan-processors")
    scraped = {s for sd in job["consul_sd_configs"] for s in sd["services"]}
    wanted = {service_name(k) for k in BUILT_IN}
    assert scraped >= wanted, f"prometheus.yml does not scrape {sorted(wanted - scraped)}"
    unknown = scraped - {service_name(k) for k in REGISTERED}
    assert not unknown, f"prometheus.yml scrapes {sorted(unknown)}: no such kind is registered"


def test_prometheus_labels_each_target_with_its_kind_and_drops_port_zero() -> None:
    rules = prometheus_job("morgan-processors")["relabel_configs"]
    [to_kind] = [r for r in rules if r.get("target_label") == "kind"]
    assert to_kind["source_labels"] == ["__meta_consul_service"]
    for kind in BUILT_IN:
        found = re.fullmatch(to_kind["regex"], service_name(kind))  # Prometheus anchors it
        assert found and found.group(1) == kind, f"{service_name(kind)} is not labelled {kind}"
    drops = [r for r in rules if r.get("action") == "drop"]
    assert any(re.fullmatch(r["regex"], "10.0.0.5:0") for r in drops)


def alert_kinds(alert: str) -> set[str]:
    groups = load_yaml(DEPLOY / "monitoring" / "alerts.yml")["groups"]
    [rule] = [r for g in groups for r in g["rules"] if r.get("alert") == alert]
    return set(re.findall(r'kind="([^"]+)"', rule["expr"]))


def test_the_alerts_watch_every_kind_for_a_live_worker_and_every_tiered_kind_for_a_gpu_one() -> (
    None
):
    assert alert_kinds("MorganKindWithoutWorker") == set(BUILT_IN)
    assert alert_kinds("MorganGpuTierDown") == set(TIERED)


def test_the_macos_launchd_example_runs_a_registered_kind() -> None:
    for path in sorted((DEPLOY / "macos").glob("*.plist")):
        with path.open("rb") as f:
            args = plistlib.load(f)["ProgramArguments"]
        assert args[-1] in REGISTERED, f"{path.name} runs {args[-1]!r}, not a registered kind"
        assert path.name == f"dev.morgan.{args[-1]}.plist", path.name


def test_started_kind_reads_every_way_a_processor_is_started() -> None:
    assert started_kind(["processors", "stt"]) == "stt"
    assert started_kind("python -m processors tts") == "tts"
    assert started_kind(["morgan", "run", "llm"]) == "llm"
    assert started_kind(["/opt/venv/bin/morgan", "run", "vad"]) == "vad"
    assert started_kind(["gateway"]) is None
    assert started_kind(["nats-server", "--config", "x"]) is None


# ---- the data-layer kinds (docs/data.md) ------------------------------------------------

DATABASE = {"MORGAN_DATABASE_URL", "MORGAN_DATABASE_READ_URL"}
CONTEXT = {"MORGAN_REDIS_CLUSTER_NODES"}
MEMORY_ON = {"MORGAN_QDRANT_URL"}
NEEDS = {
    "gateway": DATABASE | CONTEXT | MEMORY_ON,  # conversations, forgetting, /health
    "llm": DATABASE | CONTEXT | MEMORY_ON,  # L3 and L2 context; asks memory for recalls
    "history": {"MORGAN_DATABASE_URL"},
    "memory": MEMORY_ON,
}
"""The settings each process needs to reach the stores it uses."""


def services_with_role(deployment: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(where, kind or ``gateway``, service) for every Morgan service of a deployment."""
    found = [(w, k, s) for w, (k, s) in DEPLOYMENTS[deployment]().items()]
    sources = (
        [(h, compose(h)["services"]) for h in COMPOSE_HOSTS]
        if deployment == "compose"
        else [("swarm", stack()["services"])]
    )
    for where, services in sources:
        for name, svc in services.items():
            if is_morgan(svc) and svc.get("command") == ["gateway"]:
                found.append((f"{where}/{name}", "gateway", svc))
    return found


@pytest.mark.parametrize("deployment", sorted(DEPLOYMENTS))
def test_every_process_gets_the_settings_of_the_stores_it_uses(deployment: str) -> None:
    seen = set()
    for where, role, svc in services_with_role(deployment):
        env = env_of(svc)
        missing = NEEDS.get(role, set()) - set(env)
        assert not missing, f"{where} ({role}) lacks {sorted(missing)}"
        if "MORGAN_DATABASE_URL" in env:
            assert "PGPASSWORD" in secret_names(svc), where
        else:
            assert "PGPASSWORD" not in secret_names(svc), f"{where} gets a password it never uses"
        seen.add(role)
    assert seen >= set(NEEDS), f"{deployment}: no service for {sorted(set(NEEDS) - seen)}"


def test_the_memory_kind_needs_no_database_and_history_no_vectors() -> None:
    for where, (kind, svc) in {**compose_processors(), **stack_processors()}.items():
        env = env_of(svc)
        if kind == "memory":
            assert not DATABASE & set(env), where
        if kind == "history":
            assert not MEMORY_ON & set(env), where


def test_history_runs_on_two_hosts_and_in_two_swarm_tasks_on_different_nodes() -> None:
    hosts = sorted(w.split("/")[0] for w, (k, _) in compose_processors().items() if k == "history")
    assert hosts == ["cpu-linux", "gpu-linux"]
    history = stack()["services"]["history"]["deploy"]
    assert history["replicas"] == 2 and history["placement"]["max_replicas_per_node"] == 1


def test_the_macos_script_gives_the_native_llm_the_data_layer() -> None:
    script = (DEPLOY / "macos" / "morgan-processor.sh").read_text()
    exported = set(re.findall(r"export (MORGAN_[A-Z0-9_]+)=", script))
    assert NEEDS["llm"] <= exported
    llm = env_of(compose("cpu-linux")["services"]["llm"])
    for name in NEEDS["llm"]:
        assert f'{name}="${{{name}:-{llm[name]}}}"' in script, name  # the same values


@pytest.mark.parametrize("kind", ["history", "memory"])
def test_a_data_layer_kind_keeps_every_event_on_a_replicated_consumer(kind: str) -> None:
    """EVENTS is the write queue: the consumer never gives up an event and, like the
    stream, has three replicas in the deployed cluster (MORGAN_REPLICAS=3)."""
    [(_, svc)] = [(w, s) for w, (k, s) in stack_processors().items() if k == kind]
    settings = Settings.model_validate(
        {k.removeprefix("MORGAN_").lower(): v for k, v in env_of(svc).items()}
    )
    assert settings.replicas == 3
    consumers = registry.spec(kind).consumers(settings, settings.tier_list)
    assert consumers
    for _, consumer in consumers:
        assert consumer.stream == definitions.EVENTS and consumer.max_deliver == -1
        assert consumer.config(settings).num_replicas == 3
