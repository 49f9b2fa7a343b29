"""A fake Consul agent, written from the Consul HTTP API documentation.

No Consul binary can be had here, so this serves the part of the API Morgan
uses, with the documented behaviour (all paths under ``/v1``):

    PUT    agent/service/register          Name, ID, Tags, Meta, Address, Port, Check/Checks
    PUT    agent/service/deregister/<id>   404 for an unknown service
    GET    agent/services  agent/service/<id>  agent/checks
    PUT    agent/check/pass|warn|fail/<id> ?note=
    PUT    agent/check/update/<id>         {"Status", "Output"}; 404 for an unknown check
    GET    health/service/<name>           ?passing ?tag= (repeatable); blocking
    GET    health/state/<state>            any|passing|warning|critical; blocking
    GET    catalog/services                blocking
    GET    status/leader
    GET    kv/<key>                        ?recurse ?keys ?separator ?raw; blocking; 404 if none
    PUT    kv/<key>                        body = value; ?cas= ?flags=; answers true/false
    DELETE kv/<key>                        ?recurse ?cas=

Kept from the real thing: TTL checks start ``critical`` unless ``Status`` says
otherwise and turn ``critical`` ("TTL expired") when not updated within their
TTL; a service whose check stays critical longer than its
``DeregisterCriticalServiceAfter`` is removed by a reaper (every 30 s, minimum
1 minute in Consul; both are constructor arguments here so tests run fast).
Blocking queries (``?index=&wait=``) hang while the resource's index is <= the
given one, up to ``wait`` (default 5m, at most 10m) plus up to wait/16 jitter,
and answer with ``X-Consul-Index``; the index of a key that never existed is
the whole KV table's, so such a query wakes on any KV write. JSON field names
match case-insensitively, as Go's decoder does. ``token`` turns on ACLs: a
request must carry it (``X-Consul-Token``, ``Authorization: Bearer`` or
``?token=``) or gets 403. Only TTL checks are supported (others get 400).

Traefik's consulCatalog provider reads ``catalog/services`` and
``health/service/<name>?tag=traefik.enable=true``; with ``watch: true`` it holds
blocking queries on ``catalog/services`` and ``health/state/any`` and reloads when
either answers with a new index (tests/system/test_traefik.py runs the real one).

``tls`` serves HTTPS; with ``TLSFiles.client_ca`` the agent also demands a client
certificate signed by that CA (Consul's ``verify_incoming``), so a client without one,
with one from another CA, or with an expired one fails the TLS handshake and never
reaches the API.

``stop()`` behaves like a crashed agent (connections are cut) and keeps the
port reserved, so ``start()`` brings it back at the same address; ``reset()``
empties it (a dev-mode agent restarts empty).

Run by hand: ``python -m tests.fakes.consul --port 8500``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import random
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

STATUSES = ("passing", "warning", "critical")
MAX_VALUE_BYTES = 512 * 1024
MAX_OUTPUT_BYTES = 4096
MAX_WAIT_S = 600.0
DEFAULT_WAIT_S = 300.0
NODE = "fake-node"
NODE_CHECK: dict[str, Any] = {
    "Node": NODE,
    "CheckID": "serfHealth",
    "Name": "Serf Health Status",
    "Status": "passing",
    "Output": "Agent alive and reachable",
    "ServiceID": "",
    "ServiceName": "",
    "ServiceTags": [],
    "Type": "",
}
"""The agent's own node check, which Consul lists with every service's checks."""
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_META_KEY = re.compile(r"^[A-Za-z0-9_-]{1,128}$")

Handler = Callable[[Request], Awaitable[Response]]


class ApiError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def parse_duration(value: object) -> float:
    """Seconds in a Go duration (``"10s"``, ``"1m30s"``, ``"250ms"``); a number is nanoseconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) / 1e9
    text = str(value).strip()
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ApiError(400, f'Request decode failed: time: invalid duration "{text}"')
    return total


def _norm(d: object) -> dict[str, Any]:
    """Field names folded the way Go's JSON decoder matches them (and Consul's snake_case)."""
    if not isinstance(d, dict):
        raise ApiError(400, "Request decode failed: expected a JSON object")
    return {str(k).lower().replace("_", ""): v for k, v in d.items()}


def _flag(q: Mapping[str, str], name: str) -> bool:
    if name not in q:
        return False
    return q[name] == "" or q[name].lower() in ("1", "t", "true", "yes")


@dataclass
class KVEntry:
    key: str
    value: bytes
    flags: int
    create_index: int
    modify_index: int

    def json(self) -> dict[str, Any]:
        return {
            "LockIndex": 0,
            "Key": self.key,
            "Flags": self.flags,
            "Value": base64.b64encode(self.value).decode() if self.value else None,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


@dataclass
class Service:
    id: str
    name: str
    tags: list[str]
    meta: dict[str, str]
    address: str
    port: int
    index: int

    def json(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Service": self.name,
            "Tags": list(self.tags),
            "Meta": dict(self.meta),
            "Address": self.address,
            "Port": self.port,
            "Weights": {"Passing": 1, "Warning": 1},
            "EnableTagOverride": False,
            "Datacenter": "dc1",
            "CreateIndex": self.index,
            "ModifyIndex": self.index,
        }


@dataclass
class Check:
    id: str
    name: str
    service: Service
    ttl_s: float
    status: str
    notes: str = ""
    output: str = ""
    deregister_after_s: float | None = None
    critical_since: float | None = None
    index: int = 0
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)

    def json(self) -> dict[str, Any]:
        return {
            "Node": NODE,
            "CheckID": self.id,
            "Name": self.name,
            "Status": self.status,
            "Notes": self.notes,
            "Output": self.output,
            "ServiceID": self.service.id,
            "ServiceName": self.service.name,
            "ServiceTags": list(self.service.tags),
            "Type": "ttl",
            "CreateIndex": self.index,
            "ModifyIndex": self.index,
        }


@dataclass(frozen=True)
class TLSFiles:
    """PEM files for an HTTPS agent (Consul's ``tls.https`` stanza)."""

    cert: Path
    key: Path
    client_ca: Path | None = None
    """Clients must present a certificate signed by this CA (``verify_incoming``)."""


class _AgentContext(ssl.SSLContext):
    refusals: list[str]


class _RecordingSSLObject(ssl.SSLObject):
    """A server-side TLS connection that notes why its handshake failed."""

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise  # more bytes to come: not a failure
        except ssl.SSLCertVerificationError as exc:
            self._refused(exc.verify_message)
            raise
        except ssl.SSLError as exc:
            self._refused(exc.reason or str(exc))
            raise

    def _refused(self, why: str) -> None:
        if isinstance(self.context, _AgentContext):
            self.context.refusals.append(why)


def _server_context(tls: TLSFiles, refusals: list[str]) -> ssl.SSLContext:
    ctx = _AgentContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.refusals = refusals
    ctx.load_cert_chain(tls.cert, tls.key)
    if tls.client_ca is not None:
        ctx.load_verify_locations(cafile=tls.client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.sslobject_class = _RecordingSSLObject
    return ctx


class FakeConsul:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        token: str | None = None,
        reap_interval_s: float = 30.0,
        min_deregister_s: float = 60.0,
        tls: TLSFiles | None = None,
    ) -> None:
        self.host = host
        self.port = 0
        self.token = token
        self.tls = tls
        self.reap_interval_s = reap_interval_s
        self.min_deregister_s = min_deregister_s
        self.requests = 0
        """Requests answered since construction (tests use it to see retries)."""
        self.tls_refusals: list[str] = []
        """Why each refused TLS handshake failed, as OpenSSL says it (``certificate has
        expired``, ``PEER_DID_NOT_RETURN_A_CERTIFICATE``). asyncio drops such a connection
        without sending the TLS alert, so the client itself sees only the connection close."""
        self.blocking = 0
        """Blocking queries waiting right now."""
        self.reset()
        self._sock: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._down = False
        self.app = Starlette(
            routes=[
                Route("/v1/agent/service/register", self._guard(self._register), methods=["PUT"]),
                Route(
                    "/v1/agent/service/deregister/{sid:path}",
                    self._guard(self._deregister),
                    methods=["PUT"],
                ),
                Route("/v1/agent/services", self._guard(self._agent_services)),
                Route("/v1/agent/service/{sid:path}", self._guard(self._agent_service)),
                Route("/v1/agent/checks", self._guard(self._agent_checks)),
                Route(
                    "/v1/agent/check/{verb}/{cid:path}",
                    self._guard(self._check_verb),
                    methods=["PUT"],
                ),
                Route("/v1/health/service/{name:path}", self._guard(self._health)),
                Route("/v1/health/state/{state}", self._guard(self._health_state)),
                Route("/v1/catalog/services", self._guard(self._catalog)),
                Route("/v1/status/leader", self._guard(self._leader)),
                Route(
                    "/v1/kv/{key:path}",
                    self._guard(self._kv),
                    methods=["GET", "PUT", "DELETE"],
                ),
            ]
        )

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def addr(self) -> str:
        """``host:port``, the form CONSUL_HTTP_ADDR takes."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """``http://host:port``, or ``https://`` when serving TLS."""
        return f"{'https' if self.tls else 'http'}://{self.addr}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def reserve(self, port: int = 0) -> int:
        """Hold the port without listening: connections are refused, as with Consul down."""
        if self._sock is None:
            # proto=TCP so asyncio turns Nagle off on accepted connections, as Go's net/http
            # does; otherwise every response body waits ~40 ms for a delayed ACK.
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, port or self.port))
            self._sock = sock
            self.port = sock.getsockname()[1]
        return self.port

    def reset(self) -> None:
        """Forget everything, as a dev-mode agent does on restart."""
        for c in getattr(self, "checks", {}).values():
            if c.timer is not None:
                c.timer.cancel()
        self.index = 1
        self.kv_table_index = 0
        self.catalog_index = 1
        self.kv: dict[str, KVEntry] = {}
        self.tombstones: dict[str, int] = {}
        self.services: dict[str, Service] = {}
        self.checks: dict[str, Check] = {}

    async def start(self, port: int = 0) -> FakeConsul:
        if self._server is not None:
            return self
        self.reserve(port)
        assert self._sock is not None
        sock, self._sock = self._sock, None
        config = uvicorn.Config(self.app, lifespan="off", log_config=None, access_log=False)
        config.load()
        config.ssl = None if self.tls is None else _server_context(self.tls, self.tls_refusals)
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        self._server = server
        self._down = False
        for c in self.checks.values():
            self._arm(c)
        self._reaper = asyncio.create_task(self._reap())
        return self

    async def stop(self) -> None:
        """Die like a crashed agent: cut every connection, keep the port and the state."""
        server, self._server = self._server, None
        if server is None:
            return
        self._down = True
        for srv in server.servers:
            srv.close()
        for conn in list(server.server_state.connections):
            transport = getattr(conn, "transport", None)
            if transport is not None:
                transport.abort()
        self._notify()
        pending = list(server.server_state.tasks)
        if pending:
            _, late = await asyncio.wait(pending, timeout=2.0)
            for task in late:
                task.cancel()
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for c in self.checks.values():
            if c.timer is not None:
                c.timer.cancel()
        self.reserve(self.port)

    async def close(self) -> None:
        await self.stop()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def __aenter__(self) -> FakeConsul:
        return await self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- state changes ---------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _bump(self) -> int:
        self.index += 1
        self._notify()
        return self.index

    def _arm(self, check: Check) -> None:
        if check.timer is not None:
            check.timer.cancel()
        loop = asyncio.get_running_loop()
        check.timer = loop.call_later(check.ttl_s, self._expire, check)

    def _expire(self, check: Check) -> None:
        check.timer = None
        if self.checks.get(check.id) is check and check.status != "critical":
            self._set_status(check, "critical", "TTL expired")

    def _set_status(self, check: Check, status: str, output: str) -> None:
        output = output.encode()[:MAX_OUTPUT_BYTES].decode(errors="ignore")
        if status == "critical" and check.status != "critical":
            check.critical_since = asyncio.get_running_loop().time()
        elif status != "critical":
            check.critical_since = None
        if (status, output) != (check.status, check.output):
            check.status, check.output = status, output
            check.index = self.catalog_index = self._bump()

    def _remove_service(self, sid: str) -> None:
        self.services.pop(sid, None)
        for cid in [cid for cid, c in self.checks.items() if c.service.id == sid]:
            timer = self.checks.pop(cid).timer
            if timer is not None:
                timer.cancel()
        self.catalog_index = self._bump()

    async def _reap(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.reap_interval_s)
            now = loop.time()
            for c in list(self.checks.values()):
                if c.deregister_after_s is None or c.critical_since is None:
                    continue
                if now - c.critical_since > max(c.deregister_after_s, self.min_deregister_s):
                    self._remove_service(c.service.id)

    # --- HTTP plumbing ---------------------------------------------------------------------

    def _guard(self, handler: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            self.requests += 1
            if self.token is not None:
                given = request.headers.get("x-consul-token") or request.query_params.get("token")
                auth = request.headers.get("authorization", "")
                if not given and auth.lower().startswith("bearer "):
                    given = auth[7:].strip()
                if not given:
                    return PlainTextResponse("Permission denied", status_code=403)
                if given != self.token:
                    return PlainTextResponse("ACL not found", status_code=403)
            try:
                return await handler(request)
            except ApiError as exc:
                return PlainTextResponse(exc.text, status_code=exc.status)

        return guarded

    async def _block(self, request: Request, current: Callable[[], int]) -> int:
        """Hang while the index is <= ?index, up to ?wait plus jitter; return the index."""
        q = request.query_params
        if "index" not in q:
            return current()
        try:
            since = int(q["index"])
        except ValueError:
            raise ApiError(400, "Invalid index") from None
        wait = parse_duration(q["wait"]) if q.get("wait") else DEFAULT_WAIT_S
        wait = min(wait, MAX_WAIT_S)
        wait += random.uniform(0, wait / 16)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        self.blocking += 1
        try:
            while current() <= since and not self._down:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), remaining)
        finally:
            self.blocking -= 1
        return current()

    @staticmethod
    def _json(data: Any, index: int | None = None, status: int = 200) -> Response:
        headers = {"X-Consul-Knownleader": "true", "X-Consul-Lastcontact": "0"}
        if index is not None:
            headers["X-Consul-Index"] = str(max(index, 1))
        return JSONResponse(data, status_code=status, headers=headers)

    @staticmethod
    async def _body(request: Request) -> dict[str, Any]:
        try:
            return _norm(json.loads(await request.body() or b"{}"))
        except json.JSONDecodeError as exc:
            raise ApiError(400, f"Request decode failed: {exc}") from None

    # --- agent -----------------------------------------------------------------------------

    async def _register(self, request: Request) -> Response:
        f = await self._body(request)
        name = f.get("name")
        if not name or not isinstance(name, str):
            raise ApiError(400, "Missing service name")
        sid = str(f.get("id") or name)
        meta = {str(k): str(v) for k, v in (f.get("meta") or {}).items()}
        for k, v in meta.items():
            if not _META_KEY.match(k) or k.startswith("consul-") or len(v) > 512:
                raise ApiError(400, f"Invalid Service Meta: invalid key or value {k!r}")
        if len(meta) > 64:
            raise ApiError(400, "Invalid Service Meta: too many pairs")
        defs = ([f["check"]] if f.get("check") else []) + list(f.get("checks") or [])
        service = Service(
            id=sid,
            name=name,
            tags=[str(t) for t in f.get("tags") or []],
            meta=meta,
            address=str(f.get("address") or ""),
            port=int(f.get("port") or 0),
            index=0,
        )
        checks = [self._check_from(_norm(d), service, i, len(defs)) for i, d in enumerate(defs)]
        if sid in self.services:
            self._remove_service(sid)
        service.index = self.catalog_index = self._bump()
        self.services[sid] = service
        now = asyncio.get_running_loop().time()
        for c in checks:
            c.index = service.index
            c.critical_since = now if c.status == "critical" else None
            self.checks[c.id] = c
            self._arm(c)
        return Response(status_code=200)

    @staticmethod
    def _check_from(f: dict[str, Any], service: Service, i: int, n: int) -> Check:
        if not f.get("ttl"):
            raise ApiError(400, "this fake Consul supports only TTL checks")
        status = str(f.get("status") or "critical")
        if status not in STATUSES:
            raise ApiError(400, f'Invalid check status: "{status}"')
        dereg = f.get("deregistercriticalserviceafter")
        default_id = f"service:{service.id}" if n == 1 else f"service:{service.id}:{i + 1}"
        return Check(
            id=str(f.get("checkid") or f.get("id") or default_id),
            name=str(f.get("name") or f"Service '{service.name}' check"),
            service=service,
            ttl_s=parse_duration(f["ttl"]),
            status=status,
            notes=str(f.get("notes") or ""),
            deregister_after_s=parse_duration(dereg) if dereg else None,
        )

    async def _deregister(self, request: Request) -> Response:
        sid = request.path_params["sid"]
        if sid not in self.services:
            raise ApiError(404, f'Unknown service ID "{sid}". Ensure that the service ID is passed')
        self._remove_service(sid)
        return Response(status_code=200)

    async def _agent_services(self, request: Request) -> Response:
        return self._json({sid: s.json() for sid, s in self.services.items()})

    async def _agent_service(self, request: Request) -> Response:
        s = self.services.get(request.path_params["sid"])
        if s is None:
            raise ApiError(404, "unknown service ID")
        return self._json(s.json())

    async def _agent_checks(self, request: Request) -> Response:
        return self._json({cid: c.json() for cid, c in self.checks.items()})

    async def _check_verb(self, request: Request) -> Response:
        verb, cid = request.path_params["verb"], request.path_params["cid"]
        verbs = {"pass": "passing", "warn": "warning", "fail": "critical"}
        if verb == "update":
            f = await self._body(request)
            status, output = str(f.get("status") or ""), str(f.get("output") or "")
            if status not in STATUSES:
                raise ApiError(400, f'Invalid check status: "{status}"')
        elif verb in verbs:
            status, output = verbs[verb], request.query_params.get("note", "")
        else:
            raise ApiError(404, "404 page not found")
        check = self.checks.get(cid)
        if check is None:
            raise ApiError(404, f'Unknown check ID "{cid}". Ensure that the check ID is passed')
        self._set_status(check, status, output)
        self._arm(check)
        return Response(status_code=200)

    # --- health and catalog ----------------------------------------------------------------

    async def _health(self, request: Request) -> Response:
        name = request.path_params["name"]
        index = await self._block(request, lambda: self.catalog_index)
        passing = _flag(request.query_params, "passing")
        tags = request.query_params.getlist("tag")
        out = []
        for s in self.services.values():
            if s.name != name or not all(t in s.tags for t in tags):
                continue
            checks = [c for c in self.checks.values() if c.service.id == s.id]
            if passing and any(c.status != "passing" for c in checks):
                continue
            out.append(
                {
                    "Node": {"ID": "", "Node": NODE, "Address": self.host, "Datacenter": "dc1"},
                    "Service": s.json(),
                    "Checks": [NODE_CHECK] + [c.json() for c in checks],
                }
            )
        return self._json(out, index)

    async def _health_state(self, request: Request) -> Response:
        """Every check in one state (``any``: all), the node's serfHealth included."""
        state = request.path_params["state"]
        if state not in (*STATUSES, "any"):
            raise ApiError(400, f"Invalid check state: {state!r}")
        index = await self._block(request, lambda: self.catalog_index)
        checks = [NODE_CHECK] + [c.json() for c in self.checks.values()]
        return self._json([c for c in checks if state in ("any", c["Status"])], index)

    async def _catalog(self, request: Request) -> Response:
        index = await self._block(request, lambda: self.catalog_index)
        out: dict[str, list[str]] = {"consul": []}
        for s in self.services.values():
            out[s.name] = sorted(set(out.get(s.name, [])) | set(s.tags))
        return self._json(out, index)

    async def _leader(self, request: Request) -> Response:
        return self._json(f"{self.host}:8300")

    # --- KV --------------------------------------------------------------------------------

    def _kv_index(self, key: str, prefix: bool) -> int:
        def hit(k: str) -> bool:
            return k.startswith(key) if prefix else k == key

        live = [e.modify_index for k, e in self.kv.items() if hit(k)]
        dead = [i for k, i in self.tombstones.items() if hit(k)]
        return max(live + dead, default=0) or self.kv_table_index or 1

    async def _kv(self, request: Request) -> Response:
        key: str = request.path_params["key"]
        q = request.query_params
        if request.method == "PUT":
            return await self._kv_put(request, key)
        if request.method == "DELETE":
            return self._kv_delete(key, q)
        recurse, keys_only = _flag(q, "recurse"), "keys" in q
        if not key and not (recurse or keys_only):
            raise ApiError(400, "Missing key name")
        index = await self._block(request, lambda: self._kv_index(key, recurse or keys_only))
        if keys_only:
            sep = q.get("separator", "")
            names: set[str] = set()
            for k in self.kv:
                if k.startswith(key):
                    cut = k.find(sep, len(key)) if sep else -1
                    names.add(k if cut < 0 else k[: cut + len(sep)])
            if not names:
                return self._json(None, index, 404)
            return self._json(sorted(names), index)
        entries = [
            e for k, e in sorted(self.kv.items()) if (k.startswith(key) if recurse else k == key)
        ]
        if not entries:
            return Response(status_code=404, headers={"X-Consul-Index": str(index)})
        if _flag(q, "raw") and not recurse:
            return Response(entries[0].value, headers={"X-Consul-Index": str(index)})
        return self._json([e.json() for e in entries], index)

    async def _kv_put(self, request: Request, key: str) -> Response:
        q = request.query_params
        if not key:
            raise ApiError(400, "Missing key name")
        if "acquire" in q or "release" in q:
            raise ApiError(400, "this fake Consul has no sessions")
        value = await request.body()
        if len(value) > MAX_VALUE_BYTES:
            raise ApiError(413, f"Value exceeds {MAX_VALUE_BYTES} byte limit")
        try:
            flags = int(q.get("flags", "0"))
            cas = int(q["cas"]) if "cas" in q else None
        except ValueError:
            raise ApiError(400, "Invalid flags or cas") from None
        old = self.kv.get(key)
        if cas is not None and (old.modify_index if old else 0) != cas:
            return self._json(False)
        idx = self.kv_table_index = self._bump()
        self.kv[key] = KVEntry(key, value, flags, old.create_index if old else idx, idx)
        self.tombstones.pop(key, None)
        return self._json(True)

    def _kv_delete(self, key: str, q: Mapping[str, str]) -> Response:
        if _flag(q, "recurse"):
            doomed = [k for k in self.kv if k.startswith(key)]
        else:
            if "cas" in q:
                old = self.kv.get(key)
                if old is None or str(old.modify_index) != q["cas"]:
                    return self._json(False)
            doomed = [key] if key in self.kv else []
        idx = self.kv_table_index = self._bump()
        for k in doomed:
            del self.kv[k]
            self.tombstones[k] = idx
        return self._json(True)


async def _serve(args: argparse.Namespace) -> None:
    tls = None
    if args.cert:
        tls = TLSFiles(Path(args.cert), Path(args.key or args.cert), args.client_ca)
    fake = FakeConsul(
        host=args.host,
        token=args.token,
        reap_interval_s=args.reap_interval,
        min_deregister_s=args.min_deregister,
        tls=tls,
    )
    await fake.start(args.port)
    print(f"fake consul on {fake.url} (CONSUL_HTTP_ADDR={fake.url})", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await fake.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="A fake Consul agent for manual testing.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8500)
    parser.add_argument("--token", default=None, help="require this ACL token")
    parser.add_argument("--reap-interval", type=float, default=30.0, help="seconds")
    parser.add_argument("--min-deregister", type=float, default=60.0, help="seconds")
    parser.add_argument("--cert", help="serve HTTPS with this PEM certificate")
    parser.add_argument("--key", help="its PEM private key (default: in --cert)")
    parser.add_argument(
        "--client-ca", type=Path, help="require client certificates signed by this CA"
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()
