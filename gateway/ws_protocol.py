"""uvicorn's WebSocket protocol (websockets sans-I/O), minus one crash a client can cause.

A text frame that is not UTF-8 makes uvicorn close the connection with 1007, as
RFC 6455 says. But if more frames of that client were in the same read (a second
bad one, say), uvicorn tries to close the closing connection again: websockets
raises ``InvalidState`` out of ``data_received``, and asyncio logs a fatal error
with two tracebacks. Here, messages that complete after the connection started
closing are dropped, as the peer's close handshake would drop them anyway.

    uvicorn.Config(app, ws=ClosingAwareWebSocket, ...)
"""

from __future__ import annotations

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State


class ClosingAwareWebSocket(WebSocketsSansIOProtocol):
    def send_receive_event_to_app(self) -> None:
        if self.conn.state is not State.OPEN:  # closing (1007, 1009 ...): nobody reads it
            self.frames = []
            return
        super().send_receive_event_to_app()
