"""The engine-neutral pieces: score distributions from logprobs, budgets, the response cache, make_engine."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from factory.config import EngineConfig
from factory.engines.base import (
    Budget,
    ChatRequest,
    ChatResponse,
    choice_distribution,
    engine_identity,
    expected_value,
    first_choice_position,
    make_engine,
    parse_structured,
)
from factory.engines.cache import ResponseCache, cache_key, count_lines

CHOICES = [str(i) for i in range(6)]


def test_choice_distribution_and_expected_value():
    top = [("The", math.log(0.5)), ("3", math.log(0.2)), (" 3", math.log(0.1)), ("4", math.log(0.1)), ('"1', math.log(0.1))]
    p = choice_distribution(top, CHOICES)
    assert p == pytest.approx({"3": 0.6, "4": 0.2, "1": 0.2})
    assert expected_value(p) == pytest.approx(3 * 0.6 + 4 * 0.2 + 1 * 0.2)
    assert choice_distribution([("The", -0.1)], CHOICES) is None
    assert expected_value(None) is None and expected_value({"a": 1.0}) is None
    assert first_choice_position(['{"', "answer", '":', ' "', "2", '"}'], CHOICES) == 4


def test_parse_structured():
    r = ChatRequest(key="k", messages=[], choices=CHOICES)
    assert parse_structured(" 3 ", r) == "3"
    assert parse_structured('{"answer": "4"}', r) == "4"
    assert parse_structured("seven", r) is None
    j = ChatRequest(key="k", messages=[], json_schema={"type": "object"})
    assert parse_structured('{"score": 2}', j) == {"score": 2}
    assert parse_structured("{broken", j) is None


def _req(chars=300, max_tokens=16):
    return ChatRequest(key="k", messages=[{"role": "user", "content": "x" * chars}], max_tokens=max_tokens)


def test_budget_books_worst_case_and_stops_before_overrun():
    b = Budget(EngineConfig(max_total_tokens=400))
    r = _req()
    first = b.reserve(r)
    assert first is not None and first[0] >= 100 + 16
    b.settle(r, first, ChatResponse(key="k", text="3", prompt_tokens=150, completion_tokens=1))
    assert b.usage.total_tokens == 151
    # the estimate now follows the observed tokens per char (150/300 * 1.1)
    assert b.estimate_prompt_tokens(r) >= 165
    second = b.reserve(r)
    assert second is not None
    assert b.reserve(r) is None and b.exhausted  # a third would not fit next to the second's booking
    b.settle(r, second, ChatResponse(key="k", text="3", prompt_tokens=150, completion_tokens=1))
    assert b.usage.total_tokens <= 400
    assert b.reserve(r) is None  # once exhausted, stays exhausted: the run stops cleanly


def test_budget_cost():
    cfg = EngineConfig(max_cost_usd=0.01, usd_per_1k_prompt_tokens=0.05, usd_per_1k_completion_tokens=0.1)
    b = Budget(cfg)
    r = _req(chars=300)
    bk = b.reserve(r)
    b.settle(r, bk, ChatResponse(key="k", text="1", prompt_tokens=100, completion_tokens=10))
    assert b.usage.cost_usd == pytest.approx(100 * 0.05 / 1000 + 10 * 0.1 / 1000)
    while b.reserve(r) is not None:
        pass
    assert b.exhausted and b.summary()["exhausted"]


def test_cache_key_covers_engine_template_sampling_input():
    ident = {"kind": "local", "model": "m"}
    t = {"id": "a@1", "hash": "h"}
    r = ChatRequest(key="", messages=[{"role": "user", "content": "hi"}])
    k = cache_key(ident, t, r)
    assert k == cache_key(dict(ident), dict(t), ChatRequest(key="other", messages=[{"role": "user", "content": "hi"}]))
    assert k != cache_key({"kind": "openai", "model": "m"}, t, r)
    assert k != cache_key(ident, {"id": "a@1", "hash": "h2"}, r)
    assert k != cache_key(ident, t, ChatRequest(key="", messages=r.messages, temperature=0.5))
    assert k != cache_key(ident, t, ChatRequest(key="", messages=[{"role": "user", "content": "hi!"}]))


def test_cache_roundtrip_torn_lines_errors_and_many_writers(tmp_path):
    c1 = ResponseCache(tmp_path)
    c1.put(ChatResponse(key="a", text="3", prompt_tokens=5, completion_tokens=1, expected=2.5, choice_probs={"3": 1.0}))
    c1.put(ChatResponse(key="e", text=None, error="boom", error_kind="unavailable"))  # errors are not cached
    c2 = ResponseCache(tmp_path)  # a second writer, e.g. another actor
    c2.put_many([ChatResponse(key="b", text="1"), ChatResponse(key="a", text="9")])  # "a" known: not rewritten
    with open(tmp_path / "torn.jsonl", "wb") as f:
        f.write(b'{"key": "c", "response": {"key": "c", "text": "2"}}\n{"key": "d", "resp')  # killed mid-write
    c3 = ResponseCache(tmp_path)
    assert len(c3) == 3 and "e" not in c3 and "d" not in c3
    got = c3.get("a")
    assert got.cached and got.text == "3" and got.expected == 2.5 and got.choice_probs == {"3": 1.0}
    assert c3.get("c").text == "2"
    c1.put(ChatResponse(key="f", text="0"))
    assert "f" not in c3
    c3.refresh()
    assert c3.get("f").text == "0"
    assert all(n == 1 for n in count_lines(tmp_path).values())


def test_cache_survives_a_killed_writer(tmp_path):
    """A writer killed with SIGKILL right after put: everything it put is readable."""
    code = (
        "import os, signal, sys\n"
        "from factory.engines.cache import ResponseCache\n"
        "from factory.engines.base import ChatResponse\n"
        f"c = ResponseCache({str(tmp_path)!r})\n"
        "for i in range(5):\n"
        "    c.put(ChatResponse(key=f'k{i}', text=str(i)))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=os.getcwd(), env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert p.returncode == -9
    c = ResponseCache(tmp_path)
    assert sorted(c.get_many([f"k{i}" for i in range(6)])) == [f"k{i}" for i in range(5)]


def test_make_engine_kinds_and_identity():
    ident = engine_identity(EngineConfig(kind="local"))
    assert ident["kind"] == "local" and ident["file"].endswith(".gguf") and ident["bytes"] > 10_000_000
    assert engine_identity(EngineConfig(kind="openai", model="gpt-x")) == {"kind": "openai", "model": "gpt-x"}
    e = make_engine(EngineConfig(kind="openai", base_url="http://127.0.0.1:9/v1"))
    assert e.kind == "openai" and json.dumps(e.identity())
    with pytest.raises(FileNotFoundError, match="model_path"):
        engine_identity(EngineConfig(kind="local", model_path="/nonexistent.gguf"))
