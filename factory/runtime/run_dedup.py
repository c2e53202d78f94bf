"""Exact and near (MinHash-LSH) deduplication on Ray Data, global across shards, resumable.

Both stages are a chain of *phases*.  A phase is a list of independent tasks run with Ray Data ``map`` (one
row per task); a task reads Parquet, runs pure stage code (``factory.stages.dedup``) and writes Parquet plus a
completion marker into the version's staging directory.  Between phases data moves by **hash partitioning
through files** (a MapReduce shuffle): a producer writes one file per target partition under
``_work/<name>/p<partition>/<producer>.parquet`` and the consumer of partition p reads that folder.  Nothing
but task names and small stats dicts reaches the driver.  Because every phase output is durable and every task
deterministic and idempotent:

* a task lost with its worker node is retried by Ray (``max_retries``), and a phase whose Ray Data execution
  fails outright is re-submitted for the tasks still without a marker;
* a rerun after the driver is killed skips every task that has a marker (``manifest.tasks`` says how many ran
  and how many were reused).

Near dedup phases::

  sig      per input shard   text -> MinHash signature -> band keys   ==> bands   (by key % P), attrs
  bucket   per partition     group by band key, verify candidates    ==> edges u<v (by node)
  ls<r>    per partition     large-star round r of connected components (Kiveris et al.), labels
  ss<r>    per partition     small-star round r                      ... until the LS input repeats
  members  per partition     node -> component root, joined with the node's attributes ==> (by root)
  select   per partition     representative per component (keep policy), clusters side table, drops
  apply    per input shard   drop the non-representatives, write the shard

Exact dedup: ``hash`` (normalized-content xxh3-128, by hash) -> ``group`` (one kept per hash, duplicates side
table, drops) -> ``apply``.

A node key is ``(shard_index << 32) | row``; node partitions are ``shard_index % P``, so the drops of a shard
are all in one partition.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from factory.pipeline import StageContext
from factory.runtime.executor import run_marked_tasks
from factory.runtime.registry import runner
from factory.stages import dedup as dd
from factory.store import BASE_SCHEMA, VersionWriter, merge_counts, write_parquet_atomic

log = logging.getLogger(__name__)

MAX_CC_ROUNDS = 64
PHASE_ATTEMPTS = 4
ALGO_VERSION = 1


# --------------------------------------------------------------------------------------------- plumbing
class Phases:
    """Runs phases of a version being written; remembers how many tasks ran vs were reused."""

    def __init__(self, writer: VersionWriter, concurrency: int | None):
        self.writer = writer
        self.concurrency = concurrency
        self.run_id = uuid.uuid4().hex[:12]
        self.tasks: dict[str, dict[str, int]] = {}

    def run(self, phase: str, tasks: list[tuple[str, Any]], fn: Callable[[Any], dict]) -> dict[str, dict]:
        writer, run_id = self.writer, self.run_id
        names = [n for n, _ in tasks]
        reused = sum(1 for n in names if writer.shard_done(f"{phase}.{n}"))

        def work(marker: str, payload: Any) -> None:
            stats = fn(payload) or {}
            stats["run_id"] = run_id
            writer.write_shard(marker, None, {"in": 0, "out": 0}, extra={"stats": stats})

        marked = [(f"{phase}.{n}", p) for n, p in tasks]
        ran = run_marked_tasks(writer, marked, work, concurrency=self.concurrency, attempts=PHASE_ATTEMPTS)
        self.tasks[phase] = {"ran": ran, "reused": reused}
        return {n: writer.shard_stats(f"{phase}.{n}")["stats"] for n in names}


def _write_parts(root: Path, producer: str, table: pa.Table, parts: np.ndarray) -> None:
    """Write ``table`` split by partition number into ``root/p<part>/<producer>.parquet``."""
    if table.num_rows == 0:
        return
    order = np.argsort(parts, kind="stable")
    sorted_parts = parts[order]
    table = table.take(pa.array(order))
    bounds = np.flatnonzero(np.r_[True, sorted_parts[1:] != sorted_parts[:-1], True])
    for s, e in zip(bounds[:-1], bounds[1:]):
        write_parquet_atomic(table.slice(s, e - s), root / f"p{int(sorted_parts[s]):05d}" / f"{producer}.parquet")


def _read_part(root: Path, part: int) -> pa.Table | None:
    d = root / f"p{part:05d}"
    files = sorted(d.glob("*.parquet")) if d.exists() else []
    if not files:
        return None
    return pa.concat_tables([pq.read_table(f) for f in files])


def _node_part(nodes: np.ndarray, P: int) -> np.ndarray:
    return ((nodes.astype(np.int64) >> 32) % P).astype(np.int64)


def _shard_columns(path: Path) -> list[str]:
    names = pq.read_schema(path).names
    return [c for c in ("id", "text", "meta", "quality_score") if c in names]


def _doc_attrs(table: pa.Table, shard_index: int) -> pa.Table:
    n = table.num_rows
    doc = (np.int64(shard_index) << np.int64(32)) + np.arange(n, dtype=np.int64)
    score = (
        table.column("quality_score").cast(pa.float64()).fill_null(float("nan"))
        if "quality_score" in table.column_names
        else pa.array(np.full(n, np.nan))
    )
    metas = table.column("meta").to_pylist() if "meta" in table.column_names else [None] * n
    return pa.table(
        {
            "doc": pa.array(doc),
            "id": table.column("id"),
            "length": pc.utf8_length(table.column("text").fill_null("")).cast(pa.int64()),
            "score": score,
            "path": pa.array([dd.meta_path(m) for m in metas], type=pa.string()),
        }
    )


def _input(ctx: StageContext):
    parent = ctx.need("dataset")
    files = parent.data_files()
    if files:
        schema = pq.read_schema(files[0])
    else:
        schema = BASE_SCHEMA
    return parent, files, schema


def _apply_drops(phases: Phases, files: list[Path], drops_root: Path, P: int, reason: str) -> dict[str, Any]:
    writer = phases.writer

    def task(arg: tuple[int, str]) -> dict:
        i, path = arg
        table = pq.read_table(path)
        drops = _read_part(drops_root, i % P)
        drop_rows = np.zeros(0, np.int64)
        if drops is not None:
            d = drops.column("doc").to_numpy()
            d = d[(d >> 32) == i]
            drop_rows = np.unique(d & np.int64(0xFFFFFFFF))
        keep = np.ones(table.num_rows, dtype=bool)
        keep[drop_rows] = False
        out = table.filter(pa.array(keep))
        counts = {"in": table.num_rows, "out": out.num_rows, "dropped": {reason: int(len(drop_rows))} if len(drop_rows) else {}, "quarantined": {}}
        writer.write_shard(Path(path).stem, out, counts)
        return counts

    phases.run("apply", [(Path(f).stem, (i, str(f))) for i, f in enumerate(files)], task)
    return merge_counts(writer.shard_stats(Path(f).stem)["counts"] for f in files)


def _finish(phases: Phases, ctx: StageContext, counts: dict, schema: pa.Schema, extra: dict):
    writer = phases.writer
    shutil.rmtree(writer.path / "_work", ignore_errors=True)
    extra = {**extra, "tasks": phases.tasks}
    return writer.commit(counts, schema=schema, extra=extra, config_yaml=ctx.config_yaml())


# --------------------------------------------------------------------------------------------- exact
@runner("exact_dedup")
def run_exact_dedup(ctx: StageContext):
    cfg = ctx.cfg.dedup
    parent, files, schema = _input(ctx)
    relevant = {"normalize": list(cfg.normalize), "keep": cfg.keep, "algo": ALGO_VERSION}
    vid = ctx.version_id(parent, config=relevant)
    hit = ctx.cached(vid)
    if hit:
        return hit, True
    writer = ctx.begin(vid, "dataset", parent)
    phases = Phases(writer, cfg.num_workers)
    P = cfg.partitions or max(1, len(files))
    work = writer.path / "_work"
    normalize = list(cfg.normalize)
    keep = cfg.keep

    def hash_task(arg: tuple[int, str]) -> dict:
        i, path = arg
        table = pq.read_table(path, columns=_shard_columns(Path(path)))
        hashes = dd.content_hashes(table.column("text"), normalize)
        attrs = _doc_attrs(table, i)
        rows = attrs.append_column("hash", pa.array(hashes, type=pa.binary(16)))
        parts = np.array([int.from_bytes(h[:8], "little") % P for h in hashes], dtype=np.int64)
        _write_parts(work / "hash", f"s{i:05d}", rows, parts)
        return {"docs": table.num_rows}

    phases.run("hash", [(f"s{i:05d}", (i, str(f))) for i, f in enumerate(files)], hash_task)

    def group_task(p: int) -> dict:
        rows = _read_part(work / "hash", p)
        if rows is None:
            return {"dropped": 0}
        dups, drops = dd.exact_groups(rows, keep)
        if dups.num_rows:
            writer.write_side("duplicates", f"p{p:05d}", dups)
        _write_parts(work / "drops", f"p{p:05d}", pa.table({"doc": pa.array(drops, type=pa.int64())}), _node_part(drops, P))
        return {"dropped": int(len(drops))}

    stats = phases.run("group", [(f"p{p:05d}", p) for p in range(P)], group_task)
    counts = _apply_drops(phases, files, work / "drops", P, "exact_duplicate")
    groups = sum(s["dropped"] for s in stats.values())
    version = _finish(phases, ctx, counts, schema, {"partitions": P, "duplicates_dropped": groups})
    return version, False


# --------------------------------------------------------------------------------------------- near
@runner("near_dedup")
def run_near_dedup(ctx: StageContext):
    cfg = ctx.cfg.dedup
    parent, files, schema = _input(ctx)
    relevant = cfg.model_dump(mode="json")
    for k in ("num_workers", "partitions", "normalize"):
        relevant.pop(k, None)
    relevant["algo"] = ALGO_VERSION
    vid = ctx.version_id(parent, config=relevant)
    hit = ctx.cached(vid)
    if hit:
        return hit, True
    bands, rows_per_band = dd.lsh_params(cfg)
    writer = ctx.begin(vid, "dataset", parent, extra_header={"lsh": {"bands": bands, "rows": rows_per_band}})
    phases = Phases(writer, cfg.num_workers)
    P = cfg.partitions or max(1, len(files))
    work = writer.path / "_work"
    exact = cfg.verify == "exact"
    dcfg = cfg.model_copy()
    threshold = cfg.threshold
    keep = cfg.keep

    # -- signatures and band keys, per input shard
    def sig_task(arg: tuple[int, str]) -> dict:
        i, path = arg
        t0 = time.perf_counter()
        table = pq.read_table(path, columns=_shard_columns(Path(path)))
        texts = table.column("text")
        mh = dd.MinHasher(dcfg)
        sig, nsh = mh.signatures(texts)
        attrs = _doc_attrs(table, i)
        P_ = dcfg.num_perm
        sig_col = pa.FixedSizeBinaryArray.from_buffers(pa.binary(4 * P_), len(sig), [None, pa.py_buffer(np.ascontiguousarray(sig).tobytes())])
        attrs = attrs.append_column("sig", sig_col)
        write_parquet_atomic(attrs, work / "attrs" / f"s{i:05d}.parquet")
        live = np.flatnonzero(nsh > 0)
        if len(live):
            keys = dd.band_keys(sig[live], bands, rows_per_band)  # (n, bands)
            n_live = len(live)
            key_flat = keys.reshape(-1)
            doc_flat = np.repeat(attrs.column("doc").to_numpy()[live], bands)
            row_flat = np.repeat(live, bands)
            cols = {
                "key": pa.array(key_flat, type=pa.uint64()),
                "doc": pa.array(doc_flat, type=pa.int64()),
                "sig": sig_col.take(pa.array(row_flat)),
            }
            if exact:
                sets = dd.shingle_sets(texts.take(pa.array(live)), dcfg)
                lists = pa.array([s.tolist() for s in sets], type=pa.list_(pa.uint32()))
                cols["set"] = lists.take(pa.array(np.repeat(np.arange(n_live), bands)))
            _write_parts(work / "bands", f"s{i:05d}", pa.table(cols), (key_flat % np.uint64(P)).astype(np.int64))
        nbytes = int(pc.sum(pc.binary_length(texts.cast(pa.binary()))).as_py() or 0)
        return {"docs": table.num_rows, "bytes": nbytes, "no_shingles": int((nsh == 0).sum()), "seconds": time.perf_counter() - t0}

    sig_stats = phases.run("sig", [(f"s{i:05d}", (i, str(f))) for i, f in enumerate(files)], sig_task)

    # -- band buckets: candidates -> verified edges (the first large-star input, both directions)
    def bucket_task(p: int) -> dict:
        t = _read_part(work / "bands", p)
        if t is None:
            return {"candidates": 0, "edges": 0}
        keys = t.column("key").to_numpy()
        docs = t.column("doc").to_numpy()
        sig_col = t.column("sig").combine_chunks()
        sigs = np.frombuffer(sig_col.buffers()[1], dtype=np.uint32)[sig_col.offset * dcfg.num_perm :][: len(t) * dcfg.num_perm].reshape(len(t), dcfg.num_perm)
        sets = None
        if exact:
            sets = [np.asarray(x, dtype=np.uint32) for x in t.column("set").to_pylist()]
        u, v, sim, checked = dd.bucket_edges(keys, docs, sigs, threshold, sets)
        _write_edges_both(work / "cc" / "r001" / "ls", f"p{p:05d}", u, v, P)
        write_parquet_atomic(pa.table({"u": u, "v": v, "similarity": sim}), work / "edges" / f"p{p:05d}.parquet")
        return {"candidates": int(checked), "edges": int(len(u))}

    bucket_stats = phases.run("bucket", [(f"p{p:05d}", p) for p in range(P)], bucket_task)

    # -- connected components: alternate large-star / small-star until the large-star input repeats
    prev = None
    rounds = 0
    for r in range(1, MAX_CC_ROUNDS + 1):
        rounds = r
        rd = work / "cc" / f"r{r:03d}"

        def ls_task(p: int, rd=rd) -> dict:
            t = _read_part(rd / "ls", p)
            u = t.column("u").to_numpy() if t is not None else np.zeros(0, np.int64)
            v = t.column("v").to_numpy() if t is not None else np.zeros(0, np.int64)
            x, m, st = dd.large_star(u, v)
            _write_parts(rd / "ss", f"p{p:05d}", pa.table({"u": x, "v": m}), _node_part(x, P))
            nodes, roots = dd.labels_from_stars(u, v)
            write_parquet_atomic(pa.table({"node": nodes, "root": roots}), rd / "labels" / f"p{p:05d}.parquet")
            return st

        st = phases.run(f"ls{r:03d}", [(f"p{p:05d}", p) for p in range(P)], ls_task)
        edges = sum(s["edges"] for s in st.values())
        check = (edges, sum(s["checksum"] for s in st.values()) % (1 << 64))
        if edges == 0 or check == prev:
            break
        prev = check
        nxt = work / "cc" / f"r{r + 1:03d}" / "ls"

        def ss_task(p: int, rd=rd, nxt=nxt) -> dict:
            t = _read_part(rd / "ss", p)
            if t is None:
                return {"edges": 0}
            x, m = dd.small_star(t.column("u").to_numpy(), t.column("v").to_numpy())
            _write_edges_both(nxt, f"p{p:05d}", x, m, P)
            return {"edges": int(len(x))}

        phases.run(f"ss{r:03d}", [(f"p{p:05d}", p) for p in range(P)], ss_task)
    else:
        raise RuntimeError(f"connected components did not converge in {MAX_CC_ROUNDS} rounds")
    labels_dir = work / "cc" / f"r{rounds:03d}" / "labels"

    # -- members: node -> root, with the node's attributes, shuffled to the root's partition
    def members_task(p: int) -> dict:
        lf = labels_dir / f"p{p:05d}.parquet"
        if not lf.exists():
            return {"members": 0}
        labels = pq.read_table(lf)
        if labels.num_rows == 0:
            return {"members": 0}
        nodes = labels.column("node").to_numpy()
        roots = labels.column("root").to_numpy()
        shards = np.unique(nodes >> 32)
        attrs = pa.concat_tables([pq.read_table(work / "attrs" / f"s{int(s):05d}.parquet") for s in shards])
        adoc = attrs.column("doc").to_numpy()
        pos = np.searchsorted(adoc, nodes)  # attrs are sorted by doc (shards in order, rows in order)
        if not (pos < len(adoc)).all() or not (adoc[pos] == nodes).all():
            raise RuntimeError("labels name documents missing from the signature attributes")
        m = attrs.take(pa.array(pos)).append_column("root", pa.array(roots, type=pa.int64()))
        _write_parts(work / "members", f"p{p:05d}", m, _node_part(roots, P))
        return {"members": int(len(nodes))}

    phases.run("members", [(f"p{p:05d}", p) for p in range(P)], members_task)

    # -- one representative per component; the clusters side table; drops to the drop's shard partition
    def select_task(p: int) -> dict:
        m = _read_part(work / "members", p)
        if m is None:
            return {"clusters": 0, "dropped": 0}
        clusters, drops = dd.pick_representatives(m, keep)
        if clusters.num_rows:
            writer.write_side("clusters", f"p{p:05d}", clusters)
        _write_parts(work / "drops", f"p{p:05d}", pa.table({"doc": pa.array(drops, type=pa.int64())}), _node_part(drops, P))
        return {"clusters": int(pc.sum(clusters.column("is_representative").cast(pa.int64())).as_py() or 0), "dropped": int(len(drops))}

    sel = phases.run("select", [(f"p{p:05d}", p) for p in range(P)], select_task)
    counts = _apply_drops(phases, files, work / "drops", P, "near_duplicate")
    extra = {
        "partitions": P,
        "lsh": {"bands": bands, "rows": rows_per_band, "tuned_for": cfg.candidate_threshold or cfg.threshold, "verify_at": threshold},
        "candidate_pairs_checked": sum(s["candidates"] for s in bucket_stats.values()),
        "confirmed_edges": sum(s["edges"] for s in bucket_stats.values()),
        "cc_rounds": rounds,
        "clusters": sum(s["clusters"] for s in sel.values()),
        "signature_seconds": round(sum(s["seconds"] for s in sig_stats.values()), 3),
        "input_bytes": sum(s["bytes"] for s in sig_stats.values()),
        "docs_without_shingles": sum(s["no_shingles"] for s in sig_stats.values()),
    }
    version = _finish(phases, ctx, counts, schema, extra)
    return version, False


def _write_edges_both(root: Path, producer: str, u: np.ndarray, v: np.ndarray, P: int) -> None:
    """Large-star input: each undirected edge in both directions, partitioned by its first node."""
    a = np.concatenate([u, v]).astype(np.int64)
    b = np.concatenate([v, u]).astype(np.int64)
    _write_parts(root, producer, pa.table({"u": a, "v": b}), _node_part(a, P))
