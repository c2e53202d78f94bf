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


from factory.stages.dedup.shingles import (  # noqa: F401
    fmix64,
    fmix32,
    reference_tokens,
    reference_shingles,
    reference_shingle_hash,
    _buffers,
    _token_spans,
    shingle_hashes,
    shingle_sets,
    exact_jaccard,
)
from factory.stages.dedup.minhash import (  # noqa: F401
    datasketch_permutations,
    MinHasher,
    lsh_params,
    band_keys,
    signature_similarity,
    bucket_edges,
)
from factory.stages.dedup.clusters import (  # noqa: F401
    dedup_edges,
    edge_checksum,
    large_star,
    small_star,
    labels_from_stars,
    rank_order,
    meta_path,
    pick_representatives,
    normalize_texts,
    content_hashes,
    exact_groups,
)
