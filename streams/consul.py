"""A small async Consul HTTP client: the agent, health and KV calls Morgan uses.

Configured by Consul's own variables (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN,
CONSUL_HTTP_SSL, CONSUL_CACERT, CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY) through
``Settings``. Written on httpx rather than python-consul2 / py-consul; why is
in docs/consul.md. Errors:

    ConsulError(MorganError)   no answer (retryable), 5xx/408/429 (retryable), other 4xx (not)
    └── NotFound               404: unknown service, check or key
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from schemas.errors import MorganError
from streams.settings import Settings

JITTER = 1 / 16
"""Consul adds up to wait/16 to a blocking query's wait."""


class ConsulError(MorganError):
    def __init__(self, message: str, *, status: int | None) -> None:
        retryable = status is None or status >= 500 or status in (408, 429)
        super().__init__(message, retryable=retryable, code="consul")
        self.status = status


class NotFound(ConsulError):
    def __init__(self, message: str, *, index: int = 0) -> None:
        super().__init__(message, status=404)
        self.index = index
        """X-Consul-Index of the answer (KV reads carry it on a 404 too)."""


@dataclass(frozen=True)
class KVPair:
    key: str
    value: bytes
    flags: int
    create_index: int
    modify_index: int


@dataclass(frozen=True)
class ServiceEntry:
    """One instance of a service as the health endpoint reports it."""

    id: str
    name: str
    node: str
    address: str
    port: int
    tags: tuple[str, ...]
    meta: dict[str, str] = field(default_factory=dict)

    def tag(self, name: str) -> str | None:
        """The value of a ``name=value`` tag, or None."""
        return next((t.split("=", 1)[1] for t in self.tags if t.startswith(name + "=")), None)

    def tag_values(self, name: str) -> tuple[str, ...]:
        return tuple(t.split("=", 1)[1] for t in self.tags if t.startswith(name + "="))


def go_duration(seconds: float) -> str:
    """A Go duration string Consul accepts: ``10s``, ``1500ms``."""
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def _endpoint(settings: Settings) -> tuple[str, str | None]:
    """(base URL, unix socket path or None) from CONSUL_HTTP_ADDR and CONSUL_HTTP_SSL."""
    addr = settings.consul_http_addr.strip().rstrip("/")
    if addr.startswith("unix://"):
        return "http://consul", addr[len("unix://") :]
    if "://" in addr:
        return addr, None
    return ("https://" if settings.consul_http_ssl else "http://") + addr, None


def _tls(settings: Settings) -> ssl.SSLContext | bool:
    if not (settings.consul_cacert or settings.consul_client_cert):
        return True
    ctx = ssl.create_default_context(cafile=settings.consul_cacert or None)
    if settings.consul_client_cert:
        ctx.load_cert_chain(settings.consul_client_cert, settings.consul_client_key or None)
    return ctx


def _index(r: httpx.Response) -> int:
    try:
        return int(r.headers.get("X-Consul-Index", "0"))
    except ValueError:
        return 0


class Consul:
    """One agent connection. ``timeout`` bounds every call except blocking queries,
    which get their wait (plus Consul's jitter) on top."""

    def __init__(self, settings: Settings, *, timeout: float = 5.0) -> None:
        if not settings.consul_http_addr:
            raise ValueError("CONSUL_HTTP_ADDR is not set")
        base, uds = _endpoint(settings)
        headers = (
            {"X-Consul-Token": settings.consul_http_token} if settings.consul_http_token else {}
        )
        self.timeout = timeout
        self._http = httpx.AsyncClient(
            base_url=base,
            headers=headers,
            timeout=timeout,
            transport=httpx.AsyncHTTPTransport(verify=_tls(settings), uds=uds),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Consul | None:
        """A client, or None when CONSUL_HTTP_ADDR is unset."""
        return cls(settings) if settings.consul_http_addr else None

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Consul:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Any = None,
        json: Any = None,
        content: bytes | None = None,
        wait_s: float | None = None,
    ) -> httpx.Response:
        timeout = self.timeout + (wait_s * (1 + JITTER) if wait_s else 0.0)
        try:
            r = await self._http.request(
                method, path, params=params, json=json, content=content, timeout=timeout
            )
        except httpx.HTTPError as exc:
            raise ConsulError(f"consul {method} {path}: {exc!r}", status=None) from exc
        if r.status_code == 404:
            raise NotFound(f"consul {method} {path}: 404 {r.text[:200]}", index=_index(r))
        if r.status_code >= 400:
            raise ConsulError(
                f"consul {method} {path}: {r.status_code} {r.text[:200]}", status=r.status_code
            )
        return r

    @staticmethod
    def _blocking(params: dict[str, Any], index: int | None, wait_s: float | None) -> None:
        if index:
            params["index"] = str(index)
            if wait_s:
                params["wait"] = go_duration(wait_s)

    # --- agent ---

    async def register_service(self, definition: Mapping[str, Any]) -> None:
        await self._call("PUT", "/v1/agent/service/register", json=dict(definition))

    async def deregister_service(self, service_id: str) -> None:
        await self._call("PUT", f"/v1/agent/service/deregister/{quote(service_id, safe='')}")

    async def update_check(self, check_id: str, status: str, output: str = "") -> None:
        """Set a TTL check's status (passing, warning, critical); NotFound if unknown."""
        body = {"Status": status, "Output": output}
        await self._call("PUT", f"/v1/agent/check/update/{quote(check_id, safe='')}", json=body)

    # --- health and catalog ---

    async def health_service(
        self,
        name: str,
        *,
        passing: bool = True,
        tags: Iterable[str] = (),
    ) -> tuple[int, list[ServiceEntry]]:
        """(X-Consul-Index, instances of ``name``), only all-checks-passing ones by default."""
        params: dict[str, Any] = {}
        if passing:
            params["passing"] = "true"
        tag_list = list(tags)
        if tag_list:
            params["tag"] = tag_list
        r = await self._call("GET", f"/v1/health/service/{quote(name, safe='')}", params=params)
        entries = []
        for item in r.json() or []:
            svc, node = item.get("Service") or {}, item.get("Node") or {}
            entries.append(
                ServiceEntry(
                    id=str(svc.get("ID", "")),
                    name=str(svc.get("Service", "")),
                    node=str(node.get("Node", "")),
                    address=str(svc.get("Address") or node.get("Address") or ""),
                    port=int(svc.get("Port") or 0),
                    tags=tuple(svc.get("Tags") or ()),
                    meta=dict(svc.get("Meta") or {}),
                )
            )
        return _index(r), entries

    # --- KV ---

    async def kv_get(
        self,
        key: str,
        *,
        recurse: bool = False,
        index: int | None = None,
        wait_s: float | None = None,
    ) -> tuple[int, list[KVPair]]:
        """(X-Consul-Index, entries); a missing key is ``[]``, not an error."""
        params: dict[str, Any] = {"recurse": "true"} if recurse else {}
        self._blocking(params, index, wait_s)
        try:
            r = await self._call(
                "GET", f"/v1/kv/{quote(key, safe='/')}", params=params, wait_s=wait_s
            )
        except NotFound as exc:
            return exc.index, []
        pairs = [
            KVPair(
                key=str(e["Key"]),
                value=base64.b64decode(e["Value"]) if e.get("Value") else b"",
                flags=int(e.get("Flags") or 0),
                create_index=int(e.get("CreateIndex") or 0),
                modify_index=int(e.get("ModifyIndex") or 0),
            )
            for e in r.json() or []
        ]
        return _index(r), pairs

    async def kv_put(self, key: str, value: bytes | str) -> bool:
        """Write a value (raw bytes; a str is UTF-8); True when Consul stored it."""
        data = value.encode() if isinstance(value, str) else value
        r = await self._call("PUT", f"/v1/kv/{quote(key, safe='/')}", content=data)
        return bool(r.json())
