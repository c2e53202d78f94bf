"""Connected components (large-star / small-star rounds), representative choice, exact-duplicate groups."""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from factory.stages.dedup.shingles import (
    U64,
    _WS,
    _as_string_array,
    fmix64,
)


# --------------------------------------------------------------------------------------------- connected components
def dedup_edges(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct directed edges (u, v)."""
    if len(u) == 0:
        return u.astype(np.int64), v.astype(np.int64)
    o = np.lexsort((v, u))
    u, v = u[o], v[o]
    keep = np.r_[True, (u[1:] != u[:-1]) | (v[1:] != v[:-1])]
    return u[keep], v[keep]


def edge_checksum(u: np.ndarray, v: np.ndarray) -> tuple[int, int]:
    """(count, order-independent checksum) of a set of distinct directed edges."""
    if len(u) == 0:
        return 0, 0
    with np.errstate(over="ignore"):
        h = fmix64(fmix64(u.astype(U64)) ^ (v.astype(U64) * U64(0x9E3779B97F4A7C15)))
        return len(u), int(h.sum(dtype=U64))


def _group_min(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For edges sorted by u: (group starts, group keys, min(u, min v) per group)."""
    gs = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    keys = u[gs]
    mins = np.minimum(np.minimum.reduceat(v, gs), keys)
    return gs, keys, mins


def large_star(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Large-star reduce over the edges of some nodes, given with BOTH directions (all of each node's edges):
    every neighbour larger than the node is attached to the node's smallest neighbour (or itself).
    Returns the emitted undirected edges (x, m) and stats of the distinct input edges."""
    u, v = dedup_edges(u, v)
    n, ck = edge_checksum(u, v)
    if len(u) == 0:
        return u, v, {"edges": 0, "checksum": 0}
    gs, keys, mins = _group_min(u, v)
    gid = np.repeat(np.arange(len(gs)), np.diff(np.r_[gs, len(u)]))
    m = mins[gid]
    sel = v > u
    return v[sel], m[sel], {"edges": n, "checksum": ck}


def small_star(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Small-star reduce; edges given oriented (larger, smaller-or-equal) and grouped by the larger end: the node
    and its smaller neighbours are all attached to the smallest of them."""
    u, v = dedup_edges(u, v)
    if len(u) == 0:
        return u, v
    gs, keys, mins = _group_min(u, v)
    gid = np.repeat(np.arange(len(gs)), np.diff(np.r_[gs, len(u)]))
    m = mins[gid]
    xs = np.concatenate([v, keys])
    ms = np.concatenate([m, mins])
    keep = xs != ms
    return xs[keep], ms[keep]


def labels_from_stars(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At convergence every component is a star around its smallest node: label(u) = min(u, neighbours)."""
    u, v = dedup_edges(u, v)
    if len(u) == 0:
        return u, v
    gs, keys, mins = _group_min(u, v)
    return keys, mins


# --------------------------------------------------------------------------------------------- representatives
def rank_order(ids: Sequence[str], lengths: np.ndarray, scores: np.ndarray | None, keep: str) -> np.ndarray:
    """Indices sorted best-first under the ``keep`` policy; ties always broken by the lowest id."""
    idx = list(range(len(ids)))
    if keep == "longest":
        idx.sort(key=lambda i: (-int(lengths[i]), ids[i]))
    elif keep == "highest_score" and scores is not None:
        idx.sort(key=lambda i: (0 if np.isfinite(scores[i]) else 1, -(scores[i] if np.isfinite(scores[i]) else 0.0), ids[i]))
    else:
        idx.sort(key=lambda i: ids[i])
    return np.array(idx, dtype=np.int64)


def meta_path(meta: str | None) -> str | None:
    if not meta:
        return None
    try:
        obj = json.loads(meta)
    except (TypeError, ValueError):
        return None
    p = obj.get("path") if isinstance(obj, dict) else None
    return None if p is None else str(p)


CLUSTERS_SCHEMA = pa.schema(
    [
        pa.field("cluster_id", pa.string()),
        pa.field("member_id", pa.string()),
        pa.field("is_representative", pa.bool_()),
        pa.field("similarity", pa.float32()),
        pa.field("cluster_size", pa.int64()),
        pa.field("path", pa.string()),
    ]
)

DUPLICATES_SCHEMA = pa.schema(
    [
        pa.field("group_hash", pa.string()),
        pa.field("kept_id", pa.string()),
        pa.field("dropped_id", pa.string()),
        pa.field("dropped_path", pa.string()),
    ]
)


def _candidate_columns(t: pa.Table) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray | None, list]:
    """What choosing a representative reads: doc keys, ids, lengths, scores (None when no row has one), paths."""
    scores = t.column("score").to_numpy(zero_copy_only=False).astype(np.float64)
    return (t.column("doc").to_numpy(), t.column("id").to_pylist(), t.column("length").to_numpy(),
            scores if np.isfinite(scores).any() else None, t.column("path").to_pylist())


def pick_representatives(members: pa.Table, keep: str) -> tuple[pa.Table, np.ndarray]:
    """Members of whole components: columns root (int64), doc (int64), id, length, score, path, sig (binary).
    Returns (clusters side-table rows, doc keys to drop) — one representative per component by ``keep``,
    similarity = signature agreement with the representative."""
    if members.num_rows == 0:
        return CLUSTERS_SCHEMA.empty_table(), np.zeros(0, np.int64)
    members = members.sort_by([("root", "ascending"), ("id", "ascending")])
    root = members.column("root").to_numpy()
    doc, ids, lengths, scores, paths = _candidate_columns(members)
    sig_bytes = members.column("sig").to_pylist()
    gs = np.flatnonzero(np.r_[True, root[1:] != root[:-1]])
    ge = np.r_[gs[1:], len(root)]
    out: dict[str, list] = {f.name: [] for f in CLUSTERS_SCHEMA}
    drops: list[int] = []
    for s, e in zip(gs, ge):
        gids = ids[s:e]
        order = rank_order(gids, lengths[s:e], None if scores is None else scores[s:e], keep)
        rep = s + int(order[0])
        rep_sig = np.frombuffer(sig_bytes[rep], dtype=np.uint32)
        for i in range(s, e):
            sim = 1.0 if i == rep else float((np.frombuffer(sig_bytes[i], dtype=np.uint32) == rep_sig).mean())
            out["cluster_id"].append(ids[rep])
            out["member_id"].append(ids[i])
            out["is_representative"].append(i == rep)
            out["similarity"].append(sim)
            out["cluster_size"].append(int(e - s))
            out["path"].append(paths[i])
            if i != rep:
                drops.append(int(doc[i]))
    return pa.Table.from_pydict(out, schema=CLUSTERS_SCHEMA), np.array(sorted(drops), dtype=np.int64)


# --------------------------------------------------------------------------------------------- exact dedup
def normalize_texts(texts: Any, normalize: Iterable[str]) -> pa.StringArray:
    arr = _as_string_array(texts)
    norm = set(normalize)
    if "case" in norm:
        arr = pc.utf8_lower(arr)
    if "whitespace" in norm:
        arr = pc.utf8_trim(pc.replace_substring_regex(arr, _WS, " "), " ")
    return arr


def content_hashes(texts: Any, normalize: Iterable[str]) -> list[bytes]:
    """xxh3-128 of each normalized text (16 bytes)."""
    arr = normalize_texts(texts, normalize)
    return [xxhash.xxh3_128_digest((s or "").encode("utf-8", "surrogatepass")) for s in arr.to_pylist()]


def exact_groups(rows: pa.Table, keep: str) -> tuple[pa.Table, np.ndarray]:
    """Rows (hash binary, doc int64, id, length, score, path) of one hash partition: one kept per hash group.
    Returns (duplicates side-table rows, doc keys to drop)."""
    if rows.num_rows == 0:
        return DUPLICATES_SCHEMA.empty_table(), np.zeros(0, np.int64)
    rows = rows.sort_by([("hash", "ascending"), ("id", "ascending")])
    hashes = rows.column("hash").to_pylist()
    doc, ids, lengths, scores, paths = _candidate_columns(rows)
    out: dict[str, list] = {f.name: [] for f in DUPLICATES_SCHEMA}
    drops: list[int] = []
    s = 0
    n = len(hashes)
    while s < n:
        e = s + 1
        while e < n and hashes[e] == hashes[s]:
            e += 1
        if e - s > 1:
            order = rank_order(ids[s:e], lengths[s:e], None if scores is None else scores[s:e], keep)
            kept = s + int(order[0])
            for i in range(s, e):
                if i != kept:
                    out["group_hash"].append(hashes[s].hex())
                    out["kept_id"].append(ids[kept])
                    out["dropped_id"].append(ids[i])
                    out["dropped_path"].append(paths[i])
                    drops.append(int(doc[i]))
        s = e
    return pa.Table.from_pydict(out, schema=DUPLICATES_SCHEMA), np.array(sorted(drops), dtype=np.int64)
