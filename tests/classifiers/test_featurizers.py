"""Featurizers load offline from site-packages, truncate, are batch-invariant, and cache per document."""

from __future__ import annotations

import numpy as np
import pytest

from classifiers.featurizers import CHARS_PER_TOKEN_BOUND, EmbeddingCache, get_featurizer, make_featurizer, text_key
from tests.classifiers.helpers import demo_table


@pytest.fixture(scope="module")
def docs() -> list[str]:
    """20 real documents, each longer than the token caps and with its own first 24 characters (many files
    share a licence header: identical heads would embed identically at 32 tokens, whatever the corpus holds)."""
    out, heads = [], set()
    for text in demo_table(400).column("text").to_pylist():
        if len(text) > 64 * CHARS_PER_TOKEN_BOUND and text[:24] not in heads:
            heads.add(text[:24])
            out.append(text)
    assert len(out) >= 20
    return out[:20]


@pytest.fixture(scope="module")
def minilm():
    return make_featurizer("minilm", max_tokens=64, threads=1)


def test_minilm_offline_shape_and_norm(minilm, docs):
    assert minilm.dim == 384 and "all-MiniLM-L6-v2" in minilm.id and "tok64" in minilm.id
    X = minilm.embed(docs[:6])
    assert X.shape == (6, 384) and X.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    assert len({tuple(np.round(r, 4)) for r in X}) == 6  # different documents, different vectors


def test_minilm_vector_does_not_depend_on_batch_mates(minilm, docs):
    together = minilm.embed(docs[:10])
    alone = np.stack([minilm.embed([d])[0] for d in docs[:10]])
    shuffled = minilm.embed(docs[:10][::-1])[::-1]
    assert np.array_equal(together, alone)
    assert np.array_equal(together, shuffled)


def test_truncation_to_the_token_cap(minilm, docs):
    d = docs[0]
    assert len(d) > 64 * CHARS_PER_TOKEN_BOUND
    tail_changed = d[: 64 * CHARS_PER_TOKEN_BOUND] + "\n# something else entirely " * 50
    a, b = minilm.embed([d, tail_changed])
    assert np.array_equal(a, b)  # only the head is read
    head_changed = "import os\n" * 40 + d
    c = minilm.embed([head_changed])[0]
    assert not np.array_equal(a, c)


def test_cache_reuses_vectors_across_instances(tmp_path, docs):
    f = get_featurizer("minilm", max_tokens=64, threads=1, cache_dir=tmp_path)
    first = f.embed(docs[:8] + docs[:2])  # duplicates inside one call embed once
    assert f.cache.misses == 8
    again = f.embed(docs[:8])
    assert f.cache.hits == 8 and f.cache.misses == 8
    assert np.array_equal(first[:8], again)
    g = get_featurizer("minilm", max_tokens=64, threads=1, cache_dir=tmp_path)  # a new process would see this
    assert len(g.cache) == 8
    mixed = g.embed(docs[4:12])
    assert g.cache.hits == 4 and g.cache.misses == 4
    assert np.array_equal(mixed[:4], first[4:8])
    # another token cap is another featurizer id: its own cache directory, no false hits
    h = get_featurizer("minilm", max_tokens=32, threads=1, cache_dir=tmp_path)
    assert h.id != f.id and len(h.cache) == 0
    assert text_key(f.id, docs[0]) != text_key(h.id, docs[0])


def test_cache_ignores_a_torn_file(tmp_path):
    c = EmbeddingCache(tmp_path, "fid", 4)
    c.put_many(["k1"], np.ones((1, 4), np.float32))
    (c.dir / "part-999-torn.parquet").write_bytes(b"PAR1 not really")
    c2 = EmbeddingCache(tmp_path, "fid", 4)
    assert len(c2) == 1 and np.array_equal(c2.get_many(["k1"])[0], np.ones(4, np.float32))


@pytest.mark.slow
def test_smollm_mean_pooled_gguf_embeddings(tmp_path, docs):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed")
    f = make_featurizer("smollm", max_tokens=32, threads=1)
    assert f.dim == 576 and "SmolLM2-135M" in f.id and ":mean:" in f.id
    X = f.embed(docs[:4])
    assert X.shape == (4, 576) and np.isfinite(X).all()
    assert len({tuple(np.round(r, 3)) for r in X}) == 4
    # one document per llama.cpp call: the same vector alone, in another order, and through the cache
    assert np.array_equal(X[::-1], f.embed(docs[:4][::-1]))
    cached = get_featurizer("smollm", max_tokens=32, threads=1, cache_dir=tmp_path)
    assert np.array_equal(cached.embed(docs[:4]), X) and cached.cache.misses == 4
    assert np.array_equal(cached.embed(docs[:4]), X) and cached.cache.hits == 4
