"""Which processor kinds exist: the built-in ones and those other packages install.

A package adds a kind by naming its ``Spec`` under the entry-point group
``morgan.processors`` (``name = "package.module:SPEC"`` in its pyproject.toml); after
``pip install`` it can be run with ``morgan run <name>`` and started by ``morgan up``
when ``MORGAN_KINDS`` lists it. Names are known without importing anything; a kind's
module (and its model libraries) is imported only when its spec is asked for.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Mapping
from importlib.metadata import entry_points
from types import MappingProxyType

from processors.spec import Spec

log = logging.getLogger("morgan.registry")
GROUP = "morgan.processors"
BUILT_IN = {
    "vad": "processors.vad:SPEC",
    "stt": "processors.stt:SPEC",
    "llm": "processors.llm:SPEC",
    "tts": "processors.tts:SPEC",
    "history": "processors.history:SPEC",
    "memory": "processors.memory:SPEC",
}
"""The shipped kinds (found without package metadata, so a source checkout works too)."""


class UnknownKind(LookupError):
    pass


@functools.cache
def kinds() -> Mapping[str, str]:
    """Every kind's name -> ``module:attribute`` of its Spec; built-in names win. Read
    once per process (packages installed later are found by the next process)."""
    found = {ep.name: ep.value for ep in entry_points(group=GROUP)}
    return MappingProxyType({**found, **BUILT_IN})


def spec(kind: str) -> Spec:
    """Import ``kind``'s module and return its Spec."""
    target = kinds().get(kind)
    if target is None:
        raise UnknownKind(f"unknown processor kind {kind!r}; choose from {sorted(kinds())}")
    module, _, attribute = target.partition(":")
    found = getattr(importlib.import_module(module), attribute or "SPEC")
    if not isinstance(found, Spec) or found.kind != kind:
        raise UnknownKind(f"{target} is not the Spec of kind {kind!r}")
    return found


@functools.cache
def is_tiered(kind: str) -> bool:
    """Whether ``kind``'s work is tiered gpu/cpu; a kind not installed on this host counts
    as untiered (its work goes to ``<prefix>.work.<kind>``)."""
    try:
        return spec(kind).tiered
    except UnknownKind:
        return False
    except ImportError as exc:  # installed but broken: said once, then treated as unknown
        log.error("kind %s cannot be imported (%s): its work goes untiered", kind, exc)
        return False
