"""Templates: golden renders (checked in), header validation, and the score parser on real-world replies.

Regenerate the golden files after an intended wording change with ``UPDATE_GOLDEN=1 pytest tests/prompts``
(and review the diff: every change there changes the template hash, the cache keys and the version ids).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from factory.prompts import PROMPTS_DIR, TemplateError, load_list, load_template, parse_score

GOLDEN = Path(__file__).parent / "golden"
TEMPLATES = ["annotate/phi1_code", "annotate/fineweb_edu"]

CODE_DOC = '''def mean(values):
    """Return the arithmetic mean of a non-empty list of numbers."""
    total = 0
    for v in values:
        total += v
    return total / len(values)
'''


@pytest.mark.parametrize("ref", TEMPLATES)
def test_golden_render(ref):
    t = load_template(ref)
    got = t.render_text(text=CODE_DOC, source="stdlib")
    path = GOLDEN / (ref.split("/")[-1] + ".txt")
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(got)
    assert path.exists(), f"missing golden render {path} (run with UPDATE_GOLDEN=1 once, then review it)"
    assert got == path.read_text(), f"render of {ref} changed; review and regenerate {path}"


@pytest.mark.parametrize("ref", TEMPLATES)
def test_header_id_hash_and_output(ref):
    t = load_template(ref)
    assert t.id == f"{ref}@{t.version}"
    assert t.hash == hashlib.sha256(t.path.read_bytes()).hexdigest()
    assert t.variables == ("text", "source")
    assert t.output.type == "score" and (t.output.min, t.output.max) == (0, 5)
    assert t.output.choices == tuple(str(i) for i in range(6))
    assert t.output.json_schema["properties"]["score"]["enum"] == list(range(6))
    msgs = t.render(text="x = 1", source="s")
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert "x = 1" in msgs[-1]["content"]


def test_phi1_wording_and_fineweb_scale():
    phi1 = load_template("annotate/phi1_code").render(text="pass", source="s")[-1]["content"]
    assert "educational value" in phi1 and "a student whose goal is to learn basic coding concepts" in phi1
    fw = load_template("annotate/fineweb_edu").render(text="pass", source="s")[-1]["content"]
    for word in ("Add 1 point", "Add another point", "Award a third point", "Grant a fourth point", "Bestow a fifth point"):
        assert word in fw
    assert 'Educational score: <total points>' in fw


def test_render_checks_variables():
    t = load_template("annotate/phi1_code")
    with pytest.raises(TemplateError, match="missing"):
        t.render(text="x")
    with pytest.raises(TemplateError, match="unexpected"):
        t.render(text="x", source="s", other=1)


def test_bad_templates_are_rejected(tmp_path):
    def write(name, content):
        p = tmp_path / f"{name}.md"
        p.write_text(content)
        return p

    with pytest.raises(TemplateError, match="YAML header"):
        load_template(str(write("nohdr", "just a body {{ text }}")))
    with pytest.raises(TemplateError, match="undeclared variables"):
        load_template(str(write("undecl", "---\nname: a\nversion: 1\nvariables: [text]\noutput: {type: text}\n---\n{{ text }} {{ oops }}\n")))
    with pytest.raises(TemplateError, match="missing"):
        load_template(str(write("nover", "---\nname: a\nvariables: [text]\noutput: {type: text}\n---\n{{ text }}\n")))
    with pytest.raises(TemplateError, match="min < max"):
        load_template(str(write("scale", "---\nname: a\nversion: 1\nvariables: [text]\noutput: {type: score, min: 5, max: 0}\n---\n{{ text }}\n")))
    with pytest.raises(TemplateError, match="no template"):
        load_template("annotate/does_not_exist")


def test_hash_changes_with_any_edit(tmp_path):
    src = load_template("annotate/phi1_code").path.read_text()
    a = tmp_path / "a.md"
    b = tmp_path / "b.md"
    a.write_text(src)
    b.write_text(src.replace("strict teacher", "kind teacher"))
    assert load_template(str(a)).hash != load_template(str(b)).hash
    assert load_template(str(a)).hash == load_template("annotate/phi1_code").hash


def test_load_list(tmp_path):
    (tmp_path / "topics.txt").write_text("# comment\nrecursion\n\nloops\n")
    assert load_list("topics", root=tmp_path) == ["recursion", "loops"]


def test_prompts_dir_is_the_repo_folder():
    assert (PROMPTS_DIR / "annotate").is_dir()


# --------------------------------------------------------------------------------------------- parser
CLEAN = [("3", 3.0), ("0", 0.0), ("5", 5.0), ('{"score": 4}', 4.0), ('{"answer": "2"}', 2.0),
         ("Educational score: 4", 4.0), ("Score: 1", 1.0)]
NOISY = [
    ("  4.\n", 4.0),
    ("**Score:** 5/5", 5.0),
    ("The extract is a tutorial on loops with exercises.\n\nEducational score: 3", 3.0),
    ("Score: 2. On reflection the code is clearer than that.\nEducational score: 4", 4.0),
    ("```json\n{\"score\": 1}\n```", 1.0),
    ('{ "answer": "0"', 0.0),  # JSON cut off by max_tokens
    ("I would rate this 3/5 because it is clear.", 3.0),
    ("3 - clear code, few comments", 3.0),
    ("Rating: 2 out of 5", 2.0),
    ("score=5", 5.0),
    ("The educational value of this code is 0.\n\nThe educational value of this code is 0.", 0.0),
    ("I would rate this code a 4 because it is clear.", 4.0),
    ("The number 2 is rated as a 3.", 3.0),
]
EMPTY = [None, "", "   ", "\n\n"]
MALFORMED = [
    "The code is not very useful for learning basic coding concepts. It's a binary",
    "Score: 7",  # out of the 0-5 scale
    "10/10",
    "{\"score\": \"high\"}",
    "{\"score\": true}",
    "-1",
    "Educational score: <total points>",
    "\x00\x01\x02",
    "The code is a simple implementation of the percolation centrality. It uses 2 loops.",
    "The value of pi is 3.14159 and the rating is high.",
]


@pytest.mark.parametrize("reply,want", CLEAN)
def test_parse_clean(reply, want):
    r = parse_score(reply, 0, 5)
    assert (r.status, r.score) == ("ok", want)


@pytest.mark.parametrize("reply,want", NOISY)
def test_parse_noisy(reply, want):
    r = parse_score(reply, 0, 5)
    assert (r.status, r.score) == ("ok", want), r


@pytest.mark.parametrize("reply", EMPTY)
def test_parse_empty(reply):
    r = parse_score(reply, 0, 5)
    assert r.status == "unparsed" and r.score is None and r.how == "empty"


@pytest.mark.parametrize("reply", MALFORMED)
def test_parse_malformed(reply):
    r = parse_score(reply, 0, 5)
    assert r.status == "unparsed" and r.score is None, r


@pytest.mark.parametrize("ref", TEMPLATES)
def test_template_parse_uses_its_scale(ref):
    t = load_template(ref)
    assert t.parse("Educational score: 5").score == 5.0
    assert t.parse("Educational score: 6").status == "unparsed"
    assert t.parse(None).status == "unparsed"
