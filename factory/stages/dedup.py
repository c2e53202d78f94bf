"""Deduplication: exact (normalized-content hash) and near (MinHash-LSH), as pure logic over batches.

Nothing here imports ray or touches files; ``factory/runtime/run_dedup.py`` wires these pieces into shuffled,
resumable phases.  The pieces:

* **Signatures** (:class:`MinHasher`), vectorized over a whole batch of documents with numpy:

  1. lowercase with ``pyarrow.compute.utf8_lower`` and take the UTF-8 byte buffer of the whole batch;
  2. word tokens are maximal runs of word characters, exactly Python's ``re.findall(r"\\w+", text.lower())``
     (ASCII bytes by a lookup table; non-ASCII characters decoded in numpy and classified once per distinct
     code point with ``str.isalnum()``, the definition ``re`` uses);
  3. each token is hashed once: a polynomial hash over its bytes computed for all tokens at once from one
     prefix sum (mod 2**64), then the 64-bit MurmurHash3 finalizer;
  4. a shingle of ``ngram`` consecutive tokens is ``fmix64(sum_j token_hash[k+j] * C_j) >> 32``, a 32-bit
     value computed arithmetically for every window at once (no per-shingle strings);
  5. the permutation step replicates ``datasketch.MinHash`` (same ``np.random.RandomState(seed)`` draws, same
     arithmetic), so given the same 32-bit shingle hashes the signature equals
     ``MinHash(num_perm, seed, hashfunc=<those hashes>, scheme=...).hashvalues`` bit for bit, for both the
     datasketch-2 default scheme ``affine32`` and the pre-2.0 ``legacy`` scheme ((a*h+b) mod (2^61-1)) & (2^32-1).

  :func:`reference_shingles` / :func:`reference_shingle_hash` are the slow, obvious Python versions of steps
  2-4; the tests feed them to datasketch and compare.

* **LSH banding** (:func:`lsh_params`, :func:`band_keys`), **bucket verification** (:func:`bucket_edges`),
  **connected components** by the alternating large-star / small-star rounds of Kiveris et al. 2014
  (:func:`large_star`, :func:`small_star`), and **representative selection** (:func:`pick_representatives`).

* **Exact dedup**: :func:`content_hashes` (xxh3-128 of the normalized text) and :func:`exact_groups`.

Document keys: inside the dedup stages a row is named by a 64-bit key ``(shard_index << 32) | row_index``;
it is compact to shuffle and says which shard to drop the row from.  Policies (``keep``) use the string id.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from factory.config import DedupConfig

U64 = np.uint64
MASK64 = (1 << 64) - 1
MASK32 = (1 << 32) - 1
MERSENNE = (1 << 61) - 1

_POLY = 0x100000001B3  # odd: invertible mod 2**64
_POLY_INV = pow(_POLY, -1, 1 << 64)
# per-position multipliers of the shingle combination (odd 64-bit constants from splitmix64)
_SHINGLE_C = [
    0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xD6E8FEB86659FD93, 0xA0761D6478BD642F,
    0xE7037ED1A0B428DB, 0x8EBC6AF09C88C6E3, 0x589965CC75374CC3, 0x1D8E4E27C47D124F, 0xC2B2AE3D27D4EB4F,
]
_BAND_C = [0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x27D4EB2F165667C5]

# ASCII word characters of Python's \w
_ASCII_WORD = np.zeros(256, dtype=bool)
for _c in range(128):
    _ASCII_WORD[_c] = chr(_c).isalnum() or chr(_c) == "_"
_WORD_RE = re.compile(r"\w+")


def _shingle_c(n: int) -> list[int]:
    out = list(_SHINGLE_C)
    x = _SHINGLE_C[-1]
    while len(out) < n:
        x = _fmix64_py(x + 0x9E3779B97F4A7C15) | 1
        out.append(x)
    return out[:n]


# --------------------------------------------------------------------------------------------- mixing
def fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer on a uint64 array (wrapping arithmetic)."""
    h = h ^ (h >> U64(33))
    h = h * U64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> U64(33))
    h = h * U64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> U64(33))


def _fmix64_py(h: int) -> int:
    h &= MASK64
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & MASK64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & MASK64
    return h ^ (h >> 33)


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer (datasketch's ``_fmix(hv, 32)``) on a uint32 array."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


# --------------------------------------------------------------------------------------------- reference (slow, obvious)
def reference_tokens(text: str) -> list[str]:
    """datasketch-style word tokens: lowercase, split on ``\\W+``."""
    return _WORD_RE.findall(text.lower())


def reference_shingles(text: str, cfg: DedupConfig) -> list[tuple[str, ...]] | list[bytes]:
    """The shingle set as Python objects (word n-gram tuples, or n-byte strings for ``shingle: char``).
    A document shorter than one shingle but not empty is one shingle of everything it has."""
    n = cfg.ngram
    if cfg.shingle == "char":
        b = _char_normalize_py(text).encode("utf-8")
        if not b:
            return []
        if len(b) < n:
            return [b]
        return [b[i : i + n] for i in range(len(b) - n + 1)]
    toks = reference_tokens(text)
    if not toks:
        return []
    if len(toks) < n:
        return [tuple(toks)]
    return [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]


def _poly_py(data: bytes) -> int:
    h, p = 0, 1
    for byte in data:
        h = (h + byte * p) & MASK64
        p = (p * _POLY) & MASK64
    return h


def reference_shingle_hash(shingle: tuple[str, ...] | bytes, ngram: int) -> int:
    """The 32-bit hash of one shingle, computed the slow way (the vectorized path must agree)."""
    if isinstance(shingle, bytes):
        return _fmix64_py(_poly_py(shingle)) >> 32
    cs = _shingle_c(ngram)
    acc = 0
    for j, tok in enumerate(shingle):
        acc = (acc + _fmix64_py(_poly_py(tok.encode("utf-8"))) * cs[j]) & MASK64
    return _fmix64_py(acc) >> 32


_WS = r"[ \t\n\r\f\v]+"  # ASCII whitespace, the same class for re and RE2


def _char_normalize_py(text: str) -> str:
    return re.sub(_WS, " ", text.lower()).strip(" ")


# --------------------------------------------------------------------------------------------- vectorized shingling
def _as_string_array(texts: Any) -> pa.StringArray:
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks() if texts.num_chunks != 1 else texts.chunk(0)
    if not isinstance(texts, pa.Array):
        texts = pa.array(list(texts), type=pa.string())
    if texts.type == pa.large_string():
        texts = texts.cast(pa.string())
    if texts.null_count:
        texts = pc.fill_null(texts, "")
    return texts


def _buffers(arr: pa.StringArray) -> tuple[np.ndarray, np.ndarray]:
    """(utf-8 bytes of the whole batch, int64 offsets of n+1 documents) without copying the text."""
    n = len(arr)
    bufs = arr.buffers()
    off = np.frombuffer(bufs[1], dtype=np.int32)[arr.offset : arr.offset + n + 1].astype(np.int64)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None and len(bufs[2]) else np.zeros(0, np.uint8)
    return data, off


_POW_CACHE: dict[str, np.ndarray] = {}


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """POLY**i and POLY**-i mod 2**64 for i < n (cached, grown geometrically)."""
    have = _POW_CACHE.get("pow")
    if have is None or len(have) < n:
        m = max(n, 1 << 16, 2 * (0 if have is None else len(have)))
        with np.errstate(over="ignore"):
            pw = np.full(m, _POLY, dtype=U64)
            pw[0] = 1
            pw = np.cumprod(pw, dtype=U64)
            iv = np.full(m, _POLY_INV, dtype=U64)
            iv[0] = 1
            iv = np.cumprod(iv, dtype=U64)
        _POW_CACHE["pow"], _POW_CACHE["inv"] = pw, iv
    return _POW_CACHE["pow"][:n], _POW_CACHE["inv"][:n]


def _word_mask(data: np.ndarray) -> np.ndarray:
    """Per byte: does it belong to a character matched by Python's ``\\w``?"""
    w = ((data >= 97) & (data <= 122)) | ((data >= 48) & (data <= 57)) | (data == 95) | ((data >= 65) & (data <= 90))
    hi = np.flatnonzero(data >= 0x80)
    if len(hi):
        b = data[hi].astype(np.uint32)
        lead = b >= 0xC0
        li = hi[lead]
        b0 = b[lead]
        last = len(data) - 1

        def at(k: int) -> np.ndarray:
            return data[np.minimum(li + k, last)].astype(np.uint32) & 0x3F

        cp = np.where(
            b0 >= 0xF0,
            ((b0 & 0x07) << 18) | (at(1) << 12) | (at(2) << 6) | at(3),
            np.where(b0 >= 0xE0, ((b0 & 0x0F) << 12) | (at(1) << 6) | at(2), ((b0 & 0x1F) << 6) | at(1)),
        )
        uniq, inv = np.unique(cp, return_inverse=True)
        cls = np.fromiter((chr(int(c)).isalnum() for c in uniq), dtype=bool, count=len(uniq))
        lead_cls = cls[inv]
        # continuation bytes take their lead byte's class: index of the latest lead among the high bytes
        pos = np.where(lead, np.arange(len(hi)), 0)
        np.maximum.accumulate(pos, out=pos)
        lead_rank = np.cumsum(lead) - 1
        w[hi] = lead_cls[lead_rank[pos]]
    return w


def _token_spans(data: np.ndarray, off: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start, end, doc) of every word token of the batch, in order; tokens never cross documents."""
    if len(data) == 0:
        z = np.zeros(0, np.int64)
        return z, z, z
    w = _word_mask(data)
    edge = np.diff(w.view(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts = np.flatnonzero(edge == 1)
    ends = np.flatnonzero(edge == -1)
    # a run of word bytes spanning two documents (one ends, the next starts, with word characters) is cut
    inner = off[1:-1]
    inner = inner[(inner > 0) & (inner < len(data))]
    if len(inner):
        cross = inner[w[inner] & w[inner - 1]]
        if len(cross):
            starts = np.union1d(starts, cross)
            ends = np.union1d(ends, cross)
    doc = np.searchsorted(off, starts, side="right") - 1
    return starts, ends, doc


def _span_hashes(data: np.ndarray, starts: np.ndarray, ends: np.ndarray, compact: bool = False) -> np.ndarray:
    """fmix64(polynomial hash) of data[s:e] for every span, all at once (mod 2**64 arithmetic)."""
    if len(starts) == 0:
        return np.zeros(0, U64)
    if compact:
        # hash only the bytes inside spans: gather them into one contiguous stream first
        lens = ends - starts
        cstart = np.zeros(len(starts), np.int64)
        np.cumsum(lens[:-1], out=cstart[1:])
        total = int(cstart[-1] + lens[-1])
        owner = np.repeat(np.arange(len(starts)), lens)
        src = np.arange(total, dtype=np.int64) - cstart[owner] + starts[owner]
        stream = data[src]
        s, e = cstart, cstart + lens
    else:
        stream, s, e = data, starts, ends
        total = len(data)
    pw, iv = _powers(total + 1)
    with np.errstate(over="ignore"):
        pre = np.zeros(total + 1, U64)
        np.cumsum(stream.astype(U64) * pw[:total], out=pre[1:])
        h = (pre[e] - pre[s]) * iv[s]
        return fmix64(h)


def _windows(doc_first: np.ndarray, doc_count: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows of n items within each document; a document with 0 < count < n gets one window of all it has.
    Returns (window start index, window length, doc) in document order."""
    full = doc_count >= n
    per = np.where(full, doc_count - n + 1, (doc_count > 0).astype(np.int64))
    total = int(per.sum())
    doc = np.repeat(np.arange(len(doc_count)), per)
    first = np.zeros(len(per), np.int64)
    np.cumsum(per[:-1], out=first[1:]) if len(per) > 1 else None
    start = doc_first[doc] + (np.arange(total, dtype=np.int64) - first[doc])
    length = np.where(full[doc], n, doc_count[doc])
    return start, length, doc


def shingle_hashes(texts: Any, cfg: DedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """All shingle hashes of a batch: (uint32 hashes in document order, int64 offsets of n+1 documents).
    Duplicates within a document are kept (MinHash does not care; see :func:`shingle_sets`)."""
    arr = _as_string_array(texts)
    ndoc = len(arr)
    n = cfg.ngram
    if cfg.shingle == "char":
        norm = pc.utf8_trim(pc.replace_substring_regex(pc.utf8_lower(arr), _WS, " "), " ")
        data, off = _buffers(norm)
        lens = np.diff(off)
        start, length, doc = _windows(off[:-1], lens, n)
        h = _span_hashes(data, start, start + length, compact=False)
        sh = (h >> U64(32)).astype(np.uint32)
    else:
        data, off = _buffers(pc.utf8_lower(arr))
        ts, te, tdoc = _token_spans(data, off)
        th = _span_hashes(data, ts, te)
        counts = np.bincount(tdoc, minlength=ndoc).astype(np.int64)
        first = np.zeros(ndoc, np.int64)
        if ndoc > 1:
            np.cumsum(counts[:-1], out=first[1:])
        cs = np.array(_shingle_c(n), dtype=U64)
        start, length, doc = _windows(first, counts, n)
        T = len(th)
        with np.errstate(over="ignore"):
            acc = np.zeros(len(start), U64)
            full = length == n
            fs = start[full]
            accf = np.zeros(len(fs), U64)
            for j in range(n):
                accf += th[fs + j] * cs[j]
            acc[full] = accf
            short = np.flatnonzero(~full)
            for i in short:  # documents with fewer than n tokens: one shingle of all of them
                s0, ln = int(start[i]), int(length[i])
                acc[i] = (th[s0 : s0 + ln] * cs[:ln]).sum(dtype=U64) if T else 0
            sh = (fmix64(acc) >> U64(32)).astype(np.uint32)
    dcount = np.bincount(doc, minlength=ndoc)
    doff = np.zeros(ndoc + 1, np.int64)
    np.cumsum(dcount, out=doff[1:])
    return sh, doff


def shingle_sets(texts: Any, cfg: DedupConfig) -> list[np.ndarray]:
    """Sorted unique shingle hashes per document (for exact Jaccard)."""
    sh, off = shingle_hashes(texts, cfg)
    return [np.unique(sh[off[i] : off[i + 1]]) for i in range(len(off) - 1)]


def exact_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) == 0 and len(b) == 0:
        return 1.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


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


def pick_representatives(members: pa.Table, keep: str) -> tuple[pa.Table, np.ndarray]:
    """Members of whole components: columns root (int64), doc (int64), id, length, score, path, sig (binary).
    Returns (clusters side-table rows, doc keys to drop) — one representative per component by ``keep``,
    similarity = signature agreement with the representative."""
    if members.num_rows == 0:
        return CLUSTERS_SCHEMA.empty_table(), np.zeros(0, np.int64)
    members = members.sort_by([("root", "ascending"), ("id", "ascending")])
    root = members.column("root").to_numpy()
    doc = members.column("doc").to_numpy()
    ids = members.column("id").to_pylist()
    lengths = members.column("length").to_numpy()
    scores = members.column("score").to_numpy(zero_copy_only=False).astype(np.float64)
    has_scores = bool(np.isfinite(scores).any())
    paths = members.column("path").to_pylist()
    sig_bytes = members.column("sig").to_pylist()
    gs = np.flatnonzero(np.r_[True, root[1:] != root[:-1]])
    ge = np.r_[gs[1:], len(root)]
    out: dict[str, list] = {f.name: [] for f in CLUSTERS_SCHEMA}
    drops: list[int] = []
    for s, e in zip(gs, ge):
        gids = ids[s:e]
        order = rank_order(gids, lengths[s:e], scores[s:e] if has_scores else None, keep)
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
    doc = rows.column("doc").to_numpy()
    ids = rows.column("id").to_pylist()
    lengths = rows.column("length").to_numpy()
    scores = rows.column("score").to_numpy(zero_copy_only=False).astype(np.float64)
    has_scores = bool(np.isfinite(scores).any())
    paths = rows.column("path").to_pylist()
    out: dict[str, list] = {f.name: [] for f in DUPLICATES_SCHEMA}
    drops: list[int] = []
    s = 0
    n = len(hashes)
    while s < n:
        e = s + 1
        while e < n and hashes[e] == hashes[s]:
            e += 1
        if e - s > 1:
            order = rank_order(ids[s:e], lengths[s:e], scores[s:e] if has_scores else None, keep)
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
