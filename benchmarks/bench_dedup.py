"""Dedup benchmarks on the demo corpus (the interpreter's stdlib + site-packages .py files).

1. text -> MinHash signature throughput on ONE core: the naive path (Python 5-gram shingle strings in a set +
   datasketch ``MinHash.update_batch`` with its default sha1 hash) vs ours (vectorized tokenize / hash / shingle
   / permute over Arrow batches), measured side by side, alternating, best of N;
2. quality at threshold 0.8 against exact Jaccard ground truth (all pairs, sparse shingle-incidence product):
   pair recall / precision of our confirmed edges (signature and exact verification) and of datasketch's
   ``MinHashLSH(threshold=0.8, num_perm=128)``;
3. the full near-dedup stage through the runner at 1 and 2 Ray workers (wall time, rows/s), with example clusters.

    python benchmarks/bench_dedup.py [--files 4800] [--repeats 2] [--skip-stage]
"""

from __future__ import annotations

import argparse
import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from factory.config import DedupConfig, IngestConfig, build_config  # noqa: E402
from factory.stages import dedup as dd  # noqa: E402
from factory.stages.ingest import demo_inputs  # noqa: E402


def load_corpus(max_files: int) -> tuple[list[str], list[str]]:
    files = [f for _, fs in demo_inputs(IngestConfig(demo_max_files=max_files)) for f in fs]
    paths, texts = [], []
    for f in files:
        try:
            t = Path(f).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if t.strip():
            paths.append(f)
            texts.append(t)
    return paths, texts


def naive_signatures(texts: list[str], num_perm: int = 128):
    from datasketch import MinHash

    out = []
    for t in texts:
        toks = dd.reference_tokens(t)
        sh = {" ".join(toks[i : i + 5]) for i in range(max(1, len(toks) - 4))} if toks else set()
        m = MinHash(num_perm=num_perm, seed=1)
        m.update_batch([s.encode("utf-8") for s in sh])
        out.append(m)
    return out


def fast_signatures(batches: list[pa.Array], cfg: DedupConfig) -> np.ndarray:
    mh = dd.MinHasher(cfg)
    return np.concatenate([mh.signatures(b)[0] for b in batches])


def table(head: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in r] for r in rows]
    w = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(head)]
    line = lambda r: "  ".join(c.rjust(w[i]) if i else c.ljust(w[i]) for i, c in enumerate(r))  # noqa: E731
    return "\n".join([line(head), line(["-" * x for x in w]), *map(line, cells)])


# --------------------------------------------------------------------------------------------- 1. throughput
def bench_throughput(texts: list[str], repeats: int):
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    batches = [pa.array(texts[i : i + 500]) for i in range(0, len(texts), 500)]  # shard-sized Arrow batches
    res: dict[str, list[float]] = {"naive": [], "fast": [], "fast_legacy": [], "fast_from_py": []}
    naive = None
    for _ in range(repeats):  # alternate so background load hits both alike
        t = time.perf_counter()
        naive = naive_signatures(texts)
        res["naive"].append(time.perf_counter() - t)
        t = time.perf_counter()
        fast_signatures(batches, DedupConfig())
        res["fast"].append(time.perf_counter() - t)
        t = time.perf_counter()
        fast_signatures([pa.array(texts[i : i + 500]) for i in range(0, len(texts), 500)], DedupConfig())
        res["fast_from_py"].append(time.perf_counter() - t)
        t = time.perf_counter()
        fast_signatures(batches, DedupConfig(scheme="legacy"))
        res["fast_legacy"].append(time.perf_counter() - t)
    best = {k: min(v) for k, v in res.items()}
    mbs = {k: nbytes / 1e6 / v for k, v in best.items()}
    rows = [
        ["naive: str 5-gram set + datasketch update_batch (sha1, affine32)", f"{best['naive']:.2f}", f"{mbs['naive']:.1f}", "1.00"],
        ["ours, affine32, from Arrow batches (as in the stage)", f"{best['fast']:.2f}", f"{mbs['fast']:.1f}", f"{best['naive'] / best['fast']:.2f}"],
        ["ours, affine32, incl. list[str] -> Arrow conversion", f"{best['fast_from_py']:.2f}", f"{mbs['fast_from_py']:.1f}", f"{best['naive'] / best['fast_from_py']:.2f}"],
        ["ours, legacy scheme (mod 2^61-1)", f"{best['fast_legacy']:.2f}", f"{mbs['fast_legacy']:.1f}", f"{best['naive'] / best['fast_legacy']:.2f}"],
    ]
    print(f"\n## 1. text -> signature, one core: {len(texts)} docs, {nbytes / 1e6:.1f} MB, best of {repeats}\n")
    print(table(["path", "seconds", "MB/s", "speedup"], rows))
    return naive, mbs, best


# --------------------------------------------------------------------------------------------- 2. quality
def ground_truth(texts: list[str], cfg: DedupConfig, threshold: float) -> tuple[dict, float]:
    from scipy.sparse import csr_matrix, triu

    t = time.perf_counter()
    vocab: dict = {}
    indptr, indices = [0], []
    for text in texts:
        ids = {vocab.setdefault(s, len(vocab)) for s in dd.reference_shingles(text, cfg)}
        indices.extend(sorted(ids))
        indptr.append(len(indices))
    X = csr_matrix((np.ones(len(indices), np.float32), np.array(indices), np.array(indptr)), shape=(len(texts), len(vocab)))
    sizes = np.diff(X.indptr)
    inter = triu(X @ X.T, k=1).tocoo()
    jac = inter.data / (sizes[inter.row] + sizes[inter.col] - inter.data)
    pairs = {(int(a), int(b)): float(j) for a, b, j in zip(inter.row, inter.col, jac)}
    return pairs, time.perf_counter() - t


def our_edges(texts: list[str], cfg: DedupConfig) -> tuple[set, dict]:
    sig, nsh = dd.MinHasher(cfg).signatures(pa.array(texts))
    live = np.flatnonzero(nsh > 0)
    b, r = dd.lsh_params(cfg)
    keys = dd.band_keys(sig[live], b, r).reshape(-1)
    docs = np.repeat(live, b)
    sets = None
    if cfg.verify == "exact":
        all_sets = dd.shingle_sets(texts, cfg)
        sets = [all_sets[d] for d in docs]
    u, v, s, checked = dd.bucket_edges(keys, docs, np.repeat(sig[live], b, axis=0), cfg.threshold, sets)
    return set(zip(u.tolist(), v.tolist())), {"bands": b, "rows": r, "candidates": checked}


def components(n: int, pairs: set) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not pairs:
        return np.arange(n)
    u, v = map(np.array, zip(*pairs))
    return connected_components(coo_matrix((np.ones(len(u)), (u, v)), shape=(n, n)), directed=False)[1]


def bench_quality(texts: list[str], naive, threshold: float = 0.8):
    from datasketch import MinHashLSH

    cfg = DedupConfig(threshold=threshold)
    gt, gt_s = ground_truth(texts, cfg, threshold)
    truth = {p for p, j in gt.items() if j >= threshold}
    print(f"\n## 2. quality vs exact Jaccard >= {threshold}: {len(texts)} docs, {len(truth)} true pairs (ground truth in {gt_s:.1f} s)\n")
    rows = []
    found: dict[str, set] = {}
    for name, c in [
        ("ours, verify=signature (LSH tuned at 0.7)", DedupConfig(threshold=threshold, verify="signature")),
        ("ours, verify=exact (LSH tuned at 0.7)", DedupConfig(threshold=threshold, verify="exact")),
        ("ours, verify=signature, LSH tuned at 0.8", DedupConfig(threshold=threshold, candidate_threshold=threshold)),
    ]:
        t = time.perf_counter()
        edges, info = our_edges(texts, c)
        found[name] = edges
        rows.append(_quality_row(name, edges, truth, gt, len(texts), time.perf_counter() - t, info))
    t = time.perf_counter()
    lsh = MinHashLSH(threshold=threshold, num_perm=128)
    for i, m in enumerate(naive):
        lsh.insert(i, m)
    ds_pairs = set()
    for i, m in enumerate(naive):
        for j in lsh.query(m):
            if j != i:
                ds_pairs.add((min(i, j), max(i, j)))
    rows.append(_quality_row("datasketch MinHashLSH(0.8, 128), query pairs", ds_pairs, truth, gt, len(texts), time.perf_counter() - t, {"bands": lsh.b, "rows": lsh.r}))
    print(table(["method", "b x r", "edges", "edge recall", "edge precision", "missed J range", "pair recall (same cluster)", "in-cluster pair precision", "s"], rows))
    return found, gt


def _quality_row(name, edges, truth, gt, n, secs, info):
    tp = len(edges & truth)
    recall = tp / len(truth) if truth else 1.0
    precision = tp / len(edges) if edges else 1.0
    missed = [gt[p] for p in truth - edges]
    comp = components(n, edges)
    co = sum(1 for a, b in truth if comp[a] == comp[b]) / len(truth) if truth else 1.0
    # every pair inside a cluster (what dedup acts on): how many are true pairs
    members: dict[int, list[int]] = {}
    for i, c in enumerate(comp):
        members.setdefault(int(c), []).append(i)
    co_pairs = [(a, b) for m in members.values() if len(m) > 1 for k, a in enumerate(m) for b in m[k + 1 :]]
    co_prec = sum(1 for p in co_pairs if p in truth) / len(co_pairs) if co_pairs else 1.0
    rng = f"[{min(missed):.3f}, {max(missed):.3f}]" if missed else "-"
    return [name, f"{info['bands']}x{info['rows']}", len(edges), f"{recall:.4f}", f"{precision:.4f}", rng, f"{co:.4f}", f"{co_prec:.4f}", f"{secs:.1f}"]


# --------------------------------------------------------------------------------------------- 3. the stage
def bench_stage(max_files: int, paths: list[str]):
    import ray

    from factory.pipeline import StageContext
    from factory.runtime.ray_env import init_ray
    from factory.runtime.registry import load_runners
    from factory.store import Store

    root = Path(tempfile.mkdtemp(prefix="bench-dedup-"))
    try:
        cfg = build_config({"output_root": str(root), "ray": {"num_cpus": 2}, "ingest": {"demo_max_files": max_files, "rows_per_shard": 250}})
        init_ray(cfg.ray, progress=False)
        store = Store(root)
        runners = load_runners()
        ing, _ = runners["ingest"](StageContext(cfg, store, "ingest", {}, progress=False))
        rows = []
        last = None
        for workers in (1, 2):
            c = build_config({**cfg.dump(), "dedup": {"num_workers": workers}})
            ctx = StageContext(c, store, "near_dedup", {"dataset": ing}, progress=False)
            vid = None
            t = time.perf_counter()
            v, cached = runners["near_dedup"](ctx)
            dt = time.perf_counter() - t
            assert not cached
            m = v.manifest
            n = m["counts"]["in"]
            rows.append([workers, n, f"{m['input_bytes'] / 1e6:.1f}", f"{dt:.1f}", f"{n / dt:.0f}", m["counts"]["out"], m["counts"]["dropped"].get("near_duplicate", 0), m["clusters"], m["cc_rounds"], m["partitions"]])
            last = v
            shutil.rmtree(v.path)  # so the next worker count is not a cache hit
            vid = v.id
        print(f"\n## 3. near_dedup stage through the runner (Ray local, 2 CPUs), {ing.manifest['counts']['out']} docs\n")
        print(table(["workers", "rows", "MB", "wall s", "rows/s", "kept", "dropped", "clusters", "CC rounds", "partitions"], rows))
        return last, vid
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)


def example_clusters(texts, paths, found, gt, k: int = 5):
    edges = found["ours, verify=exact (LSH tuned at 0.7)"]
    comp = components(len(texts), edges)
    ids, counts = np.unique(comp, return_counts=True)
    big = ids[counts > 1]
    # some of the largest and some 2-3 member ones
    order = sorted(big, key=lambda c: -int((comp == c).sum()))
    picks = order[:3] + [c for c in order if (comp == c).sum() in (2, 3)][: k - 3]
    print("\n## example clusters (verify=exact; J = exact Jaccard with the first member)\n")
    for c in picks:
        members = sorted(np.flatnonzero(comp == c).tolist())
        print(f"cluster of {len(members)}:")
        for m in members[:6]:
            j = 1.0 if m == members[0] else gt.get((min(members[0], m), max(members[0], m)), 0.0)
            print(f"   J={j:.3f}  {paths[m]}")
        if len(members) > 6:
            print(f"   ... {len(members) - 6} more")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=4800)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--skip-stage", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true", help="quality only (the naive signatures are still computed once for datasketch's LSH)")
    args = ap.parse_args()
    paths, texts = load_corpus(args.files)
    naive = naive_signatures(texts) if args.skip_throughput else bench_throughput(texts, args.repeats)[0]
    found, gt = bench_quality(texts, naive)
    example_clusters(texts, paths, found, gt)
    if not args.skip_stage:
        bench_stage(args.files, paths)


if __name__ == "__main__":
    main()
