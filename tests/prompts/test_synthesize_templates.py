"""The synthesize templates and their diversity lists: golden renders, headers, and every shipped list loads.

(The replies' parsers, clean / noisy / malformed, are tested with the stage: tests/stages/test_synthesize.py.)
Regenerate the golden files after an intended wording change with ``UPDATE_GOLDEN=1``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from factory.prompts import list_refs, load_list, load_template, template_refs

GOLDEN = Path(__file__).parent / "golden"

RENDERS = {
    "synthesize/textbook": {"topic": "recursion", "audience": "a first-year computer science student",
                            "words": "lantern, bridge, curious", "snippet": "def walk(tree):\n    yield tree"},
    "synthesize/exercise": {"topic": "binary search", "function_name": "find_prefixes"},
}


@pytest.mark.parametrize("ref", sorted(RENDERS))
def test_golden_render(ref):
    got = load_template(ref).render_text(**RENDERS[ref])
    path = GOLDEN / (ref.replace("/", "_") + ".txt")
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(got)
    assert path.exists(), f"missing golden render {path} (run with UPDATE_GOLDEN=1 once, then review it)"
    assert got == path.read_text(), f"render of {ref} changed; review and regenerate {path}"


def test_textbook_leaves_out_empty_words_and_snippet():
    t = load_template("synthesize/textbook")
    user = t.render(topic="loops", audience="a teacher", words="", snippet="")[-1]["content"]
    assert "Use these words" not in user and "```" not in user
    full = t.render(**RENDERS["synthesize/textbook"])[-1]["content"]
    assert "lantern, bridge, curious" in full and "def walk(tree):" in full and "a first-year" in full


def test_headers():
    tb, ex = load_template("synthesize/textbook"), load_template("synthesize/exercise")
    assert tb.variables == ("topic", "audience", "words", "snippet") and tb.output.type == "text"
    assert ex.variables == ("function_name", "topic") and ex.output.type == "code"
    assert ex.render(**RENDERS["synthesize/exercise"])[-1]["content"].count("find_prefixes") == 3


def test_every_shipped_template_and_list_loads():
    refs = template_refs()
    assert {"annotate/phi1_code", "annotate/fineweb_edu", "synthesize/textbook", "synthesize/exercise"} <= set(refs)
    assert not any(r.startswith("lists/") for r in refs)  # list files are data, not templates
    for ref in refs:
        load_template(ref)
    lists = list_refs()
    assert {"lists/topics", "lists/audiences", "lists/vocabulary", "lists/function_verbs", "lists/function_nouns"} <= set(lists)
    for ref in lists:
        items = load_list(ref)
        assert len(items) >= 10 and len(set(items)) == len(items), f"{ref}: too short or has duplicates"
        assert all(not i.startswith("#") for i in items)
    names = load_list("lists/function_verbs") + load_list("lists/function_nouns")
    assert all(n.isidentifier() for n in names)  # verb_noun must be a valid Python name
