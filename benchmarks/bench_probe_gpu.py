"""Probe comparison on one GPU (issue 8 item 3): filtered vs unfiltered demo corpus, same token budget,
two seeds each, then `trainer.scorecard.compare_scorecards`.

Input (written by the pipeline's score/filter + pack stages):
    DATA/unfiltered/, DATA/filtered/     trainer.data token dirs (meta.json + shards)
    DATA/lineage.json                    {"unfiltered": {"version": id, "lineage": [...]}, "filtered": {...}}
The four (version, seed) probes run as four processes at once on the one GPU: the small preset leaves the
GPU mostly idle in a single process, and HumanEval generation + sandboxed tests are latency/CPU bound.
Each process calls trainer.probe.run_probe (train_probe + evaluate_probe + write_scorecard), no Ray.

    python benchmarks/bench_probe_gpu.py --data .cache/probe_data --work /tmp/probes --results OUT_DIR
        [--preset small] [--seq-len 1024] [--batch 32] [--micro 16] [--max-tokens 0 (auto)]
        [--seeds 0 1] [--problems 64] [--max-new 128] [--budget-s 330]
Writes to --results: scorecards/*.json, compare.txt (the table), runs.json (per-run numbers), logs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NAMES = ("unfiltered", "filtered")


def train_tokens(token_dir: Path) -> int:
    meta = json.loads((token_dir / "meta.json").read_text())
    return int(meta["splits"]["train"]["tokens"])


def auto_budget(data: Path, cap: int, epochs: float) -> int:
    """Same budget for every version: `epochs` passes over the SMALLER train split, at most `cap` tokens."""
    smallest = min(train_tokens(data / n) for n in NAMES)
    return int(min(cap, max(1_000_000, epochs * smallest)))


def one(args: argparse.Namespace) -> None:
    """Child process: one (version, seed) probe."""
    from trainer.evaluate import EvalConfig
    from trainer.probe import ProbeConfig, run_probe
    from trainer.train import TrainConfig

    name, seed = args.one[0], int(args.one[1])
    lin = json.loads((Path(args.data) / "lineage.json").read_text())[name]
    tcfg = TrainConfig(preset=args.preset, max_tokens=args.max_tokens, seq_len=args.seq_len, batch_size=args.batch,
                       micro_batch_size=args.micro, log_every=50, ckpt_every=0, attention=args.attention)
    ecfg = EvalConfig(humaneval_problems=args.problems, max_new_tokens=args.max_new, n_samples=1, temperature=0.0,
                      ks=(1,), val_max_windows=256, batch_size=16, workers=4)
    t = time.perf_counter()
    paths = run_probe(lin["version"], lin.get("lineage", []), Path(args.data) / name, args.work,
                      ProbeConfig(train=tcfg, eval=ecfg, seeds=[seed]))
    print(f"done {name} seed {seed} in {time.perf_counter() - t:.0f} s: {[str(p) for p in paths]}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=".cache/probe_data")
    ap.add_argument("--work", default="/tmp/probes")
    ap.add_argument("--results", default="benchmarks/results/probe_gpu")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--micro", type=int, default=16)
    ap.add_argument("--attention", default="sdpa")
    ap.add_argument("--max-tokens", type=int, default=0, help="0: auto (see --cap / --epochs)")
    ap.add_argument("--cap", type=int, default=10_000_000)
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--problems", type=int, default=64)
    ap.add_argument("--max-new", type=int, default=128)
    ap.add_argument("--budget-s", type=float, default=330.0)
    ap.add_argument("--one", nargs=2, metavar=("NAME", "SEED"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return one(args)

    data, work, res = Path(args.data), Path(args.work), Path(args.results)
    res.mkdir(parents=True, exist_ok=True)
    lineage = json.loads((data / "lineage.json").read_text())
    if not args.max_tokens:
        args.max_tokens = auto_budget(data, args.cap, args.epochs)
    info = {"preset": args.preset, "seq_len": args.seq_len, "batch": args.batch, "micro": args.micro,
            "max_tokens": args.max_tokens, "seeds": args.seeds, "humaneval_problems": args.problems,
            "max_new_tokens": args.max_new, "attention": args.attention,
            "versions": {n: {"version": lineage[n]["version"], "train_tokens": train_tokens(data / n)} for n in NAMES}}
    print(json.dumps(info), flush=True)

    base = [sys.executable, str(Path(__file__).resolve())] + [
        "--data", str(data), "--work", str(work), "--preset", args.preset, "--seq-len", str(args.seq_len),
        "--batch", str(args.batch), "--micro", str(args.micro), "--attention", args.attention,
        "--max-tokens", str(args.max_tokens), "--problems", str(args.problems), "--max-new", str(args.max_new)]
    t0 = time.perf_counter()
    procs = []
    threads = str(max(1, (os.cpu_count() or 4) // (len(NAMES) * len(args.seeds))))  # no CPU oversubscription
    for n in NAMES:
        for s in args.seeds:
            log = open(res / f"log_{n}_seed{s}.txt", "w")
            p = subprocess.Popen(base + ["--one", n, str(s)], stdout=log, stderr=subprocess.STDOUT,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": threads})
            procs.append((n, s, p, log))
    runs = []
    for n, s, p, log in procs:
        left = max(1.0, args.budget_s - (time.perf_counter() - t0))
        try:
            rc = p.wait(timeout=left)
        except subprocess.TimeoutExpired:
            p.kill()  # only the child this script started
            rc = "timeout"
        log.close()
        runs.append({"name": n, "seed": s, "rc": rc, "wall_s": time.perf_counter() - t0})
        print(f"{n} seed {s}: rc {rc} at {time.perf_counter() - t0:.0f} s", flush=True)

    from trainer.scorecard import compare_scorecards

    cards_dir = work / "scorecards"
    (res / "scorecards").mkdir(exist_ok=True)
    for c in sorted(cards_dir.glob("*.json")) if cards_dir.exists() else []:
        shutil.copy(c, res / "scorecards" / c.name)
        card = json.loads(c.read_text())
        for r in runs:
            if card["dataset_version"] == lineage[r["name"]]["version"] and card["seed"] == r["seed"]:
                r.update({k: card.get(k) for k in ("dataset_version", "training_tokens", "final_train_loss",
                                                    "val_loss", "ref_loss", "pass_at_k", "tokens_per_s", "mfu")})
    table = compare_scorecards([cards_dir]) if cards_dir.exists() else "no scorecards"
    names = "\n".join(f"  {n}: {lineage[n]['version']}" for n in NAMES)
    text = (f"probe comparison: preset {args.preset}, seq {args.seq_len}, batch {args.batch} x {args.seq_len} tokens, "
            f"{args.max_tokens:,} training tokens per run, seeds {args.seeds}, HumanEval greedy pass@1 on the "
            f"first {args.problems} problems (max {args.max_new} new tokens)\nversions:\n{names}\n\n{table}\n")
    (res / "compare.txt").write_text(text)
    (res / "runs.json").write_text(json.dumps({"info": info, "runs": runs}, indent=2, default=str))
    print("\nrun                 seed  rc  train_loss  val_loss  ref_loss  pass@1   tok/s    wall s")
    for r in runs:
        f = lambda k: f"{r[k]:.3f}" if isinstance(r.get(k), (int, float)) else "-"  # noqa: E731
        p1 = (r.get("pass_at_k") or {}).get("pass@1")
        print(f"{r['name']:<18} {r['seed']:>5} {str(r['rc']):>3} {f('final_train_loss'):>11} {f('val_loss'):>9} "
              f"{f('ref_loss'):>9} {('-' if p1 is None else f'{p1:.3f}'):>7} "
              f"{(r.get('tokens_per_s') or 0):>8,.0f} {r['wall_s']:>8.0f}")
    print("\n" + text)


if __name__ == "__main__":
    main()
