"""Word / character shingles hashed to 32 bits, vectorized over a batch; the slow reference versions the tests
compare against; exact Jaccard of shingle sets."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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


