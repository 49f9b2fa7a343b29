"""Request bodies read with a size limit and a deadline, never more than the limit held.

    try:
        raw = await read_body(request, 64 * 1024, settings.http_body_timeout_s)
    except BodyRefused as exc:
        return exc.response()

A declared Content-Length past the limit is refused before a byte of the body is read
(a client that sent ``Expect: 100-continue`` never sends it). Otherwise the body is read
chunk by chunk and refused as soon as it passes the limit. The rest of a refused body
is discarded as it comes, for at most MORGAN_HTTP_BODY_TIMEOUT_S more seconds
(gateway/http_timeouts.py): closing at once would reset the connection under a client
still sending, and it would lose the 413. A body that stops coming gets its 408 with
``Connection: close``.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from gateway.errors import error_response


class BodyRefused(Exception):
    """A body the gateway will not take: 413 ``too_large``, 408 ``timeout``, or 400
    ``disconnected`` (no one is left to read that one)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> JSONResponse:
        close = {"Connection": "close"} if self.status != 413 else None
        return error_response(self.status, self.code, self.message, headers=close)


async def read_body(request: Request, limit_bytes: int, timeout_s: float) -> bytes:
    """The whole body, at most ``limit_bytes``, received within ``timeout_s`` seconds."""
    too_large = BodyRefused(413, "too_large", f"the body is larger than {limit_bytes} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit_bytes:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s), aclosing(request.stream()) as stream:
            async for chunk in stream:
                size += len(chunk)
                if size > limit_bytes:
                    raise too_large
                chunks.append(chunk)
    except TimeoutError:
        raise BodyRefused(408, "timeout", f"body not received in {timeout_s:g} s") from None
    except ClientDisconnect:
        message = "the client closed the connection before sending the whole body"
        raise BodyRefused(400, "disconnected", message) from None
    return b"".join(chunks)
