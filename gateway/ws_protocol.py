"""uvicorn's WebSocket protocol (websockets sans-I/O), minus what a client can make of it.

A text frame that is not UTF-8 makes uvicorn close the connection with 1007, as
RFC 6455 says. But if more frames of that client were in the same read (a second
bad one, say), uvicorn tries to close the closing connection again: websockets
raises ``InvalidState`` out of ``data_received``, and asyncio logs a fatal error
with two tracebacks. Here, messages that complete after the connection started
closing are dropped, as the peer's close handshake would drop them anyway.

A client that stops reading fills the socket, then uvicorn's write buffer (64 KiB),
after which every send waits until it reads again: the close too, so the gateway
could never let go of such a client (gateway/session.py closes it with 4008). Here a
close is written at once, behind what the client has not read yet, and every close
that is not answered within ``CLOSE_TIMEOUT_S`` aborts the connection: plain
``transport.close()`` would wait for the unread bytes to drain, for ever.

    uvicorn.Config(app, ws=ClosingAwareWebSocket, ...)
"""

from __future__ import annotations

from typing import Any

from uvicorn._types import ASGISendEvent
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

CLOSE_TIMEOUT_S = 10.0
"""How long a close waits for the client's answer before the connection is cut, seconds
(uvicorn's own value)."""


class ClosingAwareWebSocket(WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.close_timeout = CLOSE_TIMEOUT_S

    def send_receive_event_to_app(self) -> None:
        if self.conn.state is not State.OPEN:  # closing (1007, 1009 ...): nobody reads it
            self.frames = []
            return
        super().send_receive_event_to_app()

    async def send(self, message: ASGISendEvent) -> None:
        if message["type"] == "websocket.close" and self._stalled():
            self._close_stalled(message.get("code", 1000), message.get("reason") or "")
            return
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body"):
            # The handshake ended in the gateway's refusal (401, 403, 429, 503): answered,
            # not failed; uvicorn would log an ERROR for every refused client.
            self.handshake_complete = True
        if message["type"] == "websocket.close" and self.close_timer is not None:
            self.close_timer.cancel()  # uvicorn's timer only closes, which waits for a drain
            self.close_timer = self.loop.call_later(self.close_timeout, self.transport.abort)

    def _stalled(self) -> bool:
        """Open, and writes wait for the peer to read (the buffer is past its high mark)."""
        return (
            not self.writable.is_set()
            and self.handshake_complete
            and self.initial_response is None
            and not self.close_sent
            and not self.disconnected
            and not self.transport.is_closing()
            and self.conn.state is State.OPEN
        )

    def _close_stalled(self, code: int, reason: str) -> None:
        """uvicorn's close without the wait: the close frame queues behind the unread
        bytes; the connection is aborted unless the peer answers within close_timeout."""
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.conn.send_close(code, reason)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(self.close_timeout, self.transport.abort)
