"""Keep secrets, and clients' mistakes, out of the gateway's error log.

uvicorn writes the path with its query string to the access log (HTTP) and to
``uvicorn.error`` (WebSocket handshakes), so ``/ws?api_key=...`` would land in clear
text; at DEBUG the websockets library also logs every handshake header, Authorization
included. ``RedactSecrets`` rewrites such records before any handler sees them:

    /ws?api_key=s3cret          -> /ws?api_key=***
    Authorization: Bearer s3cret -> Authorization: ***

``QuietClientFaults`` turns what uvicorn logs as an error with a traceback, though
the client caused it and was answered correctly, into one INFO line: a WebSocket text
frame that is not UTF-8 (closed with 1007, as RFC 6455 says). Any client could fill
the log with those otherwise.

``install()`` puts both on the loggers uvicorn writes to; it is idempotent.
"""

from __future__ import annotations

import logging
import re

SECRET_PARAMS = r"api[_-]?key|access[_-]?token|resume[_-]?token|token|ticket|password|secret"
SECRET_HEADERS = (
    r"authorization|proxy-authorization|cookie|set-cookie|x-api-key|sec-websocket-protocol"
)

_QUERY = re.compile(rf"(?i)([?&;](?:{SECRET_PARAMS})=)[^&;#\s\"']*")
_JSON = re.compile(rf"(?i)(\"(?:{SECRET_PARAMS})\"\s*:\s*\")[^\"]*")
_HEADER = re.compile(rf"(?im)^([<> ]*(?:{SECRET_HEADERS})\s*:\s*).*$")
LOGGERS = ("uvicorn.access", "uvicorn.error")


def redact(text: str) -> str:
    """``text`` with secret query values, JSON string values and header values as ***."""
    text = _QUERY.sub(r"\1***", text)
    text = _JSON.sub(r"\1***", text)
    return _HEADER.sub(r"\1***", text)


class RedactSecrets(logging.Filter):
    """Rewrites a record's message (formatted with its args) when it holds a secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


class QuietClientFaults(logging.Filter):
    """A client's protocol fault that the server already answered: INFO, no traceback."""

    MESSAGES = frozenset({"Invalid UTF-8 sequence received from client."})

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and record.getMessage() in self.MESSAGES:
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info = record.exc_text = None
        return True


def install(loggers: tuple[str, ...] = LOGGERS) -> None:
    """Add the filters to each named logger (records are filtered where they are made, so
    every handler and every propagated copy gets the clean record)."""
    for name in loggers:
        logger = logging.getLogger(name)
        for kind in (RedactSecrets, QuietClientFaults):
            if not any(isinstance(f, kind) for f in logger.filters):
                logger.addFilter(kind())
