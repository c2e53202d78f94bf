"""Which model directory the vllm engine loads, without starting vLLM."""

import pytest

from factory.config import EngineConfig
from factory.engines.vllm_engine import resolve_model_dir


def test_a_model_directory_is_used_as_is(tmp_path):
    assert resolve_model_dir(EngineConfig(kind="vllm", model_path=str(tmp_path))) == str(tmp_path)


def test_a_path_that_is_neither_a_directory_nor_a_gguf_is_a_clear_error(tmp_path):
    bad = tmp_path / "weights.bin"
    bad.write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="neither a model directory nor a .gguf file"):
        resolve_model_dir(EngineConfig(kind="vllm", model_path=str(bad)))


def test_the_default_gguf_is_converted_into_the_cache_once(tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTBOOK_FACTORY_CACHE", str(tmp_path))
    d = resolve_model_dir(EngineConfig(kind="vllm"))
    assert d.startswith(str(tmp_path / "vllm")) and (tmp_path / "vllm").exists()
    assert resolve_model_dir(EngineConfig(kind="vllm")) == d
