"""Decontaminate: drop rows that overlap a benchmark (HumanEval), so a probe's pass@k measures skill, not recall.

Two signals, each its own ``reason``:

* ``benchmark_overlap`` (GPT-3 appendix C, used by phi-1): the row shares at least ``min_matches`` distinct word
  ``ngram``-grams (default 13) with ONE problem's prompt + canonical solution.  Tokens are lowercase ``\\w+``
  words, so re-indenting, blank lines, other quotes or a longer surrounding file do not hide a copy.
* ``benchmark_signature``: the row defines a function with a problem's entry-point name AND the same first
  docstring sentence.  It catches what 13-grams cannot: for 34 HumanEval problems (``strlen``, ``add``,
  ``fib``, ...) the signature plus that sentence is shorter than one 13-gram.

What the HumanEval index holds, measured at the defaults (n=13): 13,236 distinct n-grams, none in more than 2
problems (e.g. the docstring shared by ``sort_third`` / ``sort_even``).  HumanEval has no license header and
its ``from typing import List`` lines are shorter than 13 words, so ``max_benchmark_doc_freq`` cuts nothing
at n=13; it matters for small n (n=5: 14 n-grams cut, "from typing import list def" in 16 problems, "for i in
range len" in 13).  ``min_word_fraction`` removes 2,885 n-grams that are mostly digits or single letters
("0 1 2 3 4 5 6 7 8 9 a b c": hex tables; "0 1 1 0 0 0 0 1 1 1 1 0 1": bit strings), which otherwise match
unrelated files.  On the interpreter's stdlib + site-packages (28,629 .py files) the defaults flag 4 files,
none a real copy: number-word tables (``rich/_emoji_codes.py`` twice, ``sympy/printing/pretty/
pretty_symbology.py``: the ``{'zero': 0, 'one': 1, ...}`` maps of HumanEval/19 and /105) and a textbook
triple loop (``sympy/crypto/crypto.py``: HumanEval/40's solution).  All four match solution code only; the
``prompt_ngrams`` column (0 for them) tells such idioms from a copied problem statement.  The stdlib alone
(1,790 files) has no match; at n=6, 24 of the 200 stdlib files in the tests would match idioms such as "for
i in range 0 len", which is why n stays at 13.  HumanEval/56 and /61 differ only in bracket characters,
which are not word tokens: a copy of either names both in ``task_ids``.

No n-gram is cut for being frequent in the *data* (GPT-3 ignored 13-grams found in more than 10 training
documents): a generator that memorised a benchmark problem repeats it, and that cut would keep exactly those.

Dropped rows go to the ``contaminated`` side table with all their columns plus ``reason``, ``benchmark``,
``task_ids``, ``matched_ngrams``, ``prompt_ngrams``, ``example_ngram`` and ``matched_signature``; counts
reconcile as ``in = out + dropped``.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from factory.stages.base import ShardResult

U64 = np.uint64
WORD = re.compile(r"\w+")
# a def's name, then (checked only for benchmark names) the rest of its signature up to an opening docstring;
# arguments may hold one level of parentheses (defaults like ``x=f()``).  _DEF starts with a literal, which re
# scans for 6x faster than a ``^[ \t]*def`` or ``\bdef`` pattern; the word boundary is checked on hits only.
_DEF = re.compile(r"def[ \t]+(\w+)[ \t]*\(")
_TO_DOCSTRING = re.compile(r"(?:[^()]|\([^()]*\))*\)[ \t]*(?:->[^:\n]*)?:[ \t]*(?:#[^\n]*)?\n?[ \t]*[rRuU]?(?:\"\"\"|''')")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\"\"\"|'''|\n[ \t]*\n|>>>")
_SENTENCE_MAX_CHARS = 400

SIDE_FIELDS = [
    pa.field("reason", pa.string()),
    pa.field("benchmark", pa.string()),
    pa.field("task_ids", pa.list_(pa.string())),
    pa.field("matched_ngrams", pa.int64()),
    pa.field("prompt_ngrams", pa.int64()),
    pa.field("example_ngram", pa.string()),
    pa.field("matched_signature", pa.string()),
]


# --------------------------------------------------------------------------------------------- benchmarks
@dataclass(frozen=True)
class Benchmark:
    """One benchmark's problems (task_id, prompt, canonical_solution, entry_point) and the file they came from."""

    name: str
    file: str
    sha256: str
    problems: list[dict[str, Any]] = field(repr=False)

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "file": self.file, "sha256": self.sha256, "problems": len(self.problems)}


def _humaneval() -> tuple[Path, list[dict[str, Any]]]:
    from trainer.humaneval import humaneval_path, load_humaneval

    return humaneval_path(), load_humaneval()


LOADERS: dict[str, Callable[[], tuple[Path, list[dict[str, Any]]]]] = {"humaneval": _humaneval}


def load_benchmark(name: str) -> Benchmark:
    path, problems = LOADERS[name]()
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return Benchmark(name, str(path), sha, problems)


# --------------------------------------------------------------------------------------------- hashing
def tokens(text: str) -> list[str]:
    return WORD.findall(text.lower())


def _token_hash(token: str) -> int:
    return xxhash.xxh3_64_intdigest(token.encode()) | 1  # odd, so 0 can mean "not a benchmark token"


def _position_constants(n: int) -> np.ndarray:
    return np.array([xxhash.xxh3_64_intdigest(f"ngram-position-{j}".encode()) | 1 for j in range(n)], U64)


def window_keys(hashes: np.ndarray, consts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, key) of every window of ``len(consts)`` tokens holding no 0 (unknown) hash.  The key is
    ``sum_j hash[start + j] * C_j`` mod 2**64: order-sensitive, computed for all windows at once."""
    n = len(consts)
    if len(hashes) < n:
        return np.zeros(0, np.int64), np.zeros(0, U64)
    unknown = np.concatenate([[0], np.cumsum(hashes == 0)])
    start = np.flatnonzero(unknown[n:] == unknown[:-n])
    keys = np.zeros(len(start), U64)
    for j in range(n):
        keys += hashes[start + j] * consts[j]  # uint64 arrays wrap: arithmetic mod 2**64
    return start, keys


def _word_fraction(toks: list[str]) -> float:
    return sum(len(t) > 1 and not t.isdigit() for t in toks) / len(toks)


def first_sentence(text: str, pos: int) -> tuple[str, ...]:
    """The words of the docstring sentence starting at ``pos`` (up to . ! ? a blank line, >>> or the quotes)."""
    window = text[pos : pos + _SENTENCE_MAX_CHARS]
    end = _SENTENCE_END.search(window)
    return tuple(tokens(window[: end.start()] if end else window))


def signatures(text: str, names: frozenset[str] | None = None) -> list[tuple[str, tuple[str, ...]]]:
    """(function name, first docstring sentence) of every def in ``text`` (only names in ``names`` if given)."""
    out = []
    for m in _DEF.finditer(text):
        name = m.group(1)
        if names is not None and name not in names:
            continue
        before = text[m.start() - 1 : m.start()]
        if before.isalnum() or before == "_":  # "undef f(" is no def
            continue
        doc = _TO_DOCSTRING.match(text, m.end())
        if doc:
            sentence = first_sentence(text, doc.end())
            if sentence:
                out.append((name, sentence))
    return out


# --------------------------------------------------------------------------------------------- the stage
class Decontaminator:
    name = "decontaminate"

    def __init__(self, cfg: Any, benchmarks: list[Benchmark]):
        """``cfg`` is the DecontaminateConfig.  The index is built once here; Ray tasks receive it pickled."""
        self.n = cfg.ngram
        self.min_matches = cfg.min_matches
        self.consts = _position_constants(self.n)
        self.problems = [(b.name, p["task_id"]) for b in benchmarks for p in b.problems]
        items = [p for b in benchmarks for p in b.problems]
        full = [tokens(p["prompt"] + p["canonical_solution"]) for p in items]
        self.vocab = {t: _token_hash(t) for toks in full for t in toks}

        in_problems: dict[int, set[int]] = {}
        text_of: dict[int, str] = {}
        for i, toks in enumerate(full):
            for s, k in zip(*window_keys(self._hashes(toks), self.consts)):
                in_problems.setdefault(int(k), set()).add(i)
                text_of.setdefault(int(k), " ".join(toks[s : s + self.n]))
        common = {k for k, ps in in_problems.items() if len(ps) > cfg.max_benchmark_doc_freq}
        wordless = {k for k, g in text_of.items() if _word_fraction(g.split()) < cfg.min_word_fraction}
        self.index = {k: sorted(ps) for k, ps in in_problems.items() if k not in common and k not in wordless}
        self.text_of = {k: text_of[k] for k in self.index}
        self.keys = np.array(sorted(self.index), U64)
        prompt_keys = {int(k) for p in items for k in window_keys(self._hashes(tokens(p["prompt"])), self.consts)[1]}
        self.prompt_keys = prompt_keys & self.index.keys()

        self.signature_of: dict[tuple[str, tuple[str, ...]], list[int]] = {}
        if cfg.match_signatures:
            for i, p in enumerate(items):
                for sig in signatures(p["prompt"], frozenset([p["entry_point"]])):
                    self.signature_of.setdefault(sig, []).append(i)
        self.signature_names = frozenset(name for name, _ in self.signature_of)
        self.stats = {
            "benchmarks": [b.describe() for b in benchmarks],
            "ngram": self.n,
            "ngrams": len(self.index),
            "ngrams_cut": {"max_benchmark_doc_freq": len(common), "min_word_fraction": len(wordless - common)},
            "signatures": len(self.signature_of),
        }

    def _hashes(self, toks: list[str]) -> np.ndarray:
        get = self.vocab.get
        return np.array([get(t, 0) for t in toks], U64)

    # rows -----------------------------------------------------------------------------------
    def ngram_hits(self, texts: list[str]) -> dict[int, list[int]]:
        """Row -> the index keys its windows hit, in text order (repeats kept)."""
        get = self.vocab.get
        flat: list[int] = []
        row_start = []
        for text in texts:
            row_start.append(len(flat))
            flat += [get(t, 0) for t in tokens(text)]
            flat.append(0)  # no window spans two rows
        start, keys = window_keys(np.array(flat, U64), self.consts)
        if not len(self.keys) or not len(keys):
            return {}
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        hit = self.keys[pos] == keys
        rows = np.searchsorted(np.array(row_start), start[hit], side="right") - 1
        out: dict[int, list[int]] = {}
        for r, k in zip(rows.tolist(), keys[hit].tolist()):
            out.setdefault(r, []).append(k)
        return out

    def signature_hits(self, text: str) -> list[tuple[tuple[str, tuple[str, ...]], list[int]]]:
        if not self.signature_names:
            return []
        return [(s, self.signature_of[s]) for s in signatures(text, self.signature_names) if s in self.signature_of]

    def verdict(self, text: str, hit_keys: list[int]) -> dict[str, Any] | None:
        """The side-table fields for one row, or None when the row is clean."""
        keys = list(dict.fromkeys(hit_keys))  # distinct, first occurrence first
        per_problem = Counter(p for k in keys for p in self.index[k])
        flagged = sorted((p for p, c in per_problem.items() if c >= self.min_matches), key=lambda p: (-per_problem[p], p))
        sigs = self.signature_hits(text)
        if not flagged and not sigs:
            return None
        signature = f"{sigs[0][0][0]}: {' '.join(sigs[0][0][1])}" if sigs else None
        if flagged:
            matched = [k for k in keys if not set(self.index[k]).isdisjoint(flagged)]
            reason = "benchmark_overlap"
        else:
            flagged = sorted({p for _, ps in sigs for p in ps})
            matched = []
            reason = "benchmark_signature"
        return {
            "reason": reason,
            "benchmark": ",".join(sorted({self.problems[p][0] for p in flagged})),
            "task_ids": [self.problems[p][1] for p in flagged],
            "matched_ngrams": len(matched),
            "prompt_ngrams": sum(k in self.prompt_keys for k in matched),
            "example_ngram": self.text_of[matched[0]] if matched else None,
            "matched_signature": signature,
        }

    def decontaminate_table(self, table: pa.Table) -> ShardResult:
        texts = [t or "" for t in table.column("text").to_pylist()]
        hits = self.ngram_hits(texts)
        found: dict[int, dict[str, Any]] = {}
        for i, text in enumerate(texts):
            v = self.verdict(text, hits.get(i, []))
            if v is not None:
                found[i] = v
        drop = np.zeros(table.num_rows, bool)
        drop[list(found)] = True
        side = table.filter(pa.array(drop))
        for f in SIDE_FIELDS:
            side = side.append_column(f, pa.array([v[f.name] for v in found.values()], f.type))  # row order
        dropped = Counter(v["reason"] for v in found.values())
        return ShardResult(table.filter(pa.array(~drop)), table.num_rows, dropped=dropped, side={"contaminated": side})

    def decontaminate_file(self, path: str | Path) -> ShardResult:
        return self.decontaminate_table(pq.read_table(path))
