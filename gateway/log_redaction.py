"""Keep secrets out of the gateway's logs.

uvicorn writes the path with its query string to the access log (HTTP) and to
``uvicorn.error`` (WebSocket handshakes), so ``/ws?api_key=...`` would land in clear
text; at DEBUG the websockets library also logs every handshake header, Authorization
included. ``RedactSecrets`` rewrites such records before any handler sees them:

    /ws?api_key=s3cret          -> /ws?api_key=***
    Authorization: Bearer s3cret -> Authorization: ***

``install()`` puts it on the loggers uvicorn and websockets write to; it is idempotent.
"""

from __future__ import annotations

import logging
import re

SECRET_PARAMS = r"api[_-]?key|access[_-]?token|resume[_-]?token|token|password|secret"
SECRET_HEADERS = r"authorization|proxy-authorization|cookie|set-cookie|x-api-key"

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


def install(loggers: tuple[str, ...] = LOGGERS) -> None:
    """Add one ``RedactSecrets`` to each named logger (records are filtered where they are
    made, so every handler and every propagated copy gets the clean text)."""
    for name in loggers:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())
