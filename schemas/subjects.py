"""Every subject name, built in one place. See docs/design.md for the table."""

from __future__ import annotations

from dataclasses import dataclass

TIERS = ("gpu", "cpu")
"""A tiered kind's work subjects end in one of these (see processors.spec.WorkQueue)."""


def check_token(value: str, what: str) -> str:
    """A subject token: non-empty, no dots, spaces or wildcards."""
    if not value or any(c in value for c in ". *>\t\r\n"):
        raise ValueError(f"bad {what} {value!r}: must be one subject token")
    return value


@dataclass(frozen=True)
class Subjects:
    prefix: str = "morgan"

    def audio_in(self, sid: str) -> str:
        return f"{self.prefix}.audio.in.{check_token(sid, 'session id')}"

    def audio_out(self, sid: str) -> str:
        return f"{self.prefix}.audio.out.{check_token(sid, 'session id')}"

    def events(self, sid: str, event_type: str = ">") -> str:
        return f"{self.prefix}.events.{check_token(sid, 'session id')}.{event_type}"

    def control(self, sid: str = "*") -> str:
        return f"{self.prefix}.control.{sid}"

    def work(self, kind: str, tier: str | None = None) -> str:
        """``<prefix>.work.<kind>``, or ``.<tier>`` after it for a tiered kind."""
        check_token(kind, "kind")
        if tier is None:
            return f"{self.prefix}.work.{kind}"
        if tier not in TIERS:
            raise ValueError(f"{kind} work tier must be one of {TIERS}, not {tier!r}")
        return f"{self.prefix}.work.{kind}.{tier}"

    def speculative(self, work_subject: str) -> str:
        """Where speculative work for ``work_subject`` goes: its own consumer, pulled only by
        workers with no confirmed work in hand."""
        return f"{work_subject}.spec"

    # stream-wide filters
    @property
    def all_audio(self) -> str:
        return f"{self.prefix}.audio.>"

    @property
    def all_work(self) -> str:
        return f"{self.prefix}.work.>"

    @property
    def all_events(self) -> str:
        return f"{self.prefix}.events.>"
