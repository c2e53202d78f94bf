"""The openai engine against a REAL OpenAI-compatible server (llama_cpp.server on 127.0.0.1, SmolLM2-135M).

Structured output negotiation (the server rejects json_schema; auto falls back to json_object + schema),
llama.cpp grammars, logprobs -> expected score, authentication, a hard token budget and a dead server.
"""

from __future__ import annotations

import pytest

from factory.config import EngineConfig
from factory.engines.base import ChatRequest, make_engine
from factory.engines.llama_server import LlamaServer, free_port

CHOICES = [str(i) for i in range(6)]
KEY = "sk-test-engine-0123456789abcdef"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = LlamaServer(api_key=KEY, n_ctx=1024, log_path=tmp_path_factory.mktemp("srv") / "server.log").start()
    yield s
    s.stop()


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv("ANNOT_TEST_KEY", KEY)
    return "ANNOT_TEST_KEY"


def _cfg(server, key_env, **kw):
    return EngineConfig(kind="openai", base_url=server.base_url, api_key_env=key_env, max_retries=2, timeout_s=60, **kw)


def _reqs(n, **kw):
    return [
        ChatRequest(key=f"k{i}", messages=[{"role": "user", "content": f"Rate the number {i} from 0 to 5. Reply with a digit."}], **kw)
        for i in range(n)
    ]


def test_auto_structured_output_falls_back_and_scores(server, key_env):
    e = make_engine(_cfg(server, key_env, max_concurrency=2))
    seen = []
    out = e.generate(_reqs(3, max_tokens=16, choices=CHOICES, logprobs=10), on_response=seen.append)
    assert e._current_mode() == "json_object"  # llama.cpp's server has no json_schema response_format
    assert sorted(r.key for r in seen) == ["k0", "k1", "k2"] and [r.key for r in out] == ["k0", "k1", "k2"]
    for r in out:
        assert r.error is None, r.error
        assert r.parsed in CHOICES  # {"answer": "<digit>"}
        assert r.choice_probs and 0 <= r.expected <= 5
        assert r.prompt_tokens > 10
    assert e.budget.usage.requests == 3 and e.budget.usage.prompt_tokens > 30


def test_grammar_mode_gives_the_bare_choice(server, key_env):
    e = make_engine(_cfg(server, key_env, structured_output="grammar"))
    [r] = e.generate(_reqs(1, max_tokens=4, choices=CHOICES, logprobs=20))
    assert r.error is None and r.text in CHOICES and r.completion_tokens == 1
    assert r.text == max(r.choice_probs, key=r.choice_probs.get)


def test_free_text_has_no_expected_score(server, key_env):
    e = make_engine(_cfg(server, key_env, structured_output="none"))
    [r] = e.generate(_reqs(1, max_tokens=12, choices=CHOICES, logprobs=5))
    assert r.error is None and r.text and r.choice_probs is None and r.expected is None


def test_wrong_key_is_a_request_error_without_the_key(server, monkeypatch):
    monkeypatch.setenv("ANNOT_WRONG_KEY", "sk-wrong-key-zzzzzzzz")
    e = make_engine(EngineConfig(kind="openai", base_url=server.base_url, api_key_env="ANNOT_WRONG_KEY", max_retries=0))
    [r] = e.generate(_reqs(1, max_tokens=2))
    assert r.error is not None and "401" in r.error and r.error_kind == "request"
    assert "sk-wrong-key" not in r.error


def test_budget_stops_sending(server, key_env):
    e = make_engine(_cfg(server, key_env, max_total_tokens=260, max_concurrency=1))
    out = e.generate(_reqs(6, max_tokens=4, choices=CHOICES))
    done = [r for r in out if r.error is None]
    stopped = [r for r in out if r.error_kind == "budget"]
    assert done and stopped and len(done) + len(stopped) == 6
    assert e.budget.usage.total_tokens <= 260 and e.budget.exhausted
    assert e.budget.usage.requests == len(done)  # the stopped ones were never sent


def test_dead_server_is_unavailable_not_a_crash(key_env):
    e = make_engine(EngineConfig(kind="openai", base_url=f"http://127.0.0.1:{free_port()}/v1", api_key_env=key_env, max_retries=1, timeout_s=5))
    [r] = e.generate(_reqs(1, max_tokens=2))
    assert r.error_kind == "unavailable" and "Connection" in r.error
