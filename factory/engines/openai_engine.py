"""Any OpenAI-compatible endpoint through the official ``openai`` client (OpenAI, vLLM serve, llama.cpp server).

* The key is read from the environment variable named by ``engine.api_key_env`` at construction and handed
  to the client only: it is never logged, put in an identity, a manifest, a cache entry or an error text.
* Concurrency is bounded by an asyncio semaphore (``engine.max_concurrency``).
* Retries are the client's own machinery (``max_retries``): exponential backoff with jitter on connection
  errors, timeouts, 408/409/429 and 5xx, honouring ``Retry-After`` / ``retry-after-ms``.  A request still
  failing after that comes back with ``error_kind="unavailable"``; the stage then stops after caching
  everything that did succeed, and a rerun resumes from the cache.
* Budgets: ``Budget`` books each request's worst case before sending it; once the next request does not
  fit, nothing more is sent and the rest come back with ``error_kind="budget"``.
* Structured output (``engine.structured_output``): ``json_schema`` (OpenAI structured outputs),
  ``json_object`` with a ``schema`` (llama.cpp server, Anyscale style), ``grammar`` (llama.cpp GBNF),
  ``guided`` (vLLM serve's guided_choice / guided_json), ``none``; ``auto`` tries json_schema, then
  json_object, then none, switching once when the server rejects the format (400/422 naming it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from factory.config import EngineConfig
from factory.engines.base import (
    BUDGET_ERROR,
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
from factory.engines.local import choice_grammar

log = logging.getLogger(__name__)

AUTO_ORDER = ["json_schema", "json_object", "none"]


def redact_url(url: str | None) -> str | None:
    """A base URL without user:password@ (credentials in URLs must not reach manifests)."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        parts = parts._replace(netloc=host)
    return urlunsplit(parts)


def choice_schema(choices: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": list(choices)}},
        "required": ["answer"],
        "additionalProperties": False,
    }


class OpenAIEngine(Engine):
    kind = "openai"

    def __init__(self, cfg: EngineConfig):
        super().__init__(cfg)
        self._api_key = os.environ.get(cfg.api_key_env) or "sk-no-key-required"
        self.base_url = cfg.base_url
        self.mode = cfg.structured_output
        self._auto = cfg.structured_output == "auto"
        self._auto_i = 0
        self._logprobs_ok = True
        self._confirmed = False
        self._mode_lock = threading.Lock()

    def identity(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model}

    def describe(self) -> dict[str, Any]:
        return {"base_url": redact_url(self.base_url), "structured_output": self.cfg.structured_output}

    def _client(self):
        from openai import AsyncOpenAI

        return AsyncOpenAI(
            api_key=self._api_key,
            base_url=self.base_url,
            max_retries=self.cfg.max_retries,
            timeout=self.cfg.timeout_s,
        )

    # --------------------------------------------------------------------------------------- modes
    def _current_mode(self) -> str:
        return AUTO_ORDER[self._auto_i] if self._auto else self.mode

    def _downgrade(self, tried: str) -> bool:
        with self._mode_lock:
            if not self._auto:
                return False
            if AUTO_ORDER[self._auto_i] == tried and self._auto_i < len(AUTO_ORDER) - 1:
                self._auto_i += 1
                log.warning("server rejected structured output %r; using %r", tried, AUTO_ORDER[self._auto_i])
            return True

    def _format_kwargs(self, req: ChatRequest, mode: str) -> dict[str, Any]:
        if not (req.choices or req.json_schema) or mode == "none":
            return {}
        schema = choice_schema(req.choices) if req.choices else req.json_schema
        if mode == "json_schema":
            return {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "answer" if req.choices else "output", "schema": schema, "strict": True},
                }
            }
        if mode == "json_object":
            return {"response_format": {"type": "json_object", "schema": schema}}
        if mode == "grammar":
            if req.choices:
                return {"extra_body": {"grammar": choice_grammar(req.choices)}}
            return {"response_format": {"type": "json_object", "schema": schema}}
        if mode == "guided":
            if req.choices:
                return {"extra_body": {"guided_choice": list(req.choices)}}
            return {"extra_body": {"guided_json": schema}}
        raise ValueError(f"unknown structured_output {mode!r}")

    # --------------------------------------------------------------------------------------- calls
    def generate(self, requests: list[ChatRequest], on_response: OnResponse | None = None) -> list[ChatResponse]:
        if not requests:
            return []
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._run(requests, on_response))
        # called from inside an event loop (a notebook): run ours in a thread
        box: list[Any] = []
        t = threading.Thread(target=lambda: box.append(asyncio.run(self._run(requests, on_response))))
        t.start()
        t.join()
        return box[0]

    async def _run(self, requests: list[ChatRequest], on_response: OnResponse | None) -> list[ChatResponse]:
        sem = asyncio.Semaphore(self.cfg.max_concurrency)
        client = self._client()

        async def one(req: ChatRequest) -> ChatResponse:
            async with sem:
                booking = self.budget.reserve(req) if self.budget.limited else None
                if self.budget.limited and booking is None:
                    resp = error_response(req, BUDGET_ERROR, self.kind, self.model, kind="budget")
                else:
                    resp = await self._call(client, req)
                    self.budget.settle(req, booking, resp)
                if on_response:
                    on_response(resp)
                return resp

        try:
            return list(await asyncio.gather(*(one(r) for r in requests)))
        finally:
            await client.close()

    async def _call(self, client: Any, req: ChatRequest) -> ChatResponse:
        import openai

        t0 = time.time()
        full_retries = False
        for _attempt in range(len(AUTO_ORDER) + 3):
            mode = self._current_mode()
            kwargs: dict[str, Any] = dict(
                model=self.model,
                messages=req.messages,
                max_tokens=req.max_tokens,
                temperature=req.temperature,
                top_p=req.top_p,
                **self._format_kwargs(req, mode),
            )
            if req.seed is not None:
                kwargs["seed"] = req.seed
            if req.logprobs and self._logprobs_ok:
                kwargs.update(logprobs=True, top_logprobs=req.logprobs)
            # while `auto` has not seen the server accept a format, a rejection must not be retried with
            # backoff (llama.cpp's server answers an unknown response_format with a 500)
            probing = self._auto and not self._confirmed and mode != "none" and not full_retries
            c = client.with_options(max_retries=0) if probing else client
            try:
                r = await c.chat.completions.create(**kwargs)
            except openai.APIStatusError as e:
                msg = self._safe(e)
                low = msg.lower()
                if e.status_code in (400, 422, 500) and "logprob" in low and "logprobs" in kwargs and self._logprobs_ok:
                    self._logprobs_ok = False
                    continue
                if (
                    e.status_code in (400, 422, 500)
                    and mode != "none"
                    and any(w in low for w in ("response_format", "json_schema", "grammar", "guided"))
                    and self._downgrade(mode)
                ):
                    continue
                if probing and (e.status_code >= 500 or e.status_code in (408, 409, 429)):
                    full_retries = True  # a real server error: now with the client's backoff
                    continue
                kind = "unavailable" if e.status_code >= 500 or e.status_code in (408, 409, 429) else "request"
                return error_response(req, f"{type(e).__name__}: {msg}", self.kind, self.model, time.time() - t0, kind=kind)
            except (openai.APIConnectionError, openai.APITimeoutError) as e:
                if probing:
                    full_retries = True
                    continue
                return error_response(
                    req, f"{type(e).__name__}: {self._safe(e)}", self.kind, self.model, time.time() - t0, kind="unavailable"
                )
            if mode != "none":
                self._confirmed = True
            return self._response(req, r, time.time() - t0, constrained=mode != "none")
        return error_response(req, "structured output rejected in every mode", self.kind, self.model, time.time() - t0)

    def _safe(self, e: Exception) -> str:
        """The error text, short, with the key cut out should a server ever echo it."""
        msg = str(getattr(e, "message", None) or e)
        if self._api_key and len(self._api_key) >= 4:
            msg = msg.replace(self._api_key, "***")
        return msg[:300]

    def _response(self, req: ChatRequest, r: Any, latency: float, constrained: bool = True) -> ChatResponse:
        choice = r.choices[0]
        text = choice.message.content or ""
        probs = None
        lp = getattr(choice, "logprobs", None)
        content = getattr(lp, "content", None) if lp is not None else None
        if req.choices and content and constrained:  # free text: the first digit need not be the score
            pos = first_choice_position([c.token for c in content], req.choices)
            if pos is not None:
                probs = choice_distribution(((t.token, t.logprob) for t in content[pos].top_logprobs or []), req.choices)
        parsed = parse_structured(text, req)
        usage = r.usage
        return ChatResponse(
            key=req.key,
            text=text,
            parsed=parsed,
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            latency_s=round(latency, 4),
            finish_reason=choice.finish_reason,
            choice_probs=probs,
            expected=expected_value(probs),
            engine=self.kind,
            model=self.model,
        )


