"""The processor kinds Morgan ships; each is one module with a ``SPEC``."""

from __future__ import annotations

import importlib

from processors.spec import Spec

KIND_MODULES = {
    "vad": "processors.vad",
    "stt": "processors.stt",
    "llm": "processors.llm",
    "tts": "processors.tts",
}


def load_spec(kind: str) -> Spec:
    if kind not in KIND_MODULES:
        raise SystemExit(f"unknown processor kind {kind!r}; choose from {sorted(KIND_MODULES)}")
    spec: Spec = importlib.import_module(KIND_MODULES[kind]).SPEC
    return spec
