"""One interface for every LLM engine: a batch of chat requests in, one response per request out.

An engine never raises for a single bad item: a request that fails (a prompt too long for the context, a 400
from a server) comes back with ``error`` set, and the caller keeps it as a row.  Run-level conditions raise or
flag instead: ``EngineUnavailable`` when a server stays unreachable after every retry, and
``budget_exhausted`` responses once a hard token / cost budget is spent (the requests after that point are
never sent).

Structured output is asked for in an engine-neutral way and each engine maps it onto its own mechanism:

* ``choices``: the reply is exactly one of these strings (llama.cpp grammar, vLLM guided choice, an OpenAI
  JSON schema with an enum);
* ``json_schema``: the reply is JSON matching the schema (llama.cpp grammar from the schema, vLLM guided
  JSON, OpenAI structured outputs);
* ``logprobs``: the top-k alternatives per generated token.  With ``choices``, every engine that has
  logprobs reports ``choice_probs`` (the probabilities of the choices at the first generated token that is
  one of them, renormalised over the choices) and ``expected`` (the probability-weighted mean of numeric
  choices): the "expected score" next to the argmax the model wrote.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable

from factory.config import EngineConfig


class EngineError(RuntimeError):
    pass


class EngineUnavailable(EngineError):
    """The engine could not serve requests after every retry (server down, connection refused, timeouts)."""


class BudgetExhausted(EngineError):
    """The run's hard token / cost budget is spent; what was done is committed and a rerun resumes."""

    def __init__(self, message: str, version: Any = None, done: int = 0, total: int = 0):
        super().__init__(message)
        self.version = version
        self.done = done
        self.total = total


BUDGET_ERROR = "budget_exhausted"


@dataclass
class ChatRequest:
    key: str  # the caller's id for this request (the response-cache key)
    messages: list[dict[str, str]]
    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = 0
    choices: list[str] | None = None
    json_schema: dict[str, Any] | None = None
    logprobs: int = 0

    def sampling(self) -> dict[str, Any]:
        """Everything but the messages that changes what the model returns (part of the cache key)."""
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "choices": self.choices,
            "json_schema": self.json_schema,
            "logprobs": self.logprobs,
        }


@dataclass
class ChatResponse:
    key: str
    text: str | None
    parsed: Any = None  # the decoded structure for json_schema / choices requests
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    finish_reason: str | None = None
    choice_probs: dict[str, float] | None = None
    expected: float | None = None
    error: str | None = None
    error_kind: str | None = None  # "request" (this item), "unavailable" (the server), "budget" (not sent)
    engine: str = ""
    model: str = ""
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("cached")
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], cached: bool = False) -> "ChatResponse":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known, cached=cached)


def error_response(
    req: ChatRequest, error: str, engine: str = "", model: str = "", latency_s: float = 0.0, kind: str = "request"
) -> ChatResponse:
    return ChatResponse(
        key=req.key, text=None, error=error[:500], error_kind=kind, engine=engine, model=model, latency_s=round(latency_s, 4)
    )


OnResponse = Callable[[ChatResponse], None]


# --------------------------------------------------------------------------------------------- budgets
@dataclass
class Usage:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    errors: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Budget:
    """Per-run token and cost accounting with a hard limit.

    Before a request is sent, ``reserve`` books its worst case (estimated prompt tokens + max_tokens); the
    request is not sent if that could take the run past the budget.  After the reply, the reservation is
    replaced by the real usage.  So the budget is never exceeded as long as the prompt estimate is not
    below the truth; the estimate starts at one token per 3 characters and is then corrected upwards from
    the largest tokens-per-character ratio seen in replies.
    """

    def __init__(self, cfg: EngineConfig):
        self.max_tokens = cfg.max_total_tokens
        self.max_cost = cfg.max_cost_usd
        self.p_in = cfg.usd_per_1k_prompt_tokens / 1000.0
        self.p_out = cfg.usd_per_1k_completion_tokens / 1000.0
        self.usage = Usage()
        self._reserved_tokens = 0
        self._reserved_cost = 0.0
        self._tokens_per_char = 1 / 3
        self._lock = threading.Lock()
        self.exhausted = False

    @property
    def limited(self) -> bool:
        return self.max_tokens is not None or self.max_cost is not None

    def estimate_prompt_tokens(self, req: ChatRequest) -> int:
        chars = sum(len(m.get("content") or "") for m in req.messages)
        return int(math.ceil(chars * self._tokens_per_char)) + 8 * len(req.messages) + 8

    def reserve(self, req: ChatRequest) -> tuple[int, float] | None:
        """Book a request's worst case; None (and the budget marked exhausted) if it does not fit."""
        with self._lock:
            if self.exhausted:
                return None
            p = self.estimate_prompt_tokens(req)
            tokens = p + req.max_tokens
            cost = p * self.p_in + req.max_tokens * self.p_out
            if self.max_tokens is not None and self.usage.total_tokens + self._reserved_tokens + tokens > self.max_tokens:
                self.exhausted = True
                return None
            if self.max_cost is not None and self.usage.cost_usd + self._reserved_cost + cost > self.max_cost:
                self.exhausted = True
                return None
            self._reserved_tokens += tokens
            self._reserved_cost += cost
            return tokens, cost

    def settle(self, req: ChatRequest, booking: tuple[int, float] | None, resp: ChatResponse) -> None:
        with self._lock:
            if booking:
                self._reserved_tokens -= booking[0]
                self._reserved_cost -= booking[1]
            self.charge_locked(resp)
            chars = sum(len(m.get("content") or "") for m in req.messages)
            if resp.prompt_tokens and chars:
                self._tokens_per_char = max(self._tokens_per_char, 1.1 * resp.prompt_tokens / chars)

    def charge(self, resp: ChatResponse) -> None:
        with self._lock:
            self.charge_locked(resp)

    def charge_locked(self, resp: ChatResponse) -> None:
        self.usage.requests += 1
        self.usage.errors += resp.error is not None
        self.usage.prompt_tokens += resp.prompt_tokens
        self.usage.completion_tokens += resp.completion_tokens
        self.usage.cost_usd += resp.prompt_tokens * self.p_in + resp.completion_tokens * self.p_out

    def summary(self) -> dict[str, Any]:
        u = self.usage
        return {
            "requests": u.requests,
            "errors": u.errors,
            "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens,
            "cost_usd": round(u.cost_usd, 6),
            "max_total_tokens": self.max_tokens,
            "max_cost_usd": self.max_cost,
            "exhausted": self.exhausted,
        }


# --------------------------------------------------------------------------------------------- engine
class Engine(ABC):
    kind: str = "?"

    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        self.budget = Budget(cfg)

    @property
    def model(self) -> str:
        return self.cfg.model

    def identity(self) -> dict[str, Any]:
        """What determines the replies (part of the cache key and the version id); never a secret."""
        return {"kind": self.kind, "model": self.model}

    @abstractmethod
    def generate(self, requests: list[ChatRequest], on_response: OnResponse | None = None) -> list[ChatResponse]:
        """One response per request, in order; ``on_response`` is called as each one completes."""

    def close(self) -> None:
        pass

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --------------------------------------------------------------------------------------------- helpers
def choice_distribution(top: Iterable[tuple[str, float]], choices: list[str]) -> dict[str, float] | None:
    """Probabilities of the choices among one position's top alternatives (token text, logprob).

    Tokens are matched after stripping whitespace (" 3" and "3" are the same score); the mass of the
    choices is renormalised to 1.  None when no choice is among the alternatives.
    """
    mass: dict[str, float] = {}
    wanted = set(choices)
    for tok, lp in top:
        t = (tok or "").strip().strip("\"'")
        if t in wanted and lp is not None and lp > -1e9:
            mass[t] = mass.get(t, 0.0) + math.exp(lp)
    total = sum(mass.values())
    if total <= 0:
        return None
    return {c: mass[c] / total for c in choices if c in mass}


def expected_value(probs: dict[str, float] | None) -> float | None:
    if not probs:
        return None
    try:
        return float(sum(float(c) * p for c, p in probs.items()))
    except ValueError:
        return None


def first_choice_position(tokens: list[str], choices: list[str]) -> int | None:
    wanted = set(choices)
    for i, t in enumerate(tokens):
        if (t or "").strip().strip("\"'") in wanted:
            return i
    return None


def parse_structured(text: str | None, req: ChatRequest) -> Any:
    """The decoded structure of a constrained reply (a choice string or a JSON value), else None."""
    if text is None:
        return None
    if req.choices is not None:
        t = text.strip()
        if t in req.choices:
            return t
        try:  # engines that carry choices inside a JSON object (OpenAI structured outputs)
            obj = json.loads(t)
            val = obj.get("answer") if isinstance(obj, dict) else None
            return str(val) if val is not None and str(val) in req.choices else None
        except ValueError:
            return None
    if req.json_schema is not None:
        try:
            return json.loads(text)
        except ValueError:
            return None
    return None


def request_hash(messages: list[dict[str, str]]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def make_engine(cfg: EngineConfig) -> Engine:
    if cfg.kind == "local":
        from factory.engines.local import LocalEngine

        return LocalEngine(cfg)
    if cfg.kind == "openai":
        from factory.engines.openai_engine import OpenAIEngine

        return OpenAIEngine(cfg)
    if cfg.kind == "vllm":
        from factory.engines.vllm_engine import VLLMEngine

        return VLLMEngine(cfg)
    raise ValueError(f"unknown engine kind {cfg.kind!r}")


def engine_identity(cfg: EngineConfig) -> dict[str, Any]:
    """The identity without loading the model (the driver computes cache keys and version ids with it)."""
    if cfg.kind == "local":
        from factory.engines.local import local_identity

        return local_identity(cfg)
    if cfg.kind == "vllm":
        from factory.engines.vllm_engine import vllm_identity

        return vllm_identity(cfg)
    return {"kind": cfg.kind, "model": cfg.model}
