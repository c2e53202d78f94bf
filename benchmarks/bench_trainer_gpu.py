"""GPU training throughput of our phi-1 vs transformers' PhiForCausalLM, same sizes, same minimal loop.

phi-1-small (350M) at seq 2048 in bf16 by default. One process, rows in order of value, each row guarded
(an error is a row in the table, not the end of the run) and skipped once --budget-s is spent:

  0. attention kernels alone: SDPA flash / cuDNN / memory-efficient, fwd+bwd at the model's shapes, checked
     against fp32 math attention; the fastest correct one is "best" below
  1. ours + torch.compile, best SDPA backend, --micro-big (the headline row)
  2. ours eager, sdpa-flash, micro 8 (the first GPU pass's row) and ours eager, best backend, --micro-big
  3. HF PhiForCausalLM (attn_implementation="sdpa", flash backend forced where HF allows it), micro 8 and
     --micro-big, the same loop (bf16 autocast, fp32 cross-entropy, fused AdamW, grad clip)
  4. ours + DeepSpeed ZeRO-2 bf16 (only when deepspeed imports)
  5. ours + torch.compile, the other backend / micro 8 (if budget remains)

MFU = (6N + 12 L T d) * tokens/s / peak (PaLM appendix B): N = non-embedding parameters INCLUDING the
untied lm_head (its matmul is real work); the attention term counts the full T x T score matrix (causal
masking not discounted, as PaLM does); peak = --peak (989 TFLOP/s dense bf16, H100 SXM datasheet).
Each row is timed twice (two windows of --steps steps after --warmup steps); tokens/s is the mean of the
two windows and the spread between them is printed.

    python benchmarks/bench_trainer_gpu.py [--preset phi-1-small] [--seq-len 2048] [--micro-big 16]
        [--steps 10] [--warmup 3] [--budget-s 330] [--json results.json]
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from trainer.model import PhiModel  # noqa: E402
from trainer.presets import ModelConfig  # noqa: E402
from trainer.recipes import RECIPES  # noqa: E402
from trainer.train import param_groups  # noqa: E402

VOCAB = 49152  # SmolLM2's tokenizer (the trainer's default), already a multiple of 64
DEV = "cuda"   # --dry-run-cpu: "cpu", to check the flow (rows, fallbacks, table) without a GPU


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def hf_model(cfg: ModelConfig) -> torch.nn.Module:
    from transformers import PhiConfig, PhiForCausalLM

    hc = PhiConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
                   num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, max_position_embeddings=cfg.max_seq_len,
                   partial_rotary_factor=cfg.rotary_dim / cfg.head_dim, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
                   attention_dropout=cfg.attn_dropout, tie_word_embeddings=False)
    return PhiForCausalLM._from_config(hc, attn_implementation="sdpa")


def cleanup() -> None:
    gc.collect()
    if DEV == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def cuda_ms(fn: Callable[[], Any], warmup: int = 3, reps: int = 10) -> float:
    """Median milliseconds of fn() over reps, timed with CUDA events after warmup calls."""
    for _ in range(warmup):
        fn()
    times = []
    if DEV != "cuda":
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
        return sorted(times)[len(times) // 2]
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def attention_bench(cfg: ModelConfig, micro: int, seq_len: int) -> tuple[dict[str, dict[str, Any]], Optional[str]]:
    """fwd+bwd of causal attention at the model's shapes (q, k contiguous after rotary; v a strided view of
    the fused qkv output, as in the model), per SDPA backend; correctness vs fp32 math on fresh inputs."""
    from trainer.engine import sdpa_backend_fn

    B, H, T, D, C = micro, cfg.n_head, seq_len, cfg.head_dim, cfg.d_model
    res: dict[str, dict[str, Any]] = {}
    g = torch.Generator(device=DEV).manual_seed(1234)

    def inputs(b: int, t: int):
        qkv = torch.randn(b, t, 3 * C, device=DEV, dtype=torch.bfloat16, generator=g)
        q, k, v = qkv.split(C, dim=-1)
        q = q.reshape(b, t, H, D).transpose(1, 2).contiguous().requires_grad_()
        k = k.reshape(b, t, H, D).transpose(1, 2).contiguous().requires_grad_()
        v = v.view(b, t, H, D).transpose(1, 2).detach().requires_grad_()
        return q, k, v

    # causal fwd FLOPs actually needed: 2 matmuls x 2 x B H T^2 D / 2; fwd+bwd = 3.5x fwd with recompute,
    # reported against the usual 3x (fwd + 2x bwd) count
    useful = 3 * 4 * B * H * T * T * D / 2
    for name in ("flash", "cudnn", "efficient"):
        try:
            fn = sdpa_backend_fn(name)
            # correctness: small fresh inputs vs fp32 math (outputs and all three gradients)
            q, k, v = inputs(2, 512)
            go = torch.randn(2, H, 512, D, device=DEV, dtype=torch.bfloat16, generator=g)
            o = fn(q, k, v, 0.0)
            o.backward(go)
            q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
            o32 = F.scaled_dot_product_attention(q32, k32, v32, is_causal=True)
            o32.backward(go.float())
            errs = {}
            for nm, a, r in (("out", o, o32), ("dq", q.grad, q32.grad), ("dk", k.grad, k32.grad),
                             ("dv", v.grad, v32.grad)):
                errs[nm] = float((a.detach().float() - r.detach()).norm() / r.detach().norm())
            ok = all(e == e and e < 2e-2 for e in errs.values())
            q, k, v = inputs(B, T)
            go = torch.randn(B, H, T, D, device=DEV, dtype=torch.bfloat16, generator=g)

            def step() -> None:
                fn(q, k, v, 0.0).backward(go)

            ms = cuda_ms(step)
            res[name] = {"ms_fwd_bwd": ms, "tflops_causal_useful": useful / ms / 1e9, "rel_err": errs, "ok": ok}
            print(f"  attention {name:<10} fwd+bwd {ms:7.2f} ms  {useful / ms / 1e9:6.0f} TFLOP/s (causal, 3x fwd)  "
                  f"max rel err {max(errs.values()):.1e} {'OK' if ok else 'FAIL'}", flush=True)
            del q, k, v, go
        except Exception as e:  # noqa: BLE001
            res[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
            print(f"  attention {name:<10} ERROR {res[name]['error']}", flush=True)
        cleanup()
    good = [(r["ms_fwd_bwd"], n) for n, r in res.items() if r.get("ok")]
    return res, (min(good)[1] if good else None)


def kernel_breakdown(step: Callable[[], None], n: int = 3) -> dict[str, Any]:
    """Profile n steps; device time by kernel class (matmul / attention / triton-fused / optimizer / other)
    and the top kernels."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            step()
        sync()
    # order matters: cuDNN's attention kernels also carry "sm90" and "wgmma" in their names
    classes = {"attention": ("flash", "fmha", "sdpa", "attention"),
               "matmul": ("gemm", "nvjet", "cutlass", "xmma", "cublas", "sm90_"),
               "optimizer": ("adam", "multi_tensor", "foreach"),
               "triton-fused": ("triton",)}
    tot: dict[str, float] = {}
    kernels = []
    for ev in prof.key_averages():
        t = getattr(ev, "self_device_time_total", None)
        if t is None:
            t = getattr(ev, "self_cuda_time_total", 0.0)
        if not t:
            continue
        name = ev.key
        low = name.lower()
        cls = next((c for c, keys in classes.items() if any(k in low for k in keys)), "other")
        tot[cls] = tot.get(cls, 0.0) + t
        kernels.append((t, cls, name[:90]))
    total = sum(tot.values()) or 1.0
    kernels.sort(reverse=True)
    out = {"ms_per_step": total / n / 1e3, "share": {c: v / total for c, v in sorted(tot.items(), key=lambda x: -x[1])},
           "top": [{"ms_per_step": t / n / 1e3, "class": c, "name": nm} for t, c, nm in kernels[:12]]}
    print(f"    device time {out['ms_per_step']:.1f} ms/step: " +
          ", ".join(f"{c} {v:.0%}" for c, v in out["share"].items()), flush=True)
    for k in out["top"]:
        print(f"      {k['ms_per_step']:7.2f} ms  {k['class']:<12} {k['name']}", flush=True)
    return out


def run_loop(model: torch.nn.Module, forward, micro: int, seq_len: int, steps: int, warmup: int,
             step_fn=None, context=None, profile_steps: int = 0) -> dict[str, Any]:
    """Minimal training loop: bf16 autocast, forward -> loss, backward, clip 1.0, fused AdamW, zero_grad.
    Returns tokens/s (mean of two timed windows), both windows, warmup seconds, peak memory GB."""
    r = RECIPES["phi-1"]
    opt = None
    if step_fn is None:
        opt = torch.optim.AdamW(param_groups(model, r.weight_decay), lr=1e-4, betas=r.betas, eps=r.eps, fused=True)
    x = torch.randint(0, VOCAB, (micro, seq_len + 1), device=DEV)
    inp, tgt = x[:, :-1], x[:, 1:]
    ctx = context or (lambda: torch.autocast(DEV, dtype=torch.bfloat16))

    def default_step() -> None:
        with ctx():
            loss = forward(inp, tgt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step = step_fn or default_step
    if DEV == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync()
    t_warm = time.perf_counter() - t0
    windows = []
    for _ in range(2):
        t = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        windows.append(steps * micro * seq_len / (time.perf_counter() - t))
    out = {"tok_s": sum(windows) / 2, "windows": windows, "warmup_s": t_warm,
           "mem_gb": torch.cuda.max_memory_allocated() / 2**30 if DEV == "cuda" else float("nan")}
    if profile_steps:
        try:
            out["kernels"] = kernel_breakdown(step, profile_steps)
        except Exception as e:  # noqa: BLE001
            print(f"    profiler failed: {type(e).__name__}: {e}", flush=True)
    del opt
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="phi-1-small")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--micro", type=int, default=8, help="the first pass's micro batch (reference rows)")
    ap.add_argument("--micro-big", type=int, default=16, help="micro batch of the headline rows")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--peak", type=float, default=989e12)
    ap.add_argument("--budget-s", type=float, default=330.0, help="skip rows that would start after this")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--skip-ds", action="store_true")
    ap.add_argument("--json", help="write all numbers here")
    ap.add_argument("--rows", default="headline,eager,hf,ds,extra", help="which row groups to run")
    ap.add_argument("--attn", default="", help="skip the kernel race and use this SDPA backend as 'best'")
    ap.add_argument("--dry-run-cpu", action="store_true", help="check the flow on CPU (use --preset tiny)")
    args = ap.parse_args()
    global DEV
    if args.dry_run_cpu:
        DEV = "cpu"
    elif not torch.cuda.is_available():
        sys.exit("needs CUDA")
    t_start = time.perf_counter()
    from trainer.engine import sdpa_backend_fn

    cfg = ModelConfig.from_name(args.preset, vocab_size=VOCAB, max_seq_len=args.seq_len, dropout=0.1, attn_dropout=0.0)
    S = args.seq_len
    rows: list[dict[str, Any]] = []
    info: dict[str, Any] = {"device": torch.cuda.get_device_name() if DEV == "cuda" else "cpu (dry run)", "torch": torch.__version__,
                            "preset": args.preset, "seq_len": S, "peak": args.peak,
                            "flash_attn_package": importlib.util.find_spec("flash_attn") is not None,
                            "deepspeed": importlib.util.find_spec("deepspeed") is not None}
    try:
        import transformers
        info["transformers"] = transformers.__version__
    except Exception:  # noqa: BLE001
        pass
    torch.manual_seed(0)
    probe = PhiModel(cfg)
    flops_tok = probe.flops_per_token(S)
    info.update(flops_per_token=flops_tok, non_embedding_params=probe.num_params(),
                params=probe.num_params(exclude_embedding=False), lm_head_params=probe.lm_head.weight.numel())
    del probe
    print(f"{args.preset}: {info['non_embedding_params'] / 1e6:.1f}M non-embedding params (incl. lm_head "
          f"{info['lm_head_params'] / 1e6:.1f}M), {flops_tok / 1e9:.3f} GFLOP/token, {info['device']}, "
          f"torch {info['torch']}", flush=True)

    def left() -> float:
        return args.budget_s - (time.perf_counter() - t_start)

    def add(name: str, attention: str, engine: str, micro: int, thunk: Callable[[], dict[str, Any]],
            need_s: float = 20.0) -> Optional[dict[str, Any]]:
        row = {"model": name, "attention": attention, "engine": engine, "micro": micro}
        if left() < need_s:
            row["error"] = f"skipped: {left():.0f} s of the {args.budget_s:.0f} s budget left"
            print(f"  {name} {attention} {engine} micro {micro}: {row['error']}", flush=True)
            rows.append(row)
            return None
        try:
            row.update(thunk())
            row["mfu"] = flops_tok * row["tok_s"] / args.peak
            w = row["windows"]
            print(f"  {name} {attention} {engine} micro {micro}: {row['tok_s']:,.0f} tok/s  MFU {row['mfu']:.1%}  "
                  f"(windows {w[0]:,.0f} / {w[1]:,.0f}; warmup {row['warmup_s']:.1f} s; {row['mem_gb']:.1f} GB)",
                  flush=True)
        except Exception as e:  # noqa: BLE001
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            print(f"  {name} {attention} {engine} micro {micro}: ERROR {row['error']}", flush=True)
            traceback.print_exc(limit=3)
        rows.append(row)
        cleanup()
        return row

    def ours(attn: str, micro: int, compile_: bool, profile_steps: int = 0) -> dict[str, Any]:
        torch.manual_seed(0)
        m = PhiModel(cfg).to(DEV).train()
        m.set_attention_fn(sdpa_backend_fn(attn))
        fm = torch.compile(m) if compile_ else m
        try:
            return run_loop(m, lambda i, t: fm(i, t)[1], micro, S, args.steps, args.warmup,
                            profile_steps=profile_steps)
        finally:
            del m, fm
            if compile_:
                torch._dynamo.reset()

    # 0. attention kernels alone
    if args.attn:
        best = args.attn
    else:
        att, best = attention_bench(cfg, args.micro_big, S)
        info["attention_bench"] = att
        best = best or "flash"
    info["best_backend"] = best
    print(f"  best SDPA backend at these shapes: {best}", flush=True)

    # 1. headline: compile + best backend + big micro batch (falls back to flash if the best one fails)
    big = args.micro_big
    rows_on = set(args.rows.split(","))
    flash_compiled = False
    if "headline" in rows_on:
        r = add("ours", f"sdpa-{best}", "torch.compile", big, lambda: ours(best, big, True, 3), need_s=60)
        flash_compiled = best == "flash"
        if (r is None or "error" in r) and best != "flash":
            add("ours", "sdpa-flash", "torch.compile", big, lambda: ours("flash", big, True, 3), need_s=60)
            flash_compiled = True

    # 2. eager rows
    if "eager" in rows_on:
        add("ours", "sdpa-flash", "torch (eager)", args.micro, lambda: ours("flash", args.micro, False))
        if best != "flash" or big != args.micro:
            add("ours", f"sdpa-{best}", "torch (eager)", big, lambda: ours(best, big, False))

    # 3. HF baseline
    def hf(micro: int) -> dict[str, Any]:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        torch.manual_seed(0)
        m = hf_model(cfg).to(DEV).train()
        n_hf = sum(p.numel() for p in m.parameters())
        fwd = lambda i, t: F.cross_entropy(m(input_ids=i).logits.float().flatten(0, 1), t.flatten())  # noqa: E731

        def forced():
            class Both:
                def __enter__(self):
                    self.a = torch.autocast(DEV, dtype=torch.bfloat16)
                    self.b = sdpa_kernel(SDPBackend.FLASH_ATTENTION)
                    self.a.__enter__()
                    self.b.__enter__()

                def __exit__(self, *exc):
                    self.b.__exit__(*exc)
                    self.a.__exit__(*exc)
            return Both()

        try:
            out = run_loop(m, fwd, micro, S, args.steps, args.warmup, context=forced)
            out["hf_attention"] = "sdpa-flash (forced)"
        except RuntimeError as e:  # HF passed an explicit mask: flash cannot take it; let PyTorch choose
            if isinstance(e, torch.OutOfMemoryError):
                raise
            print(f"    HF with flash forced failed ({str(e).splitlines()[0][:120]}); PyTorch's choice instead")
            m.zero_grad(set_to_none=True)
            cleanup()
            out = run_loop(m, fwd, micro, S, args.steps, args.warmup)
            out["hf_attention"] = "sdpa (PyTorch's choice; flash refused)"
        out["hf_params"] = n_hf
        del m
        return out

    if not args.skip_hf and "hf" in rows_on:
        for mb in dict.fromkeys((args.micro, big)):
            r = add("HF PhiForCausalLM", "sdpa", "torch (eager)", mb, lambda mb=mb: hf(mb))
            if r and "hf_attention" in r:
                r["attention"] = r["hf_attention"]

    # 4. DeepSpeed ZeRO-2 bf16
    if args.skip_ds or "ds" not in rows_on:
        pass
    elif importlib.util.find_spec("deepspeed") and DEV == "cuda":
        def ds(micro: int, attn: str) -> dict[str, Any]:
            from trainer.engine import DeepSpeedRunner

            torch.manual_seed(0)
            m = PhiModel(cfg)
            m.set_attention_fn(sdpa_backend_fn(attn))
            tc = SimpleNamespace(batch_size=micro, micro_batch_size=micro, dtype="bfloat16")
            runner = DeepSpeedRunner(m, RECIPES["phi-1"], 10_000, 10, tc)
            x = torch.randint(0, VOCAB, (micro, S + 1), device=DEV)

            def ds_step() -> None:
                runner.forward_backward(x[:, :-1], x[:, 1:], 1)
                runner.step()

            try:
                return run_loop(runner.model, None, micro, S, args.steps, args.warmup, step_fn=ds_step)
            finally:
                del runner, m

        add("ours", f"sdpa-{best}", "deepspeed ZeRO-2 bf16", big, lambda: ds(big, best), need_s=40)
    else:
        rows.append({"model": "ours", "attention": "-", "engine": "deepspeed ZeRO-2 bf16", "micro": big,
                     "error": "skipped: deepspeed not importable"})

    # 5. extra compile rows, budget permitting (isolate the backend and the micro batch effects)
    if "extra" in rows_on:
        if not flash_compiled:
            add("ours", "sdpa-flash", "torch.compile", big, lambda: ours("flash", big, True), need_s=75)
        if big != args.micro:
            add("ours", f"sdpa-{best}", "torch.compile", args.micro, lambda: ours(best, args.micro, True), need_s=75)

    # table
    info["wall_s"] = time.perf_counter() - t_start
    ok = [r for r in rows if "tok_s" in r]
    hf_rows = [r for r in ok if r["model"].startswith("HF")]
    ours_rows = [r for r in ok if r["model"] == "ours"]
    print(f"\n{args.preset}: seq {S}, bf16 autocast (DeepSpeed: bf16 weights), dropout 0.1, "
          f"{flops_tok / 1e9:.3f} GFLOP/token (6N+12LTd, N={info['non_embedding_params'] / 1e6:.1f}M incl. lm_head), "
          f"peak {args.peak / 1e12:.0f} TFLOP/s, {info['device']}, torch {info['torch']}, "
          f"flash-attn package {'present' if info['flash_attn_package'] else 'absent'}")
    print(f"{'model':<18} {'attention':<24} {'engine':<22} {'micro':>5} {'tok/s':>9} {'MFU':>6} {'mem GB':>6} "
          f"{'spread':>6} {'warmup s':>8}")
    for r in rows:
        if "tok_s" in r:
            w = r["windows"]
            spread = abs(w[0] - w[1]) / r["tok_s"]
            print(f"{r['model']:<18} {r['attention']:<24} {r['engine']:<22} {r['micro']:>5} {r['tok_s']:>9,.0f} "
                  f"{r['mfu']:>6.1%} {r['mem_gb']:>6.1f} {spread:>6.1%} {r['warmup_s']:>8.1f}")
        else:
            print(f"{r['model']:<18} {r['attention']:<24} {r['engine']:<22} {r['micro']:>5} {r['error']}")
    if ours_rows and hf_rows:
        b = max(ours_rows, key=lambda r: r["tok_s"])
        h = max(hf_rows, key=lambda r: r["tok_s"])
        same = [r for r in hf_rows if r["micro"] == b["micro"]]
        info["best_ours"] = b
        info["speedup_vs_best_hf"] = b["tok_s"] / h["tok_s"]
        msg = (f"best ours: {b['attention']} {b['engine']} micro {b['micro']}: MFU {b['mfu']:.1%}, "
               f"{info['speedup_vs_best_hf']:.2f}x HF's best ({h['tok_s']:,.0f} tok/s, micro {h['micro']})")
        if same:
            info["speedup_vs_hf_same_micro"] = b["tok_s"] / same[0]["tok_s"]
            msg += f", {info['speedup_vs_hf_same_micro']:.2f}x HF at the same micro batch"
        print(msg)
    print(f"bench wall {info['wall_s']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "rows": rows}, indent=2, default=str))


if __name__ == "__main__":
    main()
