"""``morgan``: the composition root. up | run KIND | doctor | nats | nats-auth | declare |
keys | certs."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
from pathlib import Path

from morgan import certs, doctor, embedded_postgres, keys_cli
from morgan.embedded_postgres import EmbeddedPostgres
from morgan.supervisor import Child, Supervisor, child_env
from processors import permissions, registry
from streams import bus, definitions, embedded, nats_auth
from streams.settings import Settings

log = logging.getLogger("morgan")


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _metrics_port(settings: Settings, index: int) -> dict[str, str]:
    """Each child's own /metrics port: ``MORGAN_METRICS_PORT`` + 1 + its index (the
    gateway serves /metrics on its HTTP port)."""
    if not settings.metrics_port:
        return {}
    return {"MORGAN_METRICS_PORT": str(settings.metrics_port + 1 + index)}


async def _stores(settings: Settings) -> tuple[EmbeddedPostgres | None, dict[str, str], str]:
    """The data stores ``morgan up`` gives its children: an embedded PostgreSQL when no
    ``MORGAN_DATABASE_URL`` is set, Qdrant's local mode in ``<data_dir>/qdrant`` when
    no Qdrant is set. Returns the server started (if any), the children's environment
    and one line saying what is used. Raises ``EmbeddedPostgresError``."""
    env: dict[str, str] = {}
    pg = None
    if settings.database_url:
        history = f"PostgreSQL {doctor.hide_password(settings.database_url)}"
    else:
        root = settings.data_dir / "postgres"
        try:
            pg = await embedded_postgres.start(root)
        except embedded_postgres.NotInstalled as exc:
            history = f"none ({exc}; set MORGAN_DATABASE_URL)"
        else:
            env["MORGAN_DATABASE_URL"] = pg.url
            history = f"PostgreSQL embedded, 127.0.0.1:{pg.port} ({root})"
    if settings.qdrant_url:
        memory = f"Qdrant {settings.qdrant_url}"
    else:
        path = settings.qdrant_path or str(settings.data_dir / "qdrant")
        env["MORGAN_QDRANT_PATH"] = path
        memory = f"Qdrant local {path}"
    if settings.redis_cluster_nodes:
        cache = f"Redis Cluster {settings.redis_cluster_nodes}"
    elif settings.redis_url:
        cache = f"Redis {doctor.hide_password(settings.redis_url)}"
    else:
        cache = "no Redis (L1 and PostgreSQL only)"
    return pg, env, f"history: {history}; memory: {memory}; context cache: {cache}"


async def up(settings: Settings, nats_port: int) -> int:
    """Everything on this machine: nats-server, the data stores (docs/data.md), one
    worker of each enabled kind (``MORGAN_KINDS``), the gateway."""
    known = registry.kinds()
    missing = [k for k in settings.kind_list if k not in known]
    if missing:
        print(f"MORGAN_KINDS names kinds not installed: {missing}; have {sorted(known)}")
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    port = nats_port if _port_free("127.0.0.1", nats_port) else 0
    seeds, block = permissions.credentials(settings, settings.data_dir / "nats-auth")
    srv = await embedded.start(store_dir=settings.data_dir / "nats", port=port, authorization=block)
    print(f"nats-server  {srv.url}  (monitoring {srv.monitor_url})", flush=True)
    await _declare(settings.model_copy(update={"nats_url": srv.url}), seeds[nats_auth.ADMIN])
    print(
        f"             operator: nats --server {srv.url} --nkey {seeds[nats_auth.OPERATOR]}"
        " sub 'morgan.events.>'",
        flush=True,
    )
    pg = None
    try:
        try:
            pg, store_env, stores = await _stores(settings)
        except embedded_postgres.EmbeddedPostgresError as exc:
            print(f"PostgreSQL: {exc}", flush=True)
            return 1
        print(f"stores       {stores}", flush=True)
        if not stop.is_set():  # Ctrl-C while the stores started: no children to start
            env = child_env({"MORGAN_NATS_URL": srv.url, **store_env})
            await _children(settings, env, seeds, stop)
    finally:
        if pg is not None:
            await pg.stop()
        await srv.stop()
    return 0


async def _declare(settings: Settings, admin_seed: Path | None = None) -> None:
    """Streams and buckets as this version declares them, made or updated as ``admin``
    (the workers' roles may only create what is missing)."""
    admin = settings
    if admin_seed is not None:
        admin = settings.model_copy(update={"nats_seed_file": str(admin_seed)})
    nc = await bus.connect(admin, "morgan-declare", keep_trying=False)
    try:
        js = nc.jetstream()
        await definitions.apply(js, admin)
        for bucket in definitions.bucket_configs(admin):
            await definitions.key_value(js, admin, bucket)
    finally:
        await nc.close()


def _seed(role: str, seeds: dict[str, Path]) -> dict[str, str]:
    return {"MORGAN_NATS_SEED_FILE": str(seeds[role])}


async def _children(
    settings: Settings, env: dict[str, str], seeds: dict[str, Path], stop: asyncio.Event
) -> None:
    """Run the workers and the gateway until ``stop``, each as its own NATS role."""
    py = sys.executable
    children = [
        Child(
            kind,
            [py, "-m", "processors", kind],
            {**env, **_metrics_port(settings, i), **_seed(kind, seeds)},
            b" ready on ",
        )
        for i, kind in enumerate(settings.kind_list)
    ]
    gateway_env = {**env, **_seed(nats_auth.GATEWAY, seeds)}
    children.append(Child("gateway", [py, "-m", "gateway"], gateway_env, b"Uvicorn running on"))
    sup = Supervisor(children)
    await sup.start()
    print("loading models: " + ", ".join(c.name for c in children), flush=True)
    waiting = {asyncio.create_task(c.ready.wait()): c.name for c in children}
    stopper = asyncio.create_task(stop.wait())
    while waiting and not stop.is_set():
        done, _ = await asyncio.wait([*waiting, stopper], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task in waiting:
                print(f"  ready: {waiting.pop(task)}", flush=True)
    if not stop.is_set():
        url = f"http://{settings.http_host}:{settings.http_port}"
        print(f"Morgan is ready: open {url} and talk (Ctrl-C stops)", flush=True)
    await stop.wait()
    print("stopping…", flush=True)
    for task in waiting:
        task.cancel()
    await sup.stop()


async def run_nats(settings: Settings, args: argparse.Namespace) -> int:
    """One node of a NATS cluster (or a lone server) for a Morgan deployment host."""
    cluster = None
    if args.cluster_name:
        cluster = embedded.ClusterConfig(args.cluster_name, args.cluster_port, tuple(args.route))
    tls = None
    if args.tls_cert:
        tls = embedded.ServerTls(Path(args.tls_cert), Path(args.tls_key), Path(args.tls_ca))
    srv = await embedded.start(
        tls=tls,
        authorization=Path(args.auth).read_text() if args.auth else "",
        store_dir=settings.data_dir / "nats",
        host=args.host,
        port=args.port,
        http_port=args.http_port,
        server_name=args.name,
        cluster=cluster,
        sync_interval=args.sync_interval,
    )
    print(f"nats-server {args.name} {srv.url} (sync_interval {args.sync_interval})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    done = asyncio.create_task(srv.process.wait())
    await asyncio.wait([done, asyncio.create_task(stop.wait())], return_when="FIRST_COMPLETED")
    await srv.stop()
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="morgan", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    u = sub.add_parser("up", help="run everything on this machine")
    u.add_argument("--nats-port", type=int, default=4222, help="embedded NATS port (busy = any)")
    r = sub.add_parser("run", help="run one processor (or the gateway) against MORGAN_NATS_URL")
    r.add_argument("kind", choices=[*sorted(registry.kinds()), "gateway"])
    sub.add_parser("doctor", help="what this host has and would serve")
    n = sub.add_parser("nats", help="run a nats-server node for this host")
    n.add_argument("--name", default=socket.gethostname())
    n.add_argument("--host", default="0.0.0.0")
    n.add_argument("--port", type=int, default=4222)
    n.add_argument("--http-port", type=int, default=8222)
    n.add_argument("--cluster-name", default="")
    n.add_argument("--cluster-port", type=int, default=6222)
    n.add_argument("--route", action="append", default=[], help="nats-route://host:6222")
    n.add_argument("--auth", default="", help="authorization block (morgan nats-auth's auth.conf)")
    n.add_argument("--tls-cert", default="", help="this host's certificate (morgan certs host)")
    n.add_argument("--tls-key", default="", help="its key")
    n.add_argument("--tls-ca", default="", help="the CA that signs clients and routes (mTLS)")
    n.add_argument(
        "--sync-interval",
        default=embedded.SYNC_INTERVAL,
        help="how often JetStream fsyncs (EVENTS is the history's write queue; docs/design.md"
        f" 'Durability'); default {embedded.SYNC_INTERVAL}, 'always' to fsync every write",
    )
    sub.add_parser("declare", help="make or update streams and buckets (as admin)")
    a = sub.add_parser("nats-auth", help="NKey seeds per role and the servers' auth.conf")
    a.add_argument("--out", required=True, help="directory for <role>.nk and auth.conf")
    keys_cli.add_parser(sub)
    certs.add_parser(sub)
    return p


def nats_auth_files(settings: Settings, out: Path) -> int:
    """Seeds for every role of ``MORGAN_KINDS`` (kept when present) and ``auth.conf``,
    the authorization block every NATS node includes (docs/security.md)."""
    seeds, block = permissions.credentials(settings, out)
    (out / "auth.conf").write_text(block)
    print(f"{out / 'auth.conf'}: include it in every nats-server's config")
    for role, path in seeds.items():
        print(f"{path}: MORGAN_NATS_SEED_FILE of {role}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(message)s")
    if args.command == "up":
        return asyncio.run(up(settings, args.nats_port))
    if args.command == "run":
        if args.kind == "gateway":
            from gateway.__main__ import main as gateway_main

            gateway_main(settings)
            return 0
        from processors.__main__ import main as processor_main

        return processor_main([args.kind], settings)
    if args.command == "declare":
        asyncio.run(_declare(settings))
        print(f"streams and buckets declared on {settings.nats_url}")
        return 0
    if args.command == "nats-auth":
        return nats_auth_files(settings, Path(args.out))
    if args.command == "keys":
        return keys_cli.run(settings, args)
    if args.command == "certs":
        return certs.run(args)
    if args.command == "doctor":
        return asyncio.run(doctor.report(settings))
    return asyncio.run(run_nats(settings, args))
