"""Prompt templates: one loader for every file under ``prompts/``.

A template is a text file with a YAML header between ``---`` lines and a Jinja2 body::

    ---
    name: annotate/phi1_code        # the template id written on every output row (with the version)
    version: 1
    variables: {text: ..., source: ...}   # exactly the variables the body may use; render() checks them
    output: {type: score, min: 0, max: 5, choices: [...], json_schema: {...}}
    system: optional system message (also Jinja2)
    ---
    the user message (Jinja2, StrictUndefined)

``template_id`` is ``name@version`` and ``template_hash`` the sha256 of the whole file, so any edit to the
wording, the header or the output schema changes the hash, the response-cache key and the version id.

``parse_score`` is the one robust reader of a score reply, whatever produced it: a constrained single digit,
a JSON object from structured outputs, or free text such as "Educational score: 3" or "**Score:** 4/5".
It never raises: a reply it cannot read is reported as ``unparsed`` and kept by the caller with its raw text.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import yaml

PROMPTS_DIR = Path(os.environ.get("FACTORY_PROMPTS_DIR") or Path(__file__).resolve().parents[1] / "prompts")
SUFFIXES = (".md", ".j2", ".jinja", ".txt")


class TemplateError(ValueError):
    """A template file that cannot be loaded or rendered; the message names the file and the problem."""


@dataclass(frozen=True)
class OutputSpec:
    type: str = "text"  # "score" | "text" | "json"
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None
    json_schema: dict[str, Any] | None = None

    @classmethod
    def from_header(cls, d: dict[str, Any] | None, where: str) -> "OutputSpec":
        d = dict(d or {})
        unknown = set(d) - {"type", "min", "max", "choices", "json_schema"}
        if unknown:
            raise TemplateError(f"{where}: unknown output keys {sorted(unknown)}")
        spec = cls(
            type=str(d.get("type", "text")),
            min=d.get("min"),
            max=d.get("max"),
            choices=tuple(str(c) for c in d["choices"]) if d.get("choices") else None,
            json_schema=d.get("json_schema"),
        )
        if spec.type == "score":
            if spec.min is None or spec.max is None or spec.min >= spec.max:
                raise TemplateError(f"{where}: a score output needs min < max")
            for c in spec.choices or ():
                try:
                    v = float(c)
                except ValueError:
                    raise TemplateError(f"{where}: score choice {c!r} is not a number") from None
                if not spec.min <= v <= spec.max:
                    raise TemplateError(f"{where}: score choice {c!r} outside [{spec.min}, {spec.max}]")
        return spec


@dataclass(frozen=True)
class ParseResult:
    score: float | None
    status: str  # "ok" | "unparsed"
    how: str = ""  # which rule read it: choice, json, labeled, fraction, bare, ...


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    version: int
    path: Path
    hash: str
    variables: tuple[str, ...]
    output: OutputSpec
    body: str
    system: str | None = None
    description: str = ""
    header: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def id(self) -> str:
        return f"{self.name}@{self.version}"

    def render(self, **values: Any) -> list[dict[str, str]]:
        """Chat messages for one input; every declared variable must be given, and nothing else."""
        missing = [v for v in self.variables if v not in values]
        extra = [k for k in values if k not in self.variables]
        if missing or extra:
            raise TemplateError(
                f"{self.path}: render() needs exactly {list(self.variables)}"
                + (f"; missing {missing}" if missing else "")
                + (f"; unexpected {extra}" if extra else "")
            )
        msgs = []
        if self.system:
            msgs.append({"role": "system", "content": _compile(self.system).render(**values).strip()})
        msgs.append({"role": "user", "content": _compile(self.body).render(**values).strip()})
        return msgs

    def render_text(self, **values: Any) -> str:
        """The messages as one readable string (golden tests, logs)."""
        return "\n".join(f"<|{m['role']}|>\n{m['content']}" for m in self.render(**values)) + "\n"

    def parse(self, reply: str | None) -> ParseResult:
        if self.output.type != "score":
            text = (reply or "").strip()
            return ParseResult(None, "ok" if text else "unparsed", "text")
        return parse_score(reply, self.output.min, self.output.max)


@lru_cache(maxsize=64)
def _compile(src: str) -> jinja2.Template:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)
    return env.from_string(src)


def _split_front_matter(raw: str, where: str) -> tuple[dict[str, Any], str]:
    if not raw.startswith("---"):
        raise TemplateError(f"{where}: a template starts with a YAML header between '---' lines")
    parts = re.split(r"^---[ \t]*$\n?", raw, maxsplit=2, flags=re.M)
    if len(parts) < 3:
        raise TemplateError(f"{where}: the YAML header is not closed by a '---' line")
    try:
        header = yaml.safe_load(parts[1]) or {}
    except yaml.YAMLError as e:
        raise TemplateError(f"{where}: header is not valid YAML ({e})") from None
    if not isinstance(header, dict):
        raise TemplateError(f"{where}: the header must be a mapping")
    return header, parts[2]


def template_refs(root: Path | None = None) -> list[str]:
    """Every template under prompts/: the files that open with a YAML header (list files do not)."""
    root = Path(root) if root else PROMPTS_DIR
    refs = []
    for q in sorted(root.rglob("*")):
        if q.is_file() and q.suffix in SUFFIXES:
            with open(q, encoding="utf-8", errors="replace") as f:
                if f.readline().strip() == "---":
                    refs.append(str(q.relative_to(root).with_suffix("")))
    return refs


def list_refs(root: Path | None = None) -> list[str]:
    """Every list file (topics, audiences, vocabulary...): ``prompts/lists/*.txt``."""
    root = Path(root) if root else PROMPTS_DIR
    return sorted(str(q.relative_to(root).with_suffix("")) for q in (root / "lists").glob("*.txt"))


def find_template(ref: str, root: Path | None = None) -> Path:
    """``annotate/phi1_code`` -> prompts/annotate/phi1_code.<md|j2|...>; a path to a file is taken as is."""
    p = Path(ref).expanduser()
    if p.is_file():
        return p.resolve()
    root = Path(root) if root else PROMPTS_DIR
    for suffix in ("", *SUFFIXES):
        cand = root / f"{ref}{suffix}"
        if cand.is_file():
            return cand.resolve()
    known = template_refs(root)
    raise TemplateError(f"no template {ref!r} under {root} (known: {', '.join(known) or 'none'})")


def load_template(ref: str, root: Path | None = None) -> PromptTemplate:
    path = find_template(ref, root)
    raw_bytes = path.read_bytes()
    where = str(path)
    header, body = _split_front_matter(raw_bytes.decode("utf-8"), where)
    for key in ("name", "version", "variables", "output"):
        if key not in header:
            raise TemplateError(f"{where}: header key {key!r} is missing")
    unknown = set(header) - {"name", "version", "variables", "output", "system", "description"}
    if unknown:
        raise TemplateError(f"{where}: unknown header keys {sorted(unknown)}")
    variables = header["variables"]
    names = tuple(variables) if isinstance(variables, (dict, list)) else ()
    if not names:
        raise TemplateError(f"{where}: 'variables' must list the variables the body uses")
    system = header.get("system")
    env = jinja2.Environment()
    used: set[str] = set()
    for src in (body, system or ""):
        try:
            used |= jinja2.meta.find_undeclared_variables(env.parse(src))
        except jinja2.TemplateSyntaxError as e:
            raise TemplateError(f"{where}: Jinja2 syntax error line {e.lineno}: {e.message}") from None
    undeclared = used - set(names)
    if undeclared:
        raise TemplateError(f"{where}: the body uses undeclared variables {sorted(undeclared)}")
    return PromptTemplate(
        name=str(header["name"]),
        version=int(header["version"]),
        path=path,
        hash=hashlib.sha256(raw_bytes).hexdigest(),
        variables=names,
        output=OutputSpec.from_header(header["output"], where),
        body=body,
        system=system,
        description=str(header.get("description") or "").strip(),
        header=header,
    )


def load_list(ref: str, root: Path | None = None) -> list[str]:
    """A plain list file under prompts/ (topics, audiences, vocabulary): one item a line, '#' comments."""
    root = Path(root) if root else PROMPTS_DIR
    p = Path(ref) if Path(ref).is_file() else root / (ref if Path(ref).suffix else f"{ref}.txt")
    if not p.is_file():
        raise TemplateError(f"no list {ref!r} under {root}")
    return [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


# --------------------------------------------------------------------------------------------- parsing
_NUM = r"([-+]?\d+(?:\.\d)?)(?!\.?\d)"  # scores have at most one decimal: 3.14159 is not one
_LABELED = re.compile(
    r"(?:educational[\s_-]*)?(?:score|rating|grade|points?|value)\s*(?:is|of|=|:|-)?\s*[*_`\"'(\[]*\s*" + _NUM
    + r"(?:\s*(?:/|out\s+of)\s*(\d+))?",
    re.I,
)
# prose: "the educational value of this code is 0", "I would rate it a 4", "rated as a 3"
_PROSE = re.compile(
    r"(?:\b(?:score|rating|value|grade)\b[^.\n\d]{0,40}?\b(?:is|be|of|at)\b|\brat(?:e|ed|ing)\b[^.\n\d]{0,30}?)"
    r"\s*(?:a|an|as|at)?\s*[*_`\"'(\[]*" + _NUM + r"(?![\d.]*\s*%)(?:\s*(?:/|out\s+of)\s*(\d+))?",
    re.I,
)
_FRACTION = re.compile(_NUM + r"\s*(?:/|out\s+of)\s*(\d+)", re.I)
_BARE = re.compile(r"^[\s*_`\"'(\[{]*" + _NUM + r"[\s*_`\"')\]}.!]*$")
_JSON_OBJ = re.compile(r"\{[^{}]*\}", re.S)
_SCORE_KEYS = ("score", "educational_score", "educational score", "rating", "answer", "value")
_KEY_VALUE = re.compile(r'"(?:score|educational[ _]score|rating|answer|value)"\s*:\s*"?\s*' + _NUM, re.I)


def _in_range(v: float, lo: float, hi: float) -> bool:
    return lo <= v <= hi


def parse_score(reply: str | None, lo: float, hi: float) -> ParseResult:
    """A score in [lo, hi] from any reply, or ``unparsed``; never raises.

    Order: a bare number (what constrained decoding produces); a JSON object with a score key (structured
    outputs); the LAST labeled score ("Educational score: 3", "**Score**: 4/5"), as the FineWeb-Edu parser
    takes the concluding one; an ``N/M`` or ``N out of M`` fraction whose denominator is the scale's top.
    A number outside the scale is not a score.
    """
    if reply is None:
        return ParseResult(None, "unparsed", "empty")
    text = str(reply).strip()
    if not text:
        return ParseResult(None, "unparsed", "empty")
    m = _BARE.match(text)
    if m:
        v = float(m.group(1))
        return ParseResult(v, "ok", "bare") if _in_range(v, lo, hi) else ParseResult(None, "unparsed", "out_of_range")
    for obj in _json_candidates(text):
        for k, val in obj.items():
            if str(k).strip().lower() in _SCORE_KEYS:
                v = _to_number(val)
                if v is not None and _in_range(v, lo, hi):
                    return ParseResult(v, "ok", "json")
    for m in _KEY_VALUE.finditer(text):  # JSON cut short by max_tokens: '{ "answer": "3'
        v = float(m.group(1))
        if _in_range(v, lo, hi):
            return ParseResult(v, "ok", "json")
    labeled = list(_LABELED.finditer(text))
    for m in reversed(labeled):
        v = float(m.group(1))
        denom = m.group(2)
        if denom is not None and float(denom) != hi:
            continue
        if _in_range(v, lo, hi):
            return ParseResult(v, "ok", "labeled")
    for m in reversed(list(_PROSE.finditer(text))):
        v = float(m.group(1))
        if (m.group(2) is None or float(m.group(2)) == hi) and _in_range(v, lo, hi):
            return ParseResult(v, "ok", "prose")
    for m in reversed(list(_FRACTION.finditer(text))):
        if float(m.group(2)) == hi and _in_range(float(m.group(1)), lo, hi):
            return ParseResult(float(m.group(1)), "ok", "fraction")
    # a reply that starts with the number and then explains ("3. The code is ...", "4 - clear")
    m = re.match(r"^[\s*_`\"'(\[]*" + _NUM + r"(?:\s*[-:.,)\]]\s+|\s*\n)", text)
    if m and _in_range(float(m.group(1)), lo, hi):
        return ParseResult(float(m.group(1)), "ok", "leading")
    return ParseResult(None, "unparsed", "no_score")


def _json_candidates(text: str) -> list[dict[str, Any]]:
    out = []
    stripped = text.strip().strip("`")
    if stripped.startswith("json"):
        stripped = stripped[4:]
    for src in [stripped, *(_JSON_OBJ.findall(text))]:
        try:
            obj = json.loads(src)
        except (ValueError, TypeError):
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def _to_number(val: Any) -> float | None:
    if isinstance(val, bool):
        return None
    if isinstance(val, (int, float)):
        return float(val)
    if isinstance(val, str):
        m = re.fullmatch(r"\s*" + _NUM + r"\s*", val)
        return float(m.group(1)) if m else None
    return None
