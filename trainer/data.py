"""Pack documents into token shards, and read them back as training windows.

Packing (phi-1's recipe): every document is tokenized and followed by the end-of-text token, the results are
concatenated into one stream per split, and training reads `seq_len + 1`-token windows from that stream
(input = window[:-1], target = window[1:]). Windows ignore document boundaries; EOS tells the model where
one document stops.

The validation split is chosen per DOCUMENT, by a seeded hash of its id: a document is wholly in train or
wholly in val, and the choice does not depend on the order or on what else is in the corpus.

On disk (`out_dir/`):
    meta.json                       written last, so its presence means the shards are complete
    train_00000.bin, ...            raw little-endian uint16 (uint32 when vocab > 65535), np.memmap-able
    val_00000.bin, ...
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Union

import numpy as np

from trainer.tokenize import Tokenizer, load_tokenizer

FORMAT = "textbook-factory/tokens-v1"
SPLITS = ("train", "val")


def split_of(doc_id: str, val_fraction: float, seed: int) -> str:
    """'val' for a seeded-hash-chosen `val_fraction` of document ids, else 'train'."""
    h = hashlib.blake2b(f"{seed}\x00{doc_id}".encode(), digest_size=8).digest()
    u = int.from_bytes(h, "little") / 2.0**64
    return "val" if u < val_fraction else "train"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


class _ShardWriter:
    def __init__(self, out_dir: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.out_dir, self.split, self.dtype, self.shard_tokens = out_dir, split, dtype, shard_tokens
        self.shards: list[dict[str, Any]] = []
        self.f = None
        self.docs = 0
        self.tokens = 0

    def _open(self) -> None:
        name = f"{self.split}_{len(self.shards):05d}.bin"
        self.f = open(self.out_dir / name, "wb")
        self.shards.append({"file": name, "tokens": 0})

    def add(self, ids: np.ndarray) -> None:
        # A document is never split across shards (a shard may exceed shard_tokens by one document).
        if self.f is None or self.shards[-1]["tokens"] >= self.shard_tokens:
            self.close()
            self._open()
        self.f.write(ids.astype(self.dtype).tobytes())
        self.shards[-1]["tokens"] += int(ids.size)
        self.tokens += int(ids.size)
        self.docs += 1

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None

    def summary(self) -> dict[str, Any]:
        return {"docs": self.docs, "tokens": self.tokens, "shards": self.shards}


def pack_documents(
    docs: Iterable[tuple[str, str]],
    out_dir: Union[str, Path],
    tokenizer: Union[Tokenizer, str] = "smollm2",
    seq_len: int = 2048,
    val_fraction: float = 0.01,
    seed: int = 0,
    batch_docs: int = 512,
    shard_tokens: int = 1 << 28,
    extra_meta: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """Tokenize (doc_id, text) pairs into train/val shards under `out_dir`; returns the meta dict."""
    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "meta.json").exists():
        (out / "meta.json").unlink()  # re-packing: the old shards are no longer described
    dtype = token_dtype(tok.vocab_size)
    writers = {s: _ShardWriter(out, s, dtype, shard_tokens) for s in SPLITS}
    eos = np.array([tok.eos_id], dtype=np.int64)
    skipped = 0

    def flush(batch: list[tuple[str, str]]) -> None:
        for (doc_id, _), ids in zip(batch, tok.encode_batch([t for _, t in batch])):
            writers[split_of(doc_id, val_fraction, seed)].add(np.concatenate([np.asarray(ids, np.int64), eos]))

    batch: list[tuple[str, str]] = []
    for doc_id, text in docs:
        if not text:
            skipped += 1
            continue
        batch.append((str(doc_id), text))
        if len(batch) >= batch_docs:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    for w in writers.values():
        w.close()

    meta = {
        "format": FORMAT,
        "tokenizer": tok.name,
        "tokenizer_path": tok.path,
        "vocab_size": tok.vocab_size,
        "eos_id": tok.eos_id,
        "dtype": dtype.name,
        "seq_len": seq_len,
        "val_fraction": val_fraction,
        "seed": seed,
        "skipped_empty_docs": skipped,
        "splits": {s: w.summary() for s, w in writers.items()},
        **(extra_meta or {}),
    }
    tmp = out / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, out / "meta.json")
    return meta


def iter_parquet_docs(paths: Iterable[Union[str, Path]], batch_rows: int = 4096) -> Iterator[tuple[str, str]]:
    """(id, text) from dataset-version Parquet files (columns id, text, source, meta)."""
    import pyarrow.parquet as pq

    for p in paths:
        pf = pq.ParquetFile(str(p))
        for rb in pf.iter_batches(batch_size=batch_rows, columns=["id", "text"]):
            ids, texts = rb.column("id").to_pylist(), rb.column("text").to_pylist()
            for i, t in zip(ids, texts):
                yield str(i), (t or "")


def pack_parquet_files(
    paths: Iterable[Union[str, Path]],
    out_dir: Union[str, Path],
    tokenizer: Union[Tokenizer, str] = "smollm2",
    seq_len: int = 2048,
    val_fraction: float = 0.01,
    seed: int = 0,
    **kw: Any,
) -> dict[str, Any]:
    paths = [str(p) for p in paths]
    return pack_documents(iter_parquet_docs(paths), out_dir, tokenizer, seq_len, val_fraction, seed,
                          extra_meta={"source_files": paths}, **kw)


def read_meta(token_dir: Union[str, Path]) -> dict[str, Any]:
    p = Path(token_dir) / "meta.json"
    if not p.exists():
        raise FileNotFoundError(f"{p} missing: not a (complete) token directory")
    meta = json.loads(p.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{p}: unknown format {meta.get('format')!r}")
    return meta


class TokenShards:
    """One split of a token directory as `seq_len + 1`-token windows (windows never cross shard files)."""

    def __init__(self, token_dir: Union[str, Path], split: str, seq_len: int):
        self.meta = read_meta(token_dir)
        self.seq_len = seq_len
        info = self.meta["splits"][split]
        dtype = np.dtype(self.meta["dtype"])
        self.arrays = [np.memmap(Path(token_dir) / s["file"], dtype=dtype, mode="r")
                       for s in info["shards"] if s["tokens"] > seq_len]
        counts = [(a.size - 1) // seq_len for a in self.arrays]
        self.starts = np.cumsum([0] + counts)  # window index -> shard via searchsorted
        self.n_windows = int(self.starts[-1])
        self.n_tokens = int(info["tokens"])

    def window(self, i: int) -> np.ndarray:
        s = int(np.searchsorted(self.starts, i, side="right")) - 1
        off = (i - int(self.starts[s])) * self.seq_len
        return np.asarray(self.arrays[s][off: off + self.seq_len + 1], dtype=np.int64)

    def batch(self, idxs: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        w = np.stack([self.window(int(i)) for i in idxs])  # (B, T+1)
        return w[:, :-1], w[:, 1:]


@dataclass
class SamplerState:
    epoch: int = 0
    cursor: int = 0          # windows of this epoch's permutation already consumed
    windows_seen: int = 0


@dataclass
class WindowSampler:
    """Seeded, resumable order over training windows: a fresh permutation each epoch.
    Its whole state is three integers, saved in every checkpoint (the "data position")."""

    shards: TokenShards
    seed: int
    state: SamplerState = field(default_factory=SamplerState)

    def __post_init__(self) -> None:
        if self.shards.n_windows == 0:
            raise ValueError(f"no training window of {self.shards.seq_len + 1} tokens in the token directory")
        self._perm_epoch = -1
        self._perm = np.empty(0, dtype=np.int64)

    def _permutation(self) -> np.ndarray:
        if self._perm_epoch != self.state.epoch:
            rng = np.random.default_rng([self.seed, self.state.epoch])
            self._perm = rng.permutation(self.shards.n_windows)
            self._perm_epoch = self.state.epoch
        return self._perm

    def next_indices(self, n: int) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            perm = self._permutation()
            take = perm[self.state.cursor: self.state.cursor + (n - len(out))]
            out.extend(int(i) for i in take)
            self.state.cursor += len(take)
            if self.state.cursor >= len(perm):
                self.state.epoch += 1
                self.state.cursor = 0
        self.state.windows_seen += n
        return out

    def next_batch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        return self.shards.batch(self.next_indices(n))
