"""Dedup stage logic without Ray: signatures bit-equal to datasketch on real files, LSH params, connected
components against scipy, keep policies, and the edge cases of shingling."""

from __future__ import annotations

import random
import re
import sysconfig
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from factory.config import DedupConfig
from factory.stages import dedup as dd

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def _real_files(k: int, seed: int = 0) -> list[tuple[str, str]]:
    files = sorted(p for p in STDLIB.glob("*.py") if p.is_file())
    files += sorted(STDLIB.glob("encodings/*.py"))[:40]  # non-ASCII content (codec tables)
    random.Random(seed).shuffle(files)
    out = []
    for p in files:
        try:
            out.append((str(p), p.read_text(encoding="utf-8")))
        except (UnicodeDecodeError, OSError):
            continue
        if len(out) == k:
            break
    return out


@pytest.fixture(scope="module")
def real_docs() -> list[tuple[str, str]]:
    docs = _real_files(60)
    # make sure the sample exercises non-ASCII word characters and punctuation
    docs.append(("<unicode>", "Ünïcödé naïve café — «quoted» ΑΒΓ δέλτα 東京 x_1 ½ ² test\u00a0nbsp Straße ǅ"))
    # (not "İ": Python lowercases it to "i" + U+0307 (full case mapping), Arrow to "i" (simple mapping))
    return docs


def test_tokens_match_python_regex(real_docs):
    cfg = DedupConfig()
    texts = [t for _, t in real_docs]
    data, off = dd._buffers(pa.compute.utf8_lower(pa.array(texts)))
    s, e, doc = dd._token_spans(data, off)
    for i, text in enumerate(texts):
        got = [bytes(data[a:b]).decode("utf-8") for a, b in zip(s[doc == i], e[doc == i])]
        assert got == re.findall(r"\w+", text.lower()), real_docs[i][0]
    assert cfg.ngram == 5


@pytest.mark.parametrize("scheme", ["affine32", "legacy"])
@pytest.mark.parametrize("shingle,ngram", [("word", 5), ("char", 7)])
def test_signatures_bit_equal_datasketch(real_docs, scheme, shingle, ngram):
    """Given the same 32-bit shingle hashes, our batch signatures equal datasketch's MinHash bit for bit."""
    from datasketch import MinHash

    cfg = DedupConfig(scheme=scheme, shingle=shingle, ngram=ngram, num_perm=128, seed=7)
    if shingle == "char":
        real_docs = real_docs[:12] + real_docs[-1:]  # the slow reference is per byte
    texts = [t for _, t in real_docs]
    sh, off = dd.shingle_hashes(texts, cfg)
    sig, nsh = dd.MinHasher(cfg, chunk=1000).signatures(pa.array(texts), batch_bytes=50_000)  # many cuts
    assert sig.dtype == np.uint32 and sig.shape == (len(texts), 128)
    for i, (path, text) in enumerate(real_docs):
        shingles = dd.reference_shingles(text, cfg)
        ref_hashes = [dd.reference_shingle_hash(s, ngram) for s in shingles]
        assert sh[off[i] : off[i + 1]].tolist() == ref_hashes, path  # vectorized hashing == the slow one
        table = dict(zip(shingles, ref_hashes))
        m = MinHash(num_perm=128, seed=7, hashfunc=lambda s: table[s], scheme=scheme)
        m.update_batch(shingles)
        assert np.array_equal(m.hashvalues.astype(np.uint64), sig[i].astype(np.uint64)), path
        assert nsh[i] == len(shingles)


def test_permutations_are_datasketchs():
    from datasketch import MinHash

    for scheme in ("affine32", "legacy"):
        a, b = dd.datasketch_permutations(64, 3, scheme)
        pa_, pb = MinHash(num_perm=64, seed=3, scheme=scheme).permutations
        assert np.array_equal(a, np.asarray(pa_)) and np.array_equal(b, np.asarray(pb))


def test_lsh_params_from_datasketch():
    from datasketch.lsh import _optimal_param

    cfg = DedupConfig(threshold=0.8, candidate_threshold=0.7)
    assert dd.lsh_params(cfg) == _optimal_param(0.7, 128, 0.5, 0.5)
    assert dd.lsh_params(DedupConfig(candidate_threshold=None)) == _optimal_param(0.8, 128, 0.5, 0.5)
    with pytest.raises(ValueError):
        DedupConfig(threshold=0.8, candidate_threshold=0.9)


def test_shingling_edge_cases():
    cfg = DedupConfig()
    mh = dd.MinHasher(cfg)
    texts = ["", "   \n\t ", "hello", "two words", "one two three four five six", "!!! ??? ...", "HELLO"]
    sig, nsh = mh.signatures(texts)
    # empty / no word token: no shingle, the empty signature (never a candidate)
    assert nsh.tolist() == [0, 0, 1, 1, 2, 0, 1]
    assert (sig[0] == np.uint32(2**32 - 1)).all() and (sig[5] == sig[0]).all()
    # shorter than the shingle size: one shingle of all the tokens; case-insensitive
    assert (sig[2] == sig[6]).all()
    assert not (sig[2] == sig[3]).all()
    assert sig.shape == (7, 128)
    empty_sig, empty_n = mh.signatures([])
    assert empty_sig.shape == (0, 128) and len(empty_n) == 0


def test_band_keys_and_bucket_verification():
    cfg = DedupConfig(verify="signature")
    docs = [t for _, t in _real_files(8, seed=3)]
    a = docs[0]
    near = a.replace("\n", "\n# x\n", 3)  # tiny edit: a near duplicate
    texts = [a, near, a, docs[1]]
    sig, _ = dd.MinHasher(cfg).signatures(texts)
    b, r = dd.lsh_params(cfg)
    keys = dd.band_keys(sig, b, r)
    assert keys.shape == (4, b) and keys.dtype == np.uint64
    assert (keys[0] == keys[2]).all()
    flat = keys.reshape(-1)
    doc = np.repeat(np.arange(4), b)
    sigs = np.repeat(sig, b, axis=0)
    u, v, sim, checked = dd.bucket_edges(flat, doc, sigs, 0.8)
    pairs = set(zip(u.tolist(), v.tolist()))
    assert (0, 2) in pairs and (0, 1) in pairs and all(3 not in p for p in pairs)
    assert (sim >= 0.8).all() and checked >= 2
    # exact verification uses the shingle sets
    sets = dd.shingle_sets(texts, cfg)
    setrows = [sets[i] for i in doc]
    u2, v2, sim2, _ = dd.bucket_edges(flat, doc, sigs, 0.8, setrows)
    for x, y, s in zip(u2, v2, sim2):
        assert s == pytest.approx(dd.exact_jaccard(sets[x], sets[y]))


def _components_by_stars(u: np.ndarray, v: np.ndarray) -> dict[int, int]:
    """The distributed algorithm with a single partition, run to convergence in-process."""
    a, b = np.concatenate([u, v]), np.concatenate([v, u])
    prev = None
    for _ in range(100):
        x, m, st = dd.large_star(a, b)
        if st["edges"] == 0 or (st["edges"], st["checksum"]) == prev:
            nodes, roots = dd.labels_from_stars(a, b)
            return dict(zip(nodes.tolist(), roots.tolist()))
        prev = (st["edges"], st["checksum"])
        x, m = dd.small_star(x, m)
        a, b = np.concatenate([x, m]), np.concatenate([m, x])
    raise AssertionError("did not converge")


def test_connected_components_match_scipy():
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rng = np.random.default_rng(0)
    n = 3000
    # long chains (worst case for label propagation) plus random edges
    chain = np.arange(0, 400)
    u = np.concatenate([chain[:-1], rng.integers(500, n, 1500)])
    v = np.concatenate([chain[1:], rng.integers(500, n, 1500)])
    keep = u != v
    u, v = u[keep].astype(np.int64) << 32 >> 32, v[keep].astype(np.int64)
    labels = _components_by_stars(u, v)
    g = coo_matrix((np.ones(len(u)), (u, v)), shape=(n, n))
    _, comp = connected_components(g, directed=False)
    nodes = np.unique(np.concatenate([u, v]))
    for x in nodes:
        members = nodes[comp[nodes] == comp[x]]
        assert labels[int(x)] == int(members.min())


def test_exact_groups_keep_policies():
    rows = pa.table(
        {
            "hash": pa.array([b"a" * 16, b"a" * 16, b"a" * 16, b"b" * 16], type=pa.binary(16)),
            "doc": pa.array([(0 << 32) | 0, (0 << 32) | 1, (1 << 32) | 0, (1 << 32) | 1], type=pa.int64()),
            "id": ["id3", "id1", "id2", "solo"],
            "length": pa.array([5, 9, 7, 1], type=pa.int64()),
            "score": pa.array([0.1, 0.2, 0.9, float("nan")]),
            "path": ["p3", "p1", "p2", "p4"],
        }
    )
    for keep, kept in [("lowest_id", "id1"), ("longest", "id1"), ("highest_score", "id2")]:
        dups, drops = dd.exact_groups(rows, keep)
        assert set(dups.column("kept_id").to_pylist()) == {kept}
        assert sorted(dups.column("dropped_id").to_pylist()) == sorted({"id1", "id2", "id3"} - {kept})
        assert len(drops) == 2
    assert dd.content_hashes(["a  b\n", "a b", "A B"], ["whitespace"])[0] == dd.content_hashes(["a b"], ["whitespace"])[0]
    h = dd.content_hashes(["a b", "A B"], ["whitespace", "case"])
    assert h[0] == h[1]
    assert dd.content_hashes(["a b", "A B"], ["whitespace"])[0] != dd.content_hashes(["A B"], ["whitespace"])[0]
