from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from trainer.evaluate import split_loss
from trainer.model import PhiModel
from trainer.recipes import RECIPES
from trainer.train import TrainConfig, build_model_config, load_probe, train_probe
from trainer.data import read_meta

REPO = Path(__file__).resolve().parents[2]


def _losses(out: Path) -> list[float]:
    return [json.loads(l)["loss"] for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]


def test_loss_falls_on_real_corpus(trained_probe, token_dir):
    out, summary = trained_probe
    assert summary["steps"] == 30 and summary["tokens"] == 30 * 256
    cfg = TrainConfig(preset="tiny", seq_len=64).resolved()
    meta = read_meta(token_dir)
    torch.manual_seed(0)
    untrained = PhiModel(build_model_config(cfg, meta, RECIPES["phi-1"])).eval()
    trained, _ = load_probe(out)
    before = split_loss(untrained, token_dir, "val", 64, 8, 32, torch.device("cpu"))
    after = split_loss(trained, token_dir, "val", 64, 8, 32, torch.device("cpu"))
    assert before > 10.0                      # ~ln(49152) = 10.8 at init
    assert after < before - 1.5, (before, after)  # held-out documents, not training windows
    losses = _losses(out)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0
    assert summary["mfu"] is None and summary["peak_flops"] is None  # CPU: peak unknown
    assert summary["tokens_per_s"] > 0


def test_gradient_accumulation_matches_one_big_batch(tmp_path, token_dir):
    common = dict(preset="tiny", seq_len=32, batch_size=4, max_tokens=4 * 32 * 3, dropout=0.0, log_every=1000)
    train_probe(token_dir, tmp_path / "a", TrainConfig(micro_batch_size=4, **common), verbose=False)
    train_probe(token_dir, tmp_path / "b", TrainConfig(micro_batch_size=2, **common), verbose=False)
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert len(a) == len(b) == 3
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4


def test_schedules():
    r1, r15 = RECIPES["phi-1"], RECIPES["phi-1.5"]
    assert r1.warmup_for(36_000) == 750 and r1.warmup_for(360) == 8 and r15.warmup_for(1000) == 0
    w = r1.warmup_for(100)
    m = [r1.lr_multiplier(s, 100, w) for s in range(100)]
    assert m[0] == pytest.approx(1 / w) and m[w - 1] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(m[w - 1:], m[w:])) and m[-1] < 0.02
    assert all(r15.lr_multiplier(s, 100, 0) == 1.0 for s in range(100))
    assert (r15.lr, r15.betas, r15.eps, r15.weight_decay) == (2e-4, (0.9, 0.98), 1e-7, 0.1)


STEPS = 20  # the kill lands after step 4: 16 steps of margin for a slow or busy machine


def _train_cmd(token_dir: Path, out: Path) -> list[str]:
    sets = ["preset=tiny", "seq_len=32", "batch_size=4", "micro_batch_size=2", f"max_tokens={STEPS * 4 * 32}",
            "ckpt_every=3", "log_every=1", "seed=3"]
    return [sys.executable, "-m", "trainer.train", str(token_dir), str(out), "--set", *sets]


def test_exact_resume_after_sigkill(tmp_path, token_dir):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(_train_cmd(token_dir, full), env=env, cwd=REPO, check=True, capture_output=True)
    reference = _losses(full)
    assert len(reference) == STEPS

    proc = subprocess.Popen(_train_cmd(token_dir, killed), env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once a checkpoint exists and training has gone past it
        if (killed / "checkpoint" / "client.json").exists() and len(_losses_or_empty(killed)) >= 4:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done_before = len(_losses_complete_lines(killed))
    assert 4 <= done_before < STEPS

    r = subprocess.run(_train_cmd(token_dir, killed), env=env, cwd=REPO, check=True, capture_output=True, text=True)
    assert "resumed from" in r.stdout
    resumed = _losses(killed)
    assert len(resumed) == STEPS
    assert max(abs(a - b) for a, b in zip(reference, resumed)) < 1e-6, (reference, resumed)
    # ... and the weights at the end are the same too.
    a, _ = load_probe(full)
    b, _ = load_probe(killed)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(va, vb, atol=1e-6), k


def _losses_complete_lines(out: Path) -> list[float]:
    """After a SIGKILL the last line may be cut off mid-write: count only whole lines."""
    text = (out / "metrics.jsonl").read_text()
    return [json.loads(l)["loss"] for l in text.split("\n")[:-1] if l.strip()]


def _losses_or_empty(out: Path) -> list[float]:
    try:
        return _losses(out)
    except (FileNotFoundError, json.JSONDecodeError):
        return []
