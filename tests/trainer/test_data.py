from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from trainer.data import TokenShards, WindowSampler, pack_parquet_files, read_meta, split_of


def _stream(token_dir, split):
    meta = read_meta(token_dir)
    parts = [np.fromfile(token_dir / s["file"], dtype=meta["dtype"]) for s in meta["splits"][split]["shards"]]
    return np.concatenate(parts).astype(np.int64)


def test_packing_puts_eos_between_documents_and_splits_by_document(token_dir, tok, stdlib_docs):
    meta = read_meta(token_dir)
    assert meta["tokenizer"] == "smollm2" and meta["vocab_size"] == 49152 and meta["dtype"] == "uint16"
    assert tok.decode([meta["eos_id"]]) == "<|endoftext|>"
    want = {"train": [], "val": []}
    for doc_id, text in stdlib_docs:
        want[split_of(doc_id, 0.15, 0)].append(tok.encode(text) + [tok.eos_id])
    assert want["val"] and want["train"], "both splits must get documents"
    for split in ("train", "val"):
        stream = _stream(token_dir, split)
        # Exactly: doc tokens, EOS, doc tokens, EOS, ... in input order; every document whole in one split.
        np.testing.assert_array_equal(stream, np.concatenate([np.array(d) for d in want[split]]))
        assert meta["splits"][split]["docs"] == len(want[split])
        assert meta["splits"][split]["tokens"] == stream.size
        assert int((stream == tok.eos_id).sum()) == len(want[split])


def test_val_split_is_seeded_and_order_independent():
    ids = [f"doc-{i}" for i in range(4000)]
    a = {i for i in ids if split_of(i, 0.1, seed=0) == "val"}
    b = {i for i in reversed(ids) if split_of(i, 0.1, seed=0) == "val"}
    c = {i for i in ids if split_of(i, 0.1, seed=1) == "val"}
    assert a == b
    assert a != c
    assert 300 < len(a) < 500  # ~10%


def test_pack_parquet_files_reads_dataset_version_columns(tmp_path, tok):
    table = pa.table({"id": ["a", "b", "c"], "text": ["def f():\n    return 1\n", "", "x = 2\n"],
                      "source": ["s"] * 3, "meta": ["{}"] * 3})
    pq.write_table(table, tmp_path / "part-0.parquet")
    meta = pack_parquet_files([tmp_path / "part-0.parquet"], tmp_path / "tok", tok, seq_len=8,
                              val_fraction=0.0, seed=0)
    assert meta["skipped_empty_docs"] == 1
    assert meta["splits"]["train"]["docs"] == 2 and meta["splits"]["val"]["docs"] == 0
    stream = _stream(tmp_path / "tok", "train")
    expect = tok.encode("def f():\n    return 1\n") + [tok.eos_id] + tok.encode("x = 2\n") + [tok.eos_id]
    assert stream.tolist() == expect
    assert json.loads((tmp_path / "tok" / "meta.json").read_text())["source_files"]


def test_windows_and_resumable_sampler(token_dir):
    shards = TokenShards(token_dir, "train", seq_len=64)
    stream = _stream(token_dir, "train")
    assert shards.n_windows == (stream.size - 1) // 64
    np.testing.assert_array_equal(shards.window(3), stream[192:257])
    x, y = shards.batch([0, 5])
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])  # targets are inputs shifted by one

    s1 = WindowSampler(shards, seed=7)
    first = [s1.next_indices(5) for _ in range(3)]
    saved = (s1.state.epoch, s1.state.cursor, s1.state.windows_seen)
    rest = [s1.next_indices(5) for _ in range(int(shards.n_windows / 5) + 3)]  # crosses an epoch
    s2 = WindowSampler(shards, seed=7)
    s2.state.epoch, s2.state.cursor, s2.state.windows_seen = saved
    assert [s2.next_indices(5) for _ in range(len(rest))] == rest
    assert s1.state.epoch >= 1
    assert sorted(i for b in first for i in b) != list(range(15))  # shuffled, not sequential
