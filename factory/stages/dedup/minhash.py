"""MinHash signatures equal to datasketch's, LSH banding with datasketch's parameter choice, bucket verification."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import xxhash

from factory.config import DedupConfig
from factory.stages.dedup.shingles import (
    MASK32,
    MERSENNE,
    U64,
    _as_string_array,
    _buffers,
    _fmix64_py,
    exact_jaccard,
    fmix32,
    fmix64,
    shingle_hashes,
)


# --------------------------------------------------------------------------------------------- MinHash
def datasketch_permutations(num_perm: int, seed: int, scheme: str) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) drawn exactly as ``datasketch.MinHash._init_permutations`` (datasketch 2.x) draws them."""
    gen = np.random.RandomState(seed)
    if scheme == "legacy":
        ab = np.array(
            [(gen.randint(1, MERSENNE, dtype=np.uint64), gen.randint(0, MERSENNE, dtype=np.uint64)) for _ in range(num_perm)],
            dtype=np.uint64,
        ).T
        return ab[0].copy(), ab[1].copy()
    if scheme == "affine32":
        a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
        b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
        return a, b
    raise ValueError(f"unsupported MinHash scheme {scheme!r} (affine32 | legacy)")


class MinHasher:
    """Batch MinHash signatures, bit-identical to datasketch given the same 32-bit shingle hashes.

    Signatures are uint32 (num_docs, num_perm); a document without any shingle (empty, or no word token)
    keeps datasketch's empty value 2**32-1 everywhere and is never a near-duplicate candidate."""

    EMPTY = np.uint32(MASK32)

    def __init__(self, cfg: DedupConfig, chunk: int = 16384):
        self.cfg = cfg
        self.num_perm = cfg.num_perm
        self.scheme = cfg.scheme
        self.a, self.b = datasketch_permutations(cfg.num_perm, cfg.seed, cfg.scheme)
        self.chunk = chunk

    def permute_min(self, sh: np.ndarray, doff: np.ndarray) -> np.ndarray:
        """Column-wise min over each document's shingles of the permuted hashes: uint32 (num_docs, num_perm)."""
        ndoc = len(doff) - 1
        P = self.num_perm
        sig = np.full((P, ndoc), self.EMPTY, dtype=np.uint32)
        N = len(sh)
        if N == 0:
            return np.ascontiguousarray(sig.T)
        C = self.chunk
        if self.scheme == "affine32":
            hv_all = fmix32(sh.astype(np.uint32))
            a, b = self.a[:, None], self.b[:, None]
            buf = np.empty((P, C), np.uint32)
        else:
            hv_all = sh.astype(U64)
            a, b = self.a[:, None], self.b[:, None]
            buf = np.empty((P, C), U64)
            tmp = np.empty((P, C), U64)
            p = U64(MERSENNE)
        with np.errstate(over="ignore"):
            for c0 in range(0, N, C):
                hv = hv_all[c0 : c0 + C]
                m = len(hv)
                o = buf[:, :m]
                np.multiply(a, hv[None, :], out=o)
                np.add(o, b, out=o)
                if self.scheme == "legacy":
                    t = tmp[:, :m]
                    # x mod (2^61-1) without division: (x & p) + (x >> 61), then one conditional subtract
                    np.right_shift(o, U64(61), out=t)
                    np.bitwise_and(o, p, out=o)
                    np.add(o, t, out=o)
                    np.greater_equal(o, p, out=t, casting="unsafe")
                    np.multiply(t, p, out=t)
                    np.subtract(o, t, out=o)
                    np.bitwise_and(o, U64(MASK32), out=o)
                # documents cut by this chunk: segment starts are the chunk start and the document
                # boundaries inside it (empty documents give repeated boundaries, hence unique)
                d0 = int(np.searchsorted(doff, c0, side="right")) - 1
                d1 = int(np.searchsorted(doff, c0 + m, side="left"))
                inner = doff[d0 + 1 : d1]
                seg = np.unique(np.r_[c0, inner[inner < c0 + m]])
                docs = np.searchsorted(doff, seg, side="right") - 1
                mins = np.minimum.reduceat(o, seg - c0, axis=1)
                sig[:, docs] = np.minimum(sig[:, docs], mins.astype(np.uint32))
        return np.ascontiguousarray(sig.T)

    def signatures(self, texts: Any, batch_bytes: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
        """(uint32 signatures (num_docs, num_perm), shingle count per document).  The batch is cut into
        sub-batches of about ``batch_bytes`` of text so the working arrays stay cache-sized."""
        arr = _as_string_array(texts)
        n = len(arr)
        if n == 0:
            return np.zeros((0, self.num_perm), np.uint32), np.zeros(0, np.int64)
        _, off = _buffers(arr)
        sigs, counts = [], []
        i = 0
        while i < n:
            j = int(np.searchsorted(off, off[i] + batch_bytes, side="right")) - 1
            j = min(max(j, i + 1), n)
            sh, doff = shingle_hashes(arr.slice(i, j - i), self.cfg)
            sigs.append(self.permute_min(sh, doff))
            counts.append(np.diff(doff))
            i = j
        return np.concatenate(sigs), np.concatenate(counts)


# --------------------------------------------------------------------------------------------- LSH
def lsh_params(cfg: DedupConfig) -> tuple[int, int]:
    """(bands, rows) from datasketch's own optimizer, tuned for ``candidate_threshold`` (high recall)."""
    from datasketch.lsh import _optimal_param

    t = cfg.candidate_threshold if cfg.candidate_threshold is not None else cfg.threshold
    return _optimal_param(t, cfg.num_perm, cfg.false_positive_weight, cfg.false_negative_weight)


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """uint64 (num_docs, bands): a hash of each band's rows, salted by the band index."""
    n = sig.shape[0]
    out = np.empty((n, bands), U64)
    cs = np.array([_fmix64_py(0x9E3779B97F4A7C15 * (j + 1)) | 1 for j in range(rows)], dtype=U64)
    with np.errstate(over="ignore"):
        for i in range(bands):
            block = sig[:, i * rows : (i + 1) * rows].astype(U64)
            acc = np.full(n, U64(_fmix64_py(i + 1)))
            for j in range(rows):
                acc = acc + block[:, j] * cs[j]
            out[:, i] = fmix64(acc)
    return out


def signature_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard: the fraction of agreeing signature positions (a: (k,P) or (P,), b: (P,))."""
    return (a == b).mean(axis=-1)


def bucket_edges(
    keys: np.ndarray,
    docs: np.ndarray,
    sigs: np.ndarray,
    threshold: float,
    sets: Sequence[np.ndarray] | None = None,
    all_pairs_max: int = 2000,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Confirmed edges from band buckets.

    Rows (key, doc, signature[, shingle set]) of one partition of band keys.  Documents sharing a key are
    candidates; a pair is confirmed when its similarity is >= threshold: the signature agreement, or the exact
    Jaccard of the shingle sets when ``sets`` is given.  Members with identical signatures are linked to the
    first of them (a star; under exact verification each is checked against it), and distinct signatures
    are compared all-pairs (star to the bucket's first member beyond ``all_pairs_max`` distinct ones).
    Returns (u, v, similarity, candidate pairs checked) with u < v, deduplicated."""
    if len(keys) == 0:
        z = np.zeros(0, np.int64)
        return z, z, np.zeros(0, np.float32), 0
    order = np.lexsort((docs, keys))
    keys, docs = keys[order], docs[order]
    bstart = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    bend = np.r_[bstart[1:], len(keys)]
    big = np.flatnonzero(bend - bstart >= 2)
    us: list[np.ndarray] = []
    vs: list[np.ndarray] = []
    ss: list[np.ndarray] = []
    checked = 0
    sig_hash = None
    for bi in big:
        idx = order[bstart[bi] : bend[bi]]
        members = docs[bstart[bi] : bend[bi]]
        # drop repeated docs (the same doc cannot be in a bucket twice, but stay safe)
        _, first_pos = np.unique(members, return_index=True)
        if len(first_pos) < len(members):
            keep_pos = np.sort(first_pos)
            idx, members = idx[keep_pos], members[keep_pos]
            if len(members) < 2:
                continue
        S = sigs[idx]
        if sig_hash is None:
            sig_hash = {}
        hs = np.array([xxhash.xxh3_64_intdigest(row.tobytes()) for row in S], dtype=U64)
        _, grp_first, grp_inv = np.unique(hs, return_index=True, return_inverse=True)
        # identical signatures: star to the group's first member
        for gi, f in enumerate(grp_first):
            dup = np.flatnonzero(grp_inv == gi)
            dup = dup[dup != f]
            if len(dup) == 0:
                continue
            checked += len(dup)
            if sets is not None:
                sim = np.array([exact_jaccard(sets[idx[f]], sets[idx[d]]) for d in dup], dtype=np.float32)
            else:
                sim = np.ones(len(dup), np.float32)
            ok = sim >= threshold
            us.append(np.full(int(ok.sum()), members[f]))
            vs.append(members[dup[ok]])
            ss.append(sim[ok])
        reps = np.sort(grp_first)
        if len(reps) < 2:
            continue
        R = S[reps]
        if len(reps) <= all_pairs_max:
            for i in range(len(reps) - 1):
                est = (R[i + 1 :] == R[i]).mean(axis=1)
                j = np.arange(i + 1, len(reps))
                if sets is not None:
                    cand = j
                    sim = np.array([exact_jaccard(sets[idx[reps[i]]], sets[idx[reps[k]]]) for k in cand], dtype=np.float32)
                else:
                    cand, sim = j, est.astype(np.float32)
                checked += len(cand)
                ok = sim >= threshold
                us.append(np.full(int(ok.sum()), members[reps[i]]))
                vs.append(members[reps[cand[ok]]])
                ss.append(sim[ok])
        else:
            est = (R[1:] == R[0]).mean(axis=1).astype(np.float32)
            if sets is not None:
                est = np.array([exact_jaccard(sets[idx[reps[0]]], sets[idx[r]]) for r in reps[1:]], dtype=np.float32)
            checked += len(est)
            ok = est >= threshold
            us.append(np.full(int(ok.sum()), members[reps[0]]))
            vs.append(members[reps[1:][ok]])
            ss.append(est[ok])
    if not us:
        z = np.zeros(0, np.int64)
        return z, z, np.zeros(0, np.float32), checked
    u = np.concatenate(us).astype(np.int64)
    v = np.concatenate(vs).astype(np.int64)
    s = np.concatenate(ss).astype(np.float32)
    lo, hi = np.minimum(u, v), np.maximum(u, v)
    o = np.lexsort((hi, lo))
    lo, hi, s = lo[o], hi[o], s[o]
    first = np.r_[True, (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])]
    return lo[first], hi[first], s[first], checked


