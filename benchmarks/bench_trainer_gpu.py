"""GPU training throughput of our phi-1 vs transformers' PhiForCausalLM, same sizes, same loop.

phi-1-small (350M) at seq 2048 in bf16 by default. Rows:
  ours  + torch   : trainer/model.py, bf16 autocast, AdamW (fused), SDPA forced to its flash backend
  ours  + torch.compile (--compile)
  ours  + DeepSpeed ZeRO-2 bf16 (+ flash-attn if installed)  -- only when deepspeed is importable;
                     otherwise the table says it was skipped and why
  HF PhiForCausalLM (attn_implementation="sdpa"), the same minimal loop
MFU = (6N + 12 L T d) * tokens/s / peak, N = non-embedding params incl. lm_head, against --peak
(dense bf16: 989 TFLOP/s for H100 SXM).

    python benchmarks/bench_trainer_gpu.py [--preset phi-1-small] [--seq-len 2048] [--micro 8] [--steps 10]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from trainer.model import PhiModel  # noqa: E402
from trainer.presets import ModelConfig  # noqa: E402
from trainer.recipes import RECIPES  # noqa: E402
from trainer.train import param_groups  # noqa: E402

VOCAB = 49152


def hf_model(cfg: ModelConfig) -> torch.nn.Module:
    from transformers import PhiConfig, PhiForCausalLM

    hc = PhiConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
                   num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, max_position_embeddings=cfg.max_seq_len,
                   partial_rotary_factor=cfg.rotary_dim / cfg.head_dim, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
                   attention_dropout=cfg.attn_dropout, tie_word_embeddings=False)
    return PhiForCausalLM._from_config(hc, attn_implementation="sdpa")


def run_loop(model: torch.nn.Module, forward, args, opt=None, step_fn=None) -> tuple[float, float]:
    """Returns (tokens/s, peak memory GB) over args.steps steps after args.warmup steps."""
    r = RECIPES["phi-1"]
    if opt is None:
        opt = torch.optim.AdamW(param_groups(model, r.weight_decay), lr=1e-4, betas=r.betas, eps=r.eps, fused=True)
    x = torch.randint(0, VOCAB, (args.micro, args.seq_len + 1), device="cuda")
    inp, tgt = x[:, :-1], x[:, 1:]

    def default_step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = forward(inp, tgt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step = step_fn or default_step
    torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    dt = time.perf_counter() - t
    return args.steps * args.micro * args.seq_len / dt, torch.cuda.max_memory_allocated() / 2**30


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="phi-1-small")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--micro", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--peak", type=float, default=989e12)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--skip-hf", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs CUDA")
    torch.backends.cuda.matmul.allow_tf32 = True
    from trainer.engine import sdpa_flash_fn

    cfg = ModelConfig.from_name(args.preset, vocab_size=VOCAB, max_seq_len=args.seq_len, dropout=0.1, attn_dropout=0.0)
    rows = []

    def report(name: str, attention: str, engine: str, tps: float, mem: float, flops_tok: float) -> None:
        rows.append((name, attention, engine, tps, flops_tok * tps / args.peak, mem))
        print(f"  {name}: {tps:,.0f} tok/s", flush=True)

    torch.manual_seed(0)
    ours = PhiModel(cfg).cuda()
    ours.set_attention_fn(sdpa_flash_fn())
    flops_tok = ours.flops_per_token(args.seq_len)
    fwd = lambda i, t: ours(i, t)[1]  # noqa: E731
    report("ours", "sdpa-flash", "torch", *run_loop(ours, fwd, args), flops_tok)
    if args.compile:
        comp = torch.compile(ours)
        report("ours+compile", "sdpa-flash", "torch", *run_loop(ours, lambda i, t: comp(i, t)[1], args), flops_tok)
    del ours
    torch.cuda.empty_cache()

    if importlib.util.find_spec("deepspeed"):
        from types import SimpleNamespace

        from trainer.engine import DeepSpeedRunner, flash_attention_fn

        torch.manual_seed(0)
        m = PhiModel(cfg)
        attn = "flash-attn" if importlib.util.find_spec("flash_attn") else "sdpa-flash"
        m.set_attention_fn(flash_attention_fn() if attn == "flash-attn" else sdpa_flash_fn())
        tc = SimpleNamespace(batch_size=args.micro, micro_batch_size=args.micro, dtype="bfloat16")
        runner = DeepSpeedRunner(m, RECIPES["phi-1"], 10_000, 10, tc)
        x = torch.randint(0, VOCAB, (args.micro, args.seq_len + 1), device="cuda")

        def ds_step() -> None:
            runner.forward_backward(x[:, :-1], x[:, 1:], 1)
            runner.step()

        report("ours", attn, "deepspeed-zero2-bf16", *run_loop(runner.model, None, args, step_fn=ds_step), flops_tok)
        del runner, m
        torch.cuda.empty_cache()
    else:
        rows.append(("ours", "-", "deepspeed: not installed, skipped", float("nan"), float("nan"), float("nan")))

    if not args.skip_hf:
        torch.manual_seed(0)
        hf = hf_model(cfg).cuda().train()
        n_hf = sum(p.numel() for p in hf.parameters())
        fwd_hf = lambda i, t: F.cross_entropy(hf(input_ids=i).logits.float().flatten(0, 1), t.flatten())  # noqa: E731
        report("HF PhiForCausalLM", "sdpa", "torch", *run_loop(hf, fwd_hf, args), flops_tok)
        print(f"  HF params {n_hf / 1e6:.1f}M (ours has the same architecture and count)")

    print(f"\n{args.preset}: seq {args.seq_len}, micro batch {args.micro}, bf16 autocast, "
          f"{flops_tok / 1e9:.2f} GFLOP/token, peak {args.peak / 1e12:.0f} TFLOP/s, {torch.cuda.get_device_name()}, "
          f"torch {torch.__version__}")
    print(f"{'model':<20} {'attention':<12} {'engine':<34} {'tok/s':>10} {'MFU':>6} {'mem GB':>7}")
    for name, attn, eng, tps, mfu, mem in rows:
        print(f"{name:<20} {attn:<12} {eng:<34} {tps:>10,.0f} {mfu:>6.1%} {mem:>7.1f}")


if __name__ == "__main__":
    main()
