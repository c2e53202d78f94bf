"""Decontaminate throughput on ONE core: ``Decontaminator.decontaminate_table`` over the interpreter's stdlib .py
files (real code, none a HumanEval copy), against the obvious way (a Python set of n-gram strings per document
intersected with the benchmark's), side by side, alternating, best of N.  Also prints the index build time.

    python benchmarks/bench_decontaminate.py [--files 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import sysconfig
import time
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from factory.config import DecontaminateConfig  # noqa: E402
from factory.stages.decontaminate import Decontaminator, load_benchmark, tokens  # noqa: E402


def stdlib_texts(max_files: int) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)[:max_files]
    return [p.read_text(encoding="utf-8", errors="replace") for p in files]


def naive(texts: list[str], problems: list[dict], n: int) -> int:
    """Sets of joined n-gram strings, no filtering of the index: the reference the stage is compared with."""
    index = set()
    for p in problems:
        t = tokens(p["prompt"] + p["canonical_solution"])
        index.update(" ".join(t[i : i + n]) for i in range(len(t) - n + 1))
    flagged = 0
    for text in texts:
        t = tokens(text)
        flagged += not index.isdisjoint(" ".join(t[i : i + n]) for i in range(len(t) - n + 1))
    return flagged


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    texts = stdlib_texts(args.files)
    mb = sum(len(t.encode()) for t in texts) / 1e6
    table = pa.table({"id": [str(i) for i in range(len(texts))], "text": texts})
    bench = load_benchmark("humaneval")
    t0 = time.perf_counter()
    stage = Decontaminator(DecontaminateConfig(), [bench])
    build = time.perf_counter() - t0
    no_sig = Decontaminator(DecontaminateConfig(match_signatures=False), [bench])

    paths = {
        "naive: Python sets of 13-gram strings": lambda: naive(texts, bench.problems, 13),
        "ours, n-grams only (match_signatures: false)": lambda: sum(no_sig.decontaminate_table(table).dropped.values()),
        "ours, defaults (n-grams + signatures)": lambda: sum(stage.decontaminate_table(table).dropped.values()),
    }
    best = {k: float("inf") for k in paths}
    flagged = {}
    for _ in range(args.repeats):
        for name, fn in paths.items():
            t = time.perf_counter()
            flagged[name] = fn()
            best[name] = min(best[name], time.perf_counter() - t)

    print(f"{len(texts)} stdlib files, {mb:.1f} MB; HumanEval index: {stage.stats['ngrams']} 13-grams, "
          f"{stage.stats['signatures']} signatures, built in {build:.3f} s")
    print("| path | seconds | rows/s | MB/s | speed-up | rows flagged |")
    print("|---|---:|---:|---:|---:|---:|")
    base = best[next(iter(paths))]
    for name in paths:
        s = best[name]
        print(f"| {name} | {s:.2f} | {len(texts) / s:,.0f} | {mb / s:.1f} | {base / s:.1f}x | {flagged[name]} |")


if __name__ == "__main__":
    main()
