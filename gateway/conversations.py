"""A user's conversations and memory over HTTP (docs/protocol.md, "Conversations").

    GET    /api/conversations                    the caller's conversations, newest first
                                                 (``limit``, ``before`` = the page's
                                                 ``next`` cursor)
    GET    /api/conversations/{id}               its messages, with timings and workers
    POST   /api/conversations/{id}/resume        a fresh resume token, to continue it by
                                                 voice (``session.start``) or text
                                                 (``POST /api/text``)
    DELETE /api/conversations/{id}               deletes it (history and cached context)
    DELETE /api/users/{id}/memory                forgets the user (``me``: the caller's):
                                                 history, cached context and long-term
                                                 memories

Every route takes the API key and acts for its user (``auth.caller_of``, as the app
admitted the request); another user's conversation is answered as unknown (404),
another user's memory is 403.
"""

from __future__ import annotations

import logging
from typing import Any

from nats.errors import Error as NatsError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway import auth
from gateway.errors import error_response
from gateway.state import Gateway
from gateway.stores import NoHistory
from schemas import BadInput, Forget, Unavailable
from store import recall
from streams import bus, definitions

log = logging.getLogger("morgan.gateway.conversations")
PAGE = 20
MAX_PAGE = 100


def user_of(request: Request, gw: Gateway) -> str:
    return auth.caller_of(request).user


async def list_conversations(
    request: Request, gw: Gateway, limit: int, before: float | None
) -> Response:
    async def answer() -> Response:
        found = await (await gw.stores.reader()).conversations(
            user_of(request, gw), limit=limit, before=before
        )
        page = [c.to_json() for c in found]
        cursor = found[-1].last_turn_at if len(found) == limit else None
        return JSONResponse({"conversations": page, "next": cursor})

    return await _guarded(gw, answer)


async def get_conversation(request: Request, gw: Gateway, sid: str) -> Response:
    async def answer() -> Response:
        found = await (await gw.stores.reader()).conversation(user_of(request, gw), sid)
        if found is None:
            return _unknown()
        return JSONResponse(found.to_json())

    return await _guarded(gw, answer)


async def resume_conversation(request: Request, gw: Gateway, sid: str) -> Response:
    """A new resume token for one of the caller's conversations (the old one stops working)."""

    async def answer() -> Response:
        user = user_of(request, gw)
        if await (await gw.stores.reader()).owner_of(sid) != user:
            return _unknown()
        token = await gw.book.reissue(sid, user)
        return JSONResponse({"session_id": sid, "resume_token": token})

    return await _guarded(gw, answer)


async def delete_conversation(request: Request, gw: Gateway, sid: str) -> Response:
    async def answer() -> Response:
        user = user_of(request, gw)
        if not await (await gw.stores.writer()).delete_conversation(user, sid):
            return _unknown()
        await gw.stores.cache.forget([sid], user)
        await _drop_recalled(gw, [sid])
        await _tell_workers(gw, Forget(user, sid))
        return Response(status_code=204)

    return await _guarded(gw, answer)


async def forget_user(request: Request, gw: Gateway, user: str) -> Response:
    """Everything Morgan keeps of ``user`` (``me``: the caller), who must be the caller:
    rows, keys, vectors."""
    user = user_of(request, gw) if user == "me" else user
    if user != user_of(request, gw):
        return error_response(403, "forbidden", "a key may only forget its own user")

    async def answer() -> Response:
        sids = await (await gw.stores.writer()).forget_user(user)
        await gw.stores.cache.forget(sids, user)
        await _drop_recalled(gw, sids)
        ask = recall.over_bus(gw.nc, gw.settings.prefix)
        memories = await recall.forget(ask, user) if gw.settings.long_term_memory else 0
        await _tell_workers(gw, Forget(user))
        body = {"user": user, "conversations": len(sids), "memories": memories}
        return JSONResponse(body)

    return await _guarded(gw, answer)


async def _drop_recalled(gw: Gateway, sids: list[str]) -> None:
    """The memories stored for the sessions' next turns (``MORGAN_RECALLED``)."""
    kv = await definitions.key_value(gw.js, gw.settings, definitions.RECALLED)
    for sid in sids:
        await kv.delete(definitions.kv_key(sid))


async def _tell_workers(gw: Gateway, message: Forget) -> None:
    """Every worker drops what it holds of the user in memory (LLM context, L1)."""
    await bus.publish_core(gw.nc, f"{gw.settings.prefix}.control.forget", message)


async def _guarded(gw: Gateway, answer: Any) -> Response:
    """``answer()``, or the error a missing or unreachable store means."""
    retry = {"Retry-After": str(gw.settings.retry_after_s)}
    try:
        response: Response = await answer()
        return response
    except NoHistory:
        return error_response(503, "no_history", "this Morgan keeps no history (no database)")
    except BadInput as exc:  # a value the database refuses (the routes' checks come first)
        return error_response(422, "bad_request", str(exc))
    except Unavailable as exc:
        return error_response(503, "unavailable", str(exc), headers=retry)
    except (NatsError, TimeoutError) as exc:
        return error_response(503, "unavailable", f"the message bus: {exc!r}", headers=retry)


def _unknown() -> JSONResponse:
    return error_response(404, "unknown_conversation", "no conversation with this id for this key")
