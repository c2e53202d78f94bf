"""Training throughput of the `tiny` probe on this CPU: tokens/s for one optimizer step (forward, backward,
AdamW) at a few (seq_len, micro batch) shapes, and forward-only (evaluation) tokens/s.

The tiny preset has 0.4M parameters in its blocks but 12.6M in the (untied) embedding + lm_head over
SmolLM2's 49,152-token vocabulary, so the head matmul dominates; tokens/s barely depends on seq_len.
MFU is not reported: a CPU's peak FLOP/s is unknown (peak_flops=None), we print achieved GFLOP/s instead.

    python benchmarks/bench_trainer_cpu.py [--steps 5] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from trainer.model import PhiModel  # noqa: E402
from trainer.presets import ModelConfig  # noqa: E402
from trainer.recipes import RECIPES  # noqa: E402
from trainer.train import param_groups  # noqa: E402

VOCAB = 49152  # SmolLM2


def bench(seq_len: int, micro: int, steps: int) -> tuple[float, float, float]:
    torch.manual_seed(0)
    r = RECIPES["phi-1"]
    model = PhiModel(ModelConfig.from_name("tiny", vocab_size=VOCAB, max_seq_len=seq_len, dropout=r.dropout,
                                           attn_dropout=r.dropout))
    opt = torch.optim.AdamW(param_groups(model, r.weight_decay), lr=r.lr, betas=r.betas, eps=r.eps)
    x = torch.randint(0, VOCAB, (micro, seq_len + 1))
    inp, tgt = x[:, :-1], x[:, 1:]

    def step() -> None:
        _, loss = model(inp, tgt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    model.train()
    step()  # warm-up
    t = time.perf_counter()
    for _ in range(steps):
        step()
    train_tps = steps * micro * seq_len / (time.perf_counter() - t)
    model.eval()
    with torch.no_grad():
        model(inp)
        t = time.perf_counter()
        for _ in range(steps):
            model(inp)
        eval_tps = steps * micro * seq_len / (time.perf_counter() - t)
    return train_tps, eval_tps, model.flops_per_token(seq_len) * train_tps / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = ModelConfig.from_name("tiny", vocab_size=VOCAB)
    with torch.device("meta"):
        m = PhiModel(cfg)
    print(f"tiny preset: {cfg.n_layer} layers, d {cfg.d_model}, {cfg.n_head} heads x {cfg.head_dim}; "
          f"{m.num_params(False) / 1e6:.1f}M params ({m.num_params() / 1e6:.1f}M non-embedding); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus")
    print(f"{'seq_len':>7} {'micro':>5} {'train tok/s':>12} {'eval tok/s':>11} {'train GFLOP/s':>14}  MFU")
    for seq_len, micro in [(128, 8), (128, 16), (256, 8), (512, 4)]:
        tr, ev, gf = bench(seq_len, micro, a.steps)
        print(f"{seq_len:>7} {micro:>5} {tr:>12,.0f} {ev:>11,.0f} {gf:>14.1f}  n/a (CPU peak unknown)")


if __name__ == "__main__":
    main()
