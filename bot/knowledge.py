"""The corpus' structured knowledge: sources (``corpus/sources.toml``) and the survey's decision flow
(``corpus/decision_flow.toml``), read into frozen dataclasses. Nothing about the flow is hard-coded elsewhere."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from bot.text import tokenize
from ingest.sources import Source as Source  # re-exported: the one sources.toml reader lives in ingest
from ingest.sources import load_sources as load_sources

VERDICTS = ("llm", "fine_tuned", "neither", "depends")
PROVENANCES = ("survey", "flow")  # the survey evaluated the task / only Figure 2's conditions give its verdict


class KnowledgeError(ValueError):
    """A corpus data file is missing or malformed; the message names the file and the field."""


@dataclass(frozen=True)
class Outcome:
    id: str
    label: dict[str, str]
    summary: dict[str, str]


@dataclass(frozen=True)
class Condition:
    step: int
    id: str
    figure_text: str
    name: dict[str, str]
    description: dict[str, str]
    question: dict[str, str]
    yes: str
    no: str
    sections: tuple[str, ...]
    cues_yes: tuple[str, ...]
    cues_no: tuple[str, ...]
    numeric: dict | None
    implies: tuple[str, ...] = ()  # conditions that must hold when this one is answered (steps 9-10 → step 8)
    # "task": what the task is (a follow-up naming another task replaces it); "situation": the user's data, which
    # carries over to a follow-up unless restated.
    about: str = "situation"


@dataclass(frozen=True)
class Task:
    id: str
    names: dict[str, tuple[str, ...]]
    finding: dict[str, str]
    verdict: str
    sections: tuple[str, ...]
    conditions: dict[str, bool]
    generic: bool = False  # a task family (e.g. "text classification"): sets conditions, never overrides the flow
    provenance: str = "survey"  # "survey": the survey evaluated it; "flow": the verdict follows from Figure 2 alone
    # Condition ids whose situation the finding was measured in: when the walk is decided by one of them and its
    # outcome differs from `verdict`, the finding is evidence about that very situation (→ "depends"); otherwise
    # the finding is only a caveat.
    finding_covers: tuple[str, ...] = ()

    @property
    def all_names(self) -> tuple[str, ...]:
        return self.names["en"] + self.names["ja"]

    def named_in(self, text: str) -> bool:
        """Whether ``text`` names this task by any of its names (case-insensitive; Latin names as whole words, so
        "ner" is not found in "general")."""
        return _names_pattern(self.all_names).search(text.lower()) is not None


@cache
def _names_pattern(names: tuple[str, ...]) -> re.Pattern[str]:
    """One compiled alternation of a task's names (two characters or more) as whole Latin words."""
    alternatives = "|".join(re.escape(n.lower()) for n in sorted(names, key=len, reverse=True) if len(n) >= 2)
    return re.compile(rf"(?<![a-z0-9])(?:{alternatives or '(?!)'})(?![a-z0-9])")


@dataclass(frozen=True)
class Consideration:
    id: str
    favours: str
    sections: tuple[str, ...]
    cues: tuple[str, ...]
    note: dict[str, str]


@dataclass(frozen=True)
class DecisionFlow:
    doc_id: str
    figure_section: str
    outcomes: dict[str, Outcome]
    conditions: tuple[Condition, ...]
    tasks: tuple[Task, ...]
    considerations: tuple[Consideration, ...]

    def condition(self, cid: str) -> Condition:
        return next(c for c in self.conditions if c.id == cid)


def _need(table: dict, key: str, where: str, file: Path):
    if key not in table or table[key] in (None, ""):
        raise KnowledgeError(f"{file}: {where} is missing '{key}'")
    return table[key]


def _pair(table: dict, stem: str, where: str, file: Path) -> dict[str, str]:
    return {lang: str(_need(table, f"{stem}_{lang}", where, file)) for lang in ("en", "ja")}


def _lower(items) -> tuple[str, ...]:
    return tuple(str(x).lower() for x in items or ())


def read_jsonl(path: Path, required: tuple[str, ...] = ()) -> Iterator[tuple[str, dict]]:
    """(``file:line``, object) for each non-blank line of a labelled-data file; a bad line raises KnowledgeError
    naming the file, the line and the field (``required``: keys that must hold non-empty strings)."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise KnowledgeError(f"{where}: not valid JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise KnowledgeError(f"{where}: a line must be a JSON object")
        for key in required:
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise KnowledgeError(f"{where}: field '{key}' is missing or empty")
        yield where, row


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise KnowledgeError(f"{path} not found; run from the repo root or set DOTCHI_CORPUS_DIR") from exc
    except tomllib.TOMLDecodeError as exc:
        raise KnowledgeError(f"{path}: invalid TOML: {exc}") from exc


def load_flow(path: Path) -> DecisionFlow:
    data = _read_toml(path)
    outcomes = {
        oid: Outcome(oid, _pair(o, "label", f"outcomes.{oid}", path), _pair(o, "summary", f"outcomes.{oid}", path))
        for oid, o in _need(data, "outcomes", "the file", path).items()
    }
    targets = set(outcomes) | {"next"}
    conditions = []
    for i, c in enumerate(_need(data, "conditions", "the file", path)):
        where = f"conditions[{i}]"
        cond = Condition(
            step=int(_need(c, "step", where, path)),
            id=str(_need(c, "id", where, path)),
            figure_text=str(c.get("figure_text", "")),
            name=_pair(c, "name", where, path),
            description=_pair(c, "description", where, path),
            question=_pair(c, "question", where, path),
            yes=str(_need(c, "yes", where, path)),
            no=str(_need(c, "no", where, path)),
            sections=tuple(str(s) for s in _need(c, "sections", where, path)),
            cues_yes=_lower([*c.get("cues_yes_en", []), *c.get("cues_yes_ja", [])]),
            cues_no=_lower([*c.get("cues_no_en", []), *c.get("cues_no_ja", [])]),
            numeric=c.get("numeric"),
            implies=tuple(str(x) for x in c.get("implies", [])),
            about=str(c.get("about", "situation")),
        )
        if cond.about not in ("task", "situation"):
            raise KnowledgeError(f"{path}: {where}.about must be 'task' or 'situation', not '{cond.about}'")
        for branch in (cond.yes, cond.no):
            if branch not in targets:
                raise KnowledgeError(f"{path}: {where}.yes/no '{branch}' is not an outcome id or 'next'")
        conditions.append(cond)
    conditions.sort(key=lambda c: c.step)
    cond_ids = {c.id for c in conditions}
    tasks = []
    for i, t in enumerate(data.get("tasks", [])):
        where = f"tasks[{i}]"
        verdict = str(_need(t, "verdict", where, path))
        if verdict not in outcomes:
            raise KnowledgeError(f"{path}: {where}.verdict '{verdict}' is not an outcome id")
        conds = {str(k): bool(v) for k, v in (t.get("conditions") or {}).items()}
        unknown = set(conds) - cond_ids
        if unknown:
            raise KnowledgeError(f"{path}: {where}.conditions names unknown condition(s) {sorted(unknown)}")
        provenance = str(t.get("provenance", "survey"))
        if provenance not in PROVENANCES:
            raise KnowledgeError(f"{path}: {where}.provenance '{provenance}' is not one of {list(PROVENANCES)}")
        covers = t.get("finding_covers", [])
        if not isinstance(covers, list) or not all(isinstance(x, str) for x in covers):
            raise KnowledgeError(f"{path}: {where}.finding_covers must be a list of condition ids")
        unknown = set(covers) - cond_ids
        if unknown:
            raise KnowledgeError(f"{path}: {where}.finding_covers names unknown condition(s) {sorted(unknown)}")
        tasks.append(
            Task(
                id=str(_need(t, "id", where, path)),
                names={
                    "en": _lower(_need(t, "names_en", where, path)),
                    "ja": _lower(_need(t, "names_ja", where, path)),
                },
                finding=_pair(t, "finding", where, path),
                verdict=verdict,
                sections=tuple(str(s) for s in _need(t, "sections", where, path)),
                conditions=conds,
                generic=bool(t.get("generic", False)),
                provenance=provenance,
                finding_covers=tuple(covers),
            )
        )
    considerations = []
    for i, c in enumerate(data.get("considerations", [])):
        where = f"considerations[{i}]"
        considerations.append(
            Consideration(
                id=str(_need(c, "id", where, path)),
                favours=str(_need(c, "favours", where, path)),
                sections=tuple(str(s) for s in _need(c, "sections", where, path)),
                cues=_lower([*c.get("cues_en", []), *c.get("cues_ja", [])]),
                note=_pair(c, "note", where, path),
            )
        )
    return DecisionFlow(
        doc_id=str(data.get("doc_id", "yang2023harnessing")),
        figure_section=str(data.get("figure_section", "4")),
        outcomes=outcomes,
        conditions=tuple(conditions),
        tasks=tuple(tasks),
        considerations=tuple(considerations),
    )


@dataclass(frozen=True)
class ContentAsks:
    """How content questions are read (``corpus/content.toml``): list, definition and count asks, and the
    abbreviations that do not end a sentence."""

    list_asks: tuple[re.Pattern[str], ...] = ()
    definition_asks: tuple[re.Pattern[str], ...] = ()
    definition_cues: dict[str, tuple[str, ...]] = field(default_factory=dict)
    definition_titles: tuple[str, ...] = ()
    generic_terms: frozenset[str] = frozenset()
    generic_phrases: tuple[str, ...] = ()  # taken out of a question before its specific words are read
    abbreviations: frozenset[str] = frozenset()
    counts: dict[str, int] = field(default_factory=dict)
    count_patterns: tuple[re.Pattern[str], ...] = ()
    named_number: re.Pattern[str] = re.compile(r"(?!)")  # a numbered part of the survey named in a question


def load_content_asks(path: Path) -> ContentAsks:
    data = _read_toml(path)

    def patterns(key: str) -> tuple[re.Pattern[str], ...]:
        out = []
        for i, pattern in enumerate(data.get(key, [])):
            try:
                out.append(re.compile(str(pattern), re.IGNORECASE))
            except re.error as exc:
                raise KnowledgeError(f"{path}: {key}[{i}] is not a valid regex ({exc})") from exc
        return tuple(out)

    counts = data.get("count_pattern", {})
    return ContentAsks(
        list_asks=patterns("list_asks"),
        definition_asks=patterns("definition_asks"),
        definition_cues={lang: tuple(data.get(f"definition_cues_{lang}", [])) for lang in ("en", "ja")},
        generic_terms=frozenset(t for w in data.get("generic_words", []) for t in tokenize(str(w))),
        generic_phrases=tuple(str(w).lower() for w in data.get("generic_phrases", [])),
        definition_titles=tuple(str(w).lower() for w in data.get("definition_titles", [])),
        abbreviations=frozenset(str(a).lower() for a in data.get("abbreviations", [])),
        counts={str(k).lower(): int(v) for k, v in data.get("counts", {}).items()},
        count_patterns=tuple(re.compile(str(counts[lang]), re.IGNORECASE) for lang in ("en", "ja") if lang in counts),
        **({"named_number": re.compile(str(data["named_number"]), re.IGNORECASE)} if "named_number" in data else {}),
    )
