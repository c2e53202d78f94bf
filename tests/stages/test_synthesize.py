"""Synthesize without Ray or an LLM: recipes (deterministic, diverse), the reply parsers over clean, noisy and
malformed replies, sandbox verification, and a shard's rows + audit table with reconciled counts."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from factory.config import SynthesizeConfig
from factory.engines.base import ChatResponse
from factory.stages.synthesize import (Diversity, Recipe, Synthesizer, code_blocks, conform, parse_exercise,
                                       parse_textbook, plan_recipes, snippet_of)
from factory.store import BASE_SCHEMA

IDENT = {"kind": "local", "model": "test-model"}


def _synth(**cfg) -> Synthesizer:
    return Synthesizer.from_config(SynthesizeConfig(**cfg), IDENT)


# --------------------------------------------------------------------------------------------- recipes
def test_recipes_are_seeded_prefix_stable_and_diverse():
    lists = Diversity.load(SynthesizeConfig())
    pool = [f"doc{i:03d}" for i in range(50)]
    a = plan_recipes(SynthesizeConfig(textbooks=40, exercises=40), lists, pool)
    assert a == plan_recipes(SynthesizeConfig(textbooks=40, exercises=40), lists, pool)
    # growing the run keeps the earlier recipes (and so their cached replies)
    small = plan_recipes(SynthesizeConfig(textbooks=5, exercises=5), lists, pool)
    assert small[:5] == a[:5] and small[5:] == a[40:45]
    assert plan_recipes(SynthesizeConfig(textbooks=40, exercises=40, seed=1), lists, pool) != a
    books, exercises = a[:40], a[40:]
    assert {r.kind for r in books} == {"textbook"} and {r.kind for r in exercises} == {"exercise"}
    assert len({r.topic for r in books}) >= 20 and len({r.audience for r in books}) >= 6
    assert all(len(r.words) == 3 and len(set(r.words)) == 3 for r in books)
    assert len({r.words for r in books}) == 40 and len({r.snippet_id for r in books}) >= 20
    assert all(r.snippet_id in pool for r in books)
    assert len({r.function_name for r in exercises}) >= 35 and all(r.function_name.isidentifier() for r in exercises)
    assert len({r.seed for r in a}) == 80
    assert Recipe.from_json(json.loads(json.dumps(a[0].to_json()))) == a[0]


def test_recipes_without_snippets_or_words():
    lists = Diversity.load(SynthesizeConfig())
    r = plan_recipes(SynthesizeConfig(textbooks=3, seed_snippets=False, words_per_prompt=0), lists, ["x"])
    assert all(x.snippet_id == "" and x.words == () for x in r)


def test_snippet_is_the_head_cut_at_a_line():
    text = "".join(f"line {i}\n" for i in range(100))
    s = snippet_of(text, 40)
    assert text.startswith(s) and len(s) <= 40 and s.endswith("line 4")
    assert snippet_of("short\n", 40) == "short"


def test_requests_carry_the_recipe_and_distinct_keys():
    s = _synth(textbooks=2, exercises=1)
    recipes = plan_recipes(s.cfg, Diversity.load(s.cfg), ["d1", "d2"])
    reqs = [s.request(r, snippet="def walk(): pass") for r in recipes]
    user = reqs[0].messages[-1]["content"]
    assert recipes[0].topic in user and recipes[0].audience in user and all(w in user for w in recipes[0].words)
    assert "def walk(): pass" in user
    assert f"`{recipes[2].function_name}`" in reqs[2].messages[-1]["content"]
    assert len({r.key for r in reqs}) == 3 and reqs[0].seed == recipes[0].seed
    assert s.request(recipes[0], snippet="def walk(): pass").key == reqs[0].key  # stable: the cache finds it
    assert s.request(recipes[0], snippet="other").key != reqs[0].key


def test_a_template_with_other_variables_is_refused(tmp_path):
    from factory.stages.synthesize import SynthesizeError

    bad = tmp_path / "book.md"
    bad.write_text("---\nname: x\nversion: 1\nvariables: [topic]\noutput: {type: text}\n---\nWrite about {{ topic }}.\n")
    with pytest.raises(SynthesizeError, match="must declare exactly the variables"):
        Synthesizer.from_config(SynthesizeConfig(textbook_template=str(bad)), IDENT)


# --------------------------------------------------------------------------------------------- parsers
GOOD = '''def count_vowels(text):
    """Return how many vowels (a, e, i, o, u) ``text`` has. Example: count_vowels("hello") == 2."""
    return sum(1 for c in text.lower() if c in "aeiou")


def check():
    assert count_vowels("hello") == 2
    assert count_vowels("") == 0
    assert count_vowels("AEIOU") == 5
'''

CLEAN = [f"```python\n{GOOD}```", f"```python\n{GOOD}\ncheck()\n```"]
NOISY = [
    f"Here is the exercise:\n\n```py\n{GOOD}```\n\nThis tests vowels.",  # prose around, ```py
    f"```python\nimport math\n```\nand the solution:\n```python\n{GOOD}```",  # the block defining it wins
    f"```python\n{GOOD}",  # the closing fence cut off by max_tokens, code complete
    GOOD,  # no fence at all: a bare-code reply
    f"```Python\n{GOOD}```",
]
MALFORMED = [
    (None, "empty_reply"),
    ("   \n", "empty_reply"),
    ("I cannot write code for that.", "no_code"),
    ("```python\ndef count_vowels(text):\n    return sum(1 for c in text if c in 'aeiou'\n```", "syntax_error"),
    ("```python\ndef vowels(text):\n    return 0\n\ndef check():\n    assert vowels('') == 0\n```", "wrong_function"),
    ("```python\ndef count_vowels(text):\n    return 0\n\nprint(count_vowels('a'))\n```", "no_tests"),
    ("```python\ndef count_vowels(t):\n    '''doc'''\n    return 0\n\ndef check():\n    pass\n```", "no_tests"),
    ("```javascript\nfunction count_vowels(t) { return 0 }\n```", "no_code"),
]


@pytest.mark.parametrize("reply", CLEAN + NOISY)
def test_exercise_parser_reads_clean_and_noisy_replies(reply):
    p = parse_exercise(reply, "count_vowels")
    assert p.status == "ok", p
    assert p.text.startswith("def count_vowels(text):") and "def check():" in p.text
    assert p.program.count("check()") == 2  # defined once, called exactly once


@pytest.mark.parametrize("reply,status", MALFORMED)
def test_exercise_parser_names_what_is_wrong(reply, status):
    p = parse_exercise(reply, "count_vowels")
    assert p.status == status, p
    assert p.program == ""


def test_module_level_asserts_count_as_tests():
    p = parse_exercise("```python\ndef f(x):\n    return x\n\nassert f(1) == 1\n```", "f")
    assert p.status == "ok" and p.program.rstrip().endswith("assert f(1) == 1")


def test_code_blocks_skip_other_languages():
    assert code_blocks("```bash\nls\n```\n```\nx = 1\n```") == ["x = 1"]


def test_textbook_parser():
    assert parse_textbook(None, 80).status == "empty_reply"
    assert parse_textbook("Too short.", 80).status == "too_short"
    long = "Recursion is when a function calls itself. " * 5
    p = parse_textbook(f"  {long}\n", 80)
    assert p.status == "ok" and p.text == long.strip()


# --------------------------------------------------------------------------------------------- verification
def _exercise(s: Synthesizer, index: int = 0) -> Recipe:
    return Recipe("exercise", index, 7, "strings", function_name="count_vowels")


@pytest.mark.parametrize("body,status", [
    ("    return sum(1 for c in text.lower() if c in 'aeiou')", "kept"),
    ("    return 3", "tests_failed"),
    ("    while True:\n        pass", "tests_timeout"),
    ("    import socket\n    socket.create_connection(('1.1.1.1', 80), timeout=2)", "tests_blocked"),
])
def test_exercises_are_verified_in_the_sandbox(body, status):
    s = _synth(verify_timeout_s=2.0)
    reply = f"```python\ndef count_vowels(text):\n{body}\n\ndef check():\n    assert count_vowels('hello') == 2\n```"
    parsed, got = s.judge(_exercise(s), ChatResponse(key="k", text=reply))
    assert got == status, parsed.detail
    if status == "tests_failed":
        assert "AssertionError" in parsed.detail


def test_a_reply_cut_off_by_max_tokens_is_truncated_not_a_syntax_error():
    s = _synth(max_tokens=64)
    cut = "```python\ndef count_vowels(text):\n    return sum(1 for c in text if c in ('a', 'e',"
    assert s.judge(_exercise(s), ChatResponse(key="k", text=cut, completion_tokens=64))[1] == "truncated"
    assert s.judge(_exercise(s), ChatResponse(key="k", text=cut, completion_tokens=40))[1] == "syntax_error"


def test_verification_can_be_switched_off():
    s = _synth(verify=False)
    reply = "```python\ndef count_vowels(text):\n    return 3\n\ndef check():\n    assert count_vowels('hello') == 2\n```"
    assert s.judge(_exercise(s), ChatResponse(key="k", text=reply))[1] == "kept"


# --------------------------------------------------------------------------------------------- shards
def test_shard_rows_audit_table_and_counts():
    s = _synth(textbooks=2, exercises=2, min_chars=20)
    recipes = plan_recipes(s.cfg, Diversity.load(s.cfg), [])
    reqs = [s.request(r) for r in recipes]
    replies = [
        ChatResponse(key=reqs[0].key, text="A loop repeats a block of code. " * 3, prompt_tokens=50, completion_tokens=30),
        ChatResponse(key=reqs[1].key, text=None, error="server error 500", error_kind="server"),
        ChatResponse(key=reqs[2].key, text=f"```python\n{GOOD.replace('count_vowels', recipes[2].function_name)}```"),
        ChatResponse(key=reqs[3].key, text="no code here"),
    ]
    items = [{"recipe": r.to_json(), "request": {"key": q.key, "messages": q.messages}, "response": a.to_json()}
             for r, q, a in zip(recipes, reqs, replies)]
    parent_schema = pa.schema(list(BASE_SCHEMA) + [pa.field("quality_score", pa.float64()), pa.field("quality_model", pa.string())])
    res = s.shard(items, parent_schema)
    assert res.counts["in"] == 4 and res.counts["out"] == 2
    assert res.counts["dropped"] == {"engine_error": 1, "no_code": 1}
    assert res.counts["in"] == res.counts["out"] + sum(res.counts["dropped"].values())
    t = res.table
    assert t.schema == parent_schema and t.column("quality_score").null_count == 2
    assert t.column("source").to_pylist() == ["synthetic/textbook", "synthetic/exercise"]
    meta = json.loads(t.column("meta")[1].as_py())
    assert meta["template_id"] == "synthesize/exercise@1" and meta["template_hash"] == s.templates["exercise"].hash
    assert meta["recipe"]["function_name"] == recipes[2].function_name and meta["verified"] is True
    gens = res.side["generations"].to_pylist()
    assert [g["status"] for g in gens] == ["kept", "engine_error", "kept", "no_code"]
    assert gens[1]["detail"] == "server error 500" and gens[3]["raw_reply"] == "no code here"
    assert gens[0]["prompt_tokens"] == 50 and recipes[0].topic in gens[0]["prompt"]
    assert [g["id"] for g in gens if g["status"] == "kept"] == t.column("id").to_pylist()
    assert len({g["id"] for g in gens}) == 4


def test_conform_fills_missing_columns_with_nulls():
    t = pa.Table.from_pylist([{"id": "a", "text": "x", "source": "s", "meta": "{}"}], schema=BASE_SCHEMA)
    schema = pa.schema(list(BASE_SCHEMA) + [pa.field("quality_score", pa.float32())])
    out = conform(t, schema)
    assert out.schema == schema and out.column("quality_score").to_pylist() == [None]
