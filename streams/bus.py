"""The NATS connection and typed publishing helpers every Morgan process uses."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import nats
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from schemas import Message, MorganError, Unavailable, encode
from streams import nats_auth
from streams.settings import Settings

log = logging.getLogger("morgan.bus")

MSG_ID = "Nats-Msg-Id"
DRAIN_S = 4
"""Longest a connection's drain waits for its subscriptions, seconds: shorter than the
5 s every caller allows ``drain()``, so nats-py ends it itself (cancelled from outside,
it logs an exception that was never retrieved)."""


async def connect(
    settings: Settings, name: str, *, connect_timeout: float = 5.0, keep_trying: bool = True
) -> Client:
    """Connect with endless reconnects across all configured servers.

    ``keep_trying=False`` fails at once when no server answers (for one-shot tools).
    """

    async def on_error(exc: Exception) -> None:
        log.warning("nats %s: %s", name, exc)

    async def on_disconnect() -> None:
        log.warning("nats %s: disconnected", name)

    async def on_reconnect() -> None:
        log.info("nats %s: reconnected", name)

    return await nats.connect(
        servers=settings.nats_urls,
        name=name,
        tls=tls_context(settings),
        nkeys_seed=settings.nats_seed_file or None,
        inbox_prefix=inbox_prefix(settings),
        connect_timeout=connect_timeout,
        reconnect_time_wait=0.5,
        max_reconnect_attempts=-1 if keep_trying else 1,
        allow_reconnect=keep_trying,
        ping_interval=settings.nats_ping_s,
        max_outstanding_pings=2,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        drain_timeout=DRAIN_S,
    )


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The client side of TLS to NATS: verify the servers against ``nats_tls_ca`` and
    present ``nats_tls_cert`` when the servers ask for a client certificate (mTLS).
    None when no CA is configured (plain TCP, or ``tls://`` URLs with system CAs)."""
    if not settings.nats_tls_ca:
        if settings.nats_tls_cert:
            raise ValueError("MORGAN_NATS_TLS_CERT needs MORGAN_NATS_TLS_CA (the servers' CA)")
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.nats_tls_ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.nats_tls_cert:
        ctx.load_cert_chain(settings.nats_tls_cert, settings.nats_tls_key or None)
    return ctx


def inbox_prefix(settings: Settings) -> str:
    """Reply subjects of this connection: ``_INBOX_<role>`` for an authenticated role, so
    the server can let each role read only its own replies (streams.nats_auth)."""
    return nats_auth.inbox(role_of(settings))


def role_of(settings: Settings) -> str:
    """The role a seed file authenticates as: its file name without ``.nk``."""
    return Path(settings.nats_seed_file).stem if settings.nats_seed_file else ""


def may_configure(settings: Settings) -> bool:
    """Whether this connection may change streams (no credentials, or the admin's)."""
    return role_of(settings) in ("", nats_auth.ADMIN)


async def publish(
    js: JetStreamContext,
    subject: str,
    msg: Message,
    *,
    msg_id: str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> None:
    """Publish to a stream; ``msg_id`` makes a retried publish a no-op (dedup)."""
    hdrs, body = encode(msg)
    if headers:
        hdrs.update(headers)
    if msg_id:
        hdrs[MSG_ID] = msg_id
    await js.publish(subject, body, headers=hdrs, timeout=timeout)


async def publish_core(
    nc: Client, subject: str, msg: Message, headers: dict[str, str] | None = None
) -> None:
    """Fire-and-forget publish (control subjects)."""
    hdrs, body = encode(msg)
    if headers:
        hdrs.update(headers)
    await nc.publish(subject, body, headers=hdrs)


SERVICE_ERROR = "Nats-Service-Error"
SERVICE_ERROR_CODE = "Nats-Service-Error-Code"


async def ask(
    nc: Client, prefix: str, kind: str, endpoint: str, body: bytes, timeout: float
) -> bytes:
    """Ask a kind's endpoint (``<prefix>.svc.<kind>.<endpoint>``, one of its workers
    answers): the reply's body. No worker, no answer in ``timeout`` or a lost connection
    is ``Unavailable``; the worker's error answer is a ``MorganError`` with its code."""
    subject = f"{prefix}.svc.{kind}.{endpoint}"
    try:
        reply = await nc.request(subject, body, timeout=timeout)
    except (NatsError, TimeoutError) as exc:
        raise Unavailable(f"{kind}.{endpoint}: no answer ({type(exc).__name__})") from exc
    headers = reply.headers or {}
    if SERVICE_ERROR_CODE in headers:
        message = headers.get(SERVICE_ERROR, "failed")
        raise MorganError(
            f"{kind}.{endpoint}: {message}", retryable=False, code=headers[SERVICE_ERROR_CODE]
        )
    return reply.data
