"""uvicorn's h11 protocol with deadlines where uvicorn waits on a client forever.

uvicorn's own timer (``timeout_keep_alive``) runs only between requests: a client that
connects and sends nothing, or half a request head, holds its connection (and a file
descriptor) forever. Two deadlines are added:

- head: a request head must be complete within MORGAN_HTTP_HEADER_TIMEOUT_S of the
  connection opening, or of the first byte of a later request on a kept-alive
  connection; otherwise the connection is closed, with a raw 408 when part of a head
  came (h11 cannot answer a request it has not read).
- discard: once a response has gone out while the client is still sending a body the
  app did not read (a 413), the rest is discarded for at most ``discard_s`` seconds,
  then the connection is closed.

Once a head is complete the head timer stops: the app reads bodies with its own
deadline (gateway/http_body.py), and a WebSocket upgrade hands the connection to the
WebSocket protocol, which no timer here touches.

    uvicorn.Config(app, http=with_timeouts(header_s=10, discard_s=10), ...)
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("morgan.gateway")


class TimedH11Protocol(H11Protocol):
    header_timeout_s: ClassVar[float] = 10.0
    """Seconds a request head may take; ``with_timeouts`` makes a class per setting."""
    discard_s: ClassVar[float] = 10.0
    """Seconds an unread body may keep coming after its response."""

    _head_timer: asyncio.TimerHandle | None = None
    _discard_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._arm_head_timer()  # the clock runs from the first byte of a head
        else:
            self._stop_head_timer()  # a whole head, an upgrade, a close
        if self.conn.their_state is not h11.SEND_BODY:
            self._stop_discard_timer()  # the unread body ended

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            self._discard_timer = self.loop.call_later(self.discard_s, self._discard_ended)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        self._stop_discard_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _stop_discard_timer(self) -> None:
        if self._discard_timer is not None:
            self._discard_timer.cancel()
            self._discard_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        partial, _ = self.conn.trailing_data
        log.debug("%s: request head not complete in %g s", self.client, self.header_timeout_s)
        if partial and self.conn.our_state is h11.IDLE:
            self.transport.write(timeout_response(self.header_timeout_s))
        self._close()

    def _discard_ended(self) -> None:
        self._discard_timer = None
        if not self.transport.is_closing() and self.conn.their_state is h11.SEND_BODY:
            log.debug("%s: unread body still coming after %g s", self.client, self.discard_s)
            self._close()

    def _close(self) -> None:
        if self.conn.our_state is not h11.ERROR:
            self.conn.send(h11.ConnectionClosed())
        self.transport.close()


def timeout_response(timeout_s: float) -> bytes:
    """A raw 408 for a connection whose request head never completed."""
    body = json.dumps(
        {"error": "timeout", "message": f"request head not received in {timeout_s:g} s"}
    ).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


def with_timeouts(*, header_s: float, discard_s: float) -> type[TimedH11Protocol]:
    """The protocol class for uvicorn's ``http=``, with these deadlines in seconds."""
    deadlines = {"header_timeout_s": header_s, "discard_s": discard_s}
    return type("TimedH11Protocol", (TimedH11Protocol,), deadlines)
