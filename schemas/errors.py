"""Morgan's errors. Each one says whether trying again can help.

    MorganError(message, *, retryable)      base; ``retryable`` has no default
    ├── MessageError                        malformed bytes/fields: never retryable
    ├── BadInput                            a well-formed request we refuse: never retryable
    ├── Unavailable                         a dependency is down or busy: retryable
    ├── Handoff                             release the work to another worker now: retryable
    └── Superseded                          another worker owns this work now: drop it silently

The processor runtime alone maps ``retryable`` to nak-with-backoff or term.
"""

from __future__ import annotations


class MorganError(Exception):
    def __init__(self, message: str, *, retryable: bool, code: str = "internal") -> None:
        super().__init__(message)
        self.retryable = retryable
        self.code = code


class BadInput(MorganError):
    def __init__(self, message: str, *, code: str = "bad_input") -> None:
        super().__init__(message, retryable=False, code=code)


class Unavailable(MorganError):
    def __init__(self, message: str, *, code: str = "unavailable") -> None:
        super().__init__(message, retryable=True, code=code)


class Handoff(MorganError):
    """Not a failure: this worker is stopping and another should carry on at once."""

    def __init__(self, message: str = "worker stopping") -> None:
        super().__init__(message, retryable=True, code="handoff")


class Superseded(MorganError):
    """Not a failure: this worker lost the work to another (it was cut off, not dead).

    The runtime neither acks nor naks: the message is the new owner's now. Unless
    ``obsolete``: the new owner took over with another message (a second claim for the
    same session), and ours is acknowledged, or its redelivery would take the work back
    and the two messages would take it from each other for ever.
    """

    def __init__(
        self, message: str = "another worker owns this now", *, obsolete: bool = False
    ) -> None:
        super().__init__(message, retryable=False, code="superseded")
        self.obsolete = obsolete
