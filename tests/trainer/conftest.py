"""Shared fixtures: the real SmolLM2 tokenizer and a small real corpus (Python stdlib sources)."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tok():
    from trainer.tokenize import load_tokenizer

    return load_tokenizer("smollm2")


@pytest.fixture(scope="session")
def stdlib_docs() -> list[tuple[str, str]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if 2_000 < p.stat().st_size < 40_000)[:60]
    return [(p.name, p.read_text(errors="replace")) for p in files]


@pytest.fixture(scope="session")
def token_dir(tmp_path_factory, tok, stdlib_docs) -> Path:
    from trainer.data import pack_documents

    out = tmp_path_factory.mktemp("tokens")
    pack_documents(stdlib_docs, out, tok, seq_len=64, val_fraction=0.15, seed=0)
    return out


@pytest.fixture(scope="session")
def trained_probe(tmp_path_factory, token_dir) -> tuple[Path, dict]:
    """A tiny probe trained for 30 steps of 4 x 64 tokens (dropout on, phi-1 recipe)."""
    from trainer.train import TrainConfig, train_probe

    out = tmp_path_factory.mktemp("probe")
    cfg = TrainConfig(preset="tiny", seq_len=64, batch_size=4, micro_batch_size=4, max_tokens=30 * 4 * 64,
                      seed=0, log_every=1000)
    return out, train_probe(token_dir, out, cfg, verbose=False)
