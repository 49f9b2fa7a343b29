"""Who may continue a session: the key that opened it, holding its resume secret.

A session id is no secret (it names consumers, subjects and KV keys any operator
sees), so continuing a session (a WebSocket resume, or ``session_id`` on
``POST /api/text``) takes two more things: the resume token handed out once with
the new session (or reissued for a conversation of the user's history), and a key
of the user who opened it (``auth.principal``). The book keeps, per
session, a hash of each in the NATS KV bucket ``MORGAN_SESSIONS``, so any
gateway can check a resume; entries live as long as the session's events.
A wrong token, another key's session and an unknown id get the same answer.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from gateway.protocol import ProtocolError
from streams import definitions
from streams.settings import Settings

BUCKET = definitions.SESSIONS
TOKEN_BYTES = 24
"""Entropy of a resume token (32 URL-safe characters)."""


def unknown_session() -> ProtocolError:
    return ProtocolError(
        "unknown_session", "no session with this id and resume token for this API key"
    )


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class SessionBook:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext, settings: Settings) -> SessionBook:
        return cls(await definitions.key_value(js, settings, definitions.SESSIONS))

    async def new_session(self, sid: str, principal: str) -> str:
        """Record a new session for ``principal``; returns its resume token."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        entry = {"owner": principal, "token": _digest(token)}
        await self.kv.create(sid, json.dumps(entry).encode())
        return token

    async def reissue(self, sid: str, principal: str) -> str:
        """A new resume token for ``principal``'s session ``sid`` (the caller checked that
        it is theirs, e.g. in the history); the old token stops working."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        entry = {"owner": principal, "token": _digest(token)}
        await self.kv.put(sid, json.dumps(entry).encode())
        return token

    async def check(self, sid: str, token: str, principal: str) -> None:
        """Let ``principal`` continue ``sid`` with ``token``, or raise ``unknown_session``."""
        try:
            entry = await self.kv.get(sid)
        except KeyNotFoundError:
            raise unknown_session() from None
        try:
            record = json.loads(entry.value or b"")
            owner, digest = str(record["owner"]), str(record["token"])
        except (ValueError, KeyError, TypeError):
            raise unknown_session() from None
        same_owner = hmac.compare_digest(owner, principal)
        same_token = hmac.compare_digest(digest, _digest(token))
        if not (same_owner and same_token):
            raise unknown_session()
