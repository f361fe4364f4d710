"""``python -m bot eval [FILE.jsonl]``: verdict accuracy, cited-section hit rate, abstention precision/recall,
answer-language match, invalid citations, key-point coverage of content answers and latency, per language and
overall, for the dev and held-out splits."""

from __future__ import annotations

import json
import re
import sys
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from bot.answer import Answer, check_citations
from bot.compose import QUOTED, T
from bot.knowledge import DecisionFlow
from bot.pipeline import Pipeline
from bot.service import AnswerService
from ingest.config import Settings


def section_hit(sections: list[str], expected: list[str]) -> bool:
    """A cited section is an expected one or lies under it ("4.1.1" under "4.1")."""
    return any(s == e or s.startswith(e + ".") for s in sections for e in expected)


@dataclass
class Result:
    item: dict
    verdict: str | None
    abstained: bool
    language: str
    sections: list[str]
    invalid: int
    seconds: float
    answer: str = ""
    debug: dict = field(default_factory=dict)
    task_support: tuple[int, int, int] = (0, 0, 0)  # see ``task_support``

    @property
    def section_hit(self) -> bool | None:
        expected = self.item.get("expected_sections") or []
        if not expected or self.item.get("expect_abstain"):
            return None
        return section_hit(self.sections, expected)

    @property
    def intent(self) -> str:
        return answered_as(self.abstained, self.verdict)

    @property
    def key_points(self) -> tuple[int, int] | None:
        """(covered, total) key points of a content question that lists ``key_points``, else None."""
        points = self.item.get("key_points")
        if not points or self.item.get("kind", "content") != "content":
            return None
        return sum(covers(self.answer, point) for point in points), len(points)

    @property
    def verdict_ok(self) -> bool | None:
        if self.item.get("kind") != "decision":
            return None
        return self.verdict == self.item.get("expected_verdict")


def task_support(answer: Answer, flow: DecisionFlow) -> tuple[int, int, int]:
    """Of the answer's lines (not the source list) that name the matched task in their own words (quotes of the
    question aside) and cite: how many cite a chunk that names the task or comes from the section of the task's
    finding (the issue's definition), how many cite a chunk that names it, and how many such lines there are."""
    task = next((t for t in flow.tasks if t.id == answer.task), None)
    if task is None:
        return 0, 0, 0
    by_n = {c["n"]: c for c in answer.citations}
    supported = named = total = 0
    for line in answer.answer.split("\n"):
        if re.match(r"^- \[\d+\] ", line):  # the source list
            continue
        cited = [by_n[int(n)] for n in re.findall(r"\[(\d+)\]", line) if int(n) in by_n]
        own_words = QUOTED.sub("", line.lower())  # the user's words quoted as evidence are not the claim
        if not cited or not task.named_in(own_words):
            continue
        total += 1
        names = any(task.named_in(f"{c.get('title', '')} {c.get('text', '')}") for c in cited)
        named += names
        supported += names or any(c.get("section") in task.sections for c in cited)
    return supported, named, total


def answered_as(abstained: bool, verdict: str | None) -> str:
    """What an answer treated its question as: refused (offtopic), a verdict (decision) or content."""
    return "offtopic" if abstained else ("decision" if verdict else "content")


def _fold(text: str) -> str:
    """Width- and case-insensitive form (NFKC, casefold, one space)."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def answer_body(answer: str) -> str:
    """The answer without its sources list (titles there are references, not what the answer says)."""
    for lang in T:
        head = "\n" + T[lang]["sources"] + "\n"
        if head in answer:
            return answer.split(head)[0]
    return answer


def covers(answer: str, point: dict) -> bool:
    """A key point ({"en": [phrasings], "ja": [phrasings]}) is covered when any phrasing of either language appears
    in the answer body, case- and width-insensitively."""
    body = _fold(answer_body(answer))
    return any(_fold(p) in body for lang in ("en", "ja") for p in point.get(lang, []) if p.strip())


def load_items(path: Path) -> list[dict]:
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
        if "question" not in item:
            raise ValueError(f"{path}:{number}: missing field 'question'")
        items.append(item)
    return items


def run(
    answerer: AnswerService | Pipeline, items: list[dict], before_each: Callable[[str], None] | None = None
) -> list[Result]:
    """Answer every item through the pipeline (a bare service gets the template writer). ``before_each``: called
    with each question before it is answered (the bench times the embedding floor there, interleaved)."""
    pipeline = answerer if isinstance(answerer, Pipeline) else Pipeline(answerer)
    store_ids = {c.id for c in pipeline.service.retriever.chunks}
    results = []
    for item in items:
        if before_each is not None:
            before_each(item["question"])
        answer = pipeline.ask(item["question"])
        results.append(
            Result(
                item,
                answer.verdict,
                answer.abstained,
                answer.language,
                [c["section"] for c in answer.citations],
                len(check_citations(answer, store_ids)),
                answer.seconds,
                answer.answer,
                answer.debug,
                task_support(answer, pipeline.service.flow),
            )
        )
    return results


def _rate(values: list[bool]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def metrics(results: list[Result]) -> dict:
    verdicts = [r.verdict_ok for r in results if r.verdict_ok is not None]
    hits = [r.section_hit for r in results if r.section_hit is not None]
    should = [r for r in results if r.item.get("expect_abstain")]
    did = [r for r in results if r.abstained]
    latencies = np.array([r.seconds for r in results]) * 1000 if results else np.array([0.0])
    points = [r.key_points for r in results if r.key_points is not None]
    return {
        "n": len(results),
        "intent_accuracy": _rate([r.intent == r.item["kind"] for r in results if r.item.get("kind")]),
        "verdict_accuracy": _rate(verdicts),
        "section_hit_rate": _rate(hits),
        "abstention_precision": _rate([bool(r.item.get("expect_abstain")) for r in did]) if did else None,
        "abstention_recall": _rate([r.abstained for r in should]),
        "false_abstentions": sum(1 for r in did if not r.item.get("expect_abstain")),
        "language_match": _rate([r.language == r.item.get("lang", r.language) for r in results]),
        "invalid_citations": sum(r.invalid for r in results),
        "reason_support_rate": _share(sum(r.task_support[0] for r in results), sum(r.task_support[2] for r in results)),
        "reason_named_rate": _share(sum(r.task_support[1] for r in results), sum(r.task_support[2] for r in results)),
        # Content answers: covered / listed key points over all questions that list them, and answers covering all.
        "key_point_coverage": round(sum(c for c, _ in points) / sum(t for _, t in points), 4) if points else None,
        "key_points_all": _rate([c == t for c, t in points]),
        "latency_ms_p50": round(float(np.percentile(latencies, 50)), 1),
        "latency_ms_p95": round(float(np.percentile(latencies, 95)), 1),
    }


def report(results: list[Result], splits: tuple[str, ...] = ("all", "dev", "heldout")) -> dict:
    out = {}
    for split in splits:
        chosen = [r for r in results if split == "all" or r.item.get("split", "dev") == split]
        if not chosen:
            continue
        out[split] = {"overall": metrics(chosen)}
        for lang in ("en", "ja"):
            subset = [r for r in chosen if r.item.get("lang") == lang]
            if subset:
                out[split][lang] = metrics(subset)
    return out


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and value <= 1.0:
        return f"{value * 100:.1f}%"
    return str(value)


def table(summary: dict) -> str:
    cols = [
        "n",
        "intent_accuracy",
        "verdict_accuracy",
        "section_hit_rate",
        "abstention_precision",
        "abstention_recall",
        "false_abstentions",
        "language_match",
        "invalid_citations",
        "reason_support_rate",
        "reason_named_rate",
        "key_point_coverage",
        "key_points_all",
        "latency_ms_p50",
        "latency_ms_p95",
    ]
    lines = ["| reader | split | lang | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 3)]
    for reader, splits in summary.items():
        for split, groups in splits.items():
            for group, m in groups.items():
                lines.append(f"| {reader} | {split} | {group} | " + " | ".join(_fmt(m[c]) for c in cols) + " |")
    return "\n".join(lines)


def main(
    settings: Settings, file: Path | None, split: str, as_json: bool, failures: bool, readers: str = "both"
) -> int:
    path = file or settings.corpus_dir / "dev_set.jsonl"
    try:
        items = load_items(path)
    except (OSError, ValueError) as exc:
        print(f"eval: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    if split != "all":
        items = [i for i in items if i.get("split", "dev") == split]
    service = AnswerService(settings)
    learned = service.engine.reader
    chosen = {"both": ("rules", "learned"), "rules": ("rules",), "learned": ("learned",)}[readers]
    summary, results = {}, []
    for name in chosen:
        service.engine.reader = service.engine.rules if name == "rules" else learned
        results = run(service, items)
        splits = tuple(dict.fromkeys(["all", *(i.get("split", "dev") for i in items)]))
        summary[service.engine.reader.name] = report(results, splits)
    service.engine.reader = learned
    if as_json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        print(table(summary))
    if failures:
        for r in results:
            bad = []
            if r.item.get("kind") and r.intent != r.item["kind"]:
                bad.append(f"intent {r.intent} != {r.item['kind']}")
            if r.verdict_ok is False:
                bad.append(f"verdict {r.verdict} != {r.item.get('expected_verdict')}")
            if r.section_hit is False:
                bad.append(f"sections {r.sections} !~ {r.item.get('expected_sections')}")
            if r.abstained != bool(r.item.get("expect_abstain")):
                bad.append(f"abstained={r.abstained}")
            if r.invalid:
                bad.append(f"{r.invalid} invalid citations")
            if r.key_points and r.key_points[0] < r.key_points[1]:
                missed = [p["en"][:1] for p in r.item["key_points"] if not covers(r.answer, p)]
                bad.append(f"key points {r.key_points[0]}/{r.key_points[1]}, missed {missed}")
            if bad:
                print(
                    f"FAIL {r.item.get('id')}: {'; '.join(bad)} :: {r.item['question'][:90]} {r.debug}", file=sys.stderr
                )
    return 0


def answer_conversations(answerer: AnswerService | Pipeline, turns: list[dict]) -> list:
    """Answers for JSONL turns {"conversation", "question"} in order; each conversation keeps its own history."""
    pipeline = answerer if isinstance(answerer, Pipeline) else Pipeline(answerer)
    histories: dict[str, list[BaseMessage]] = {}
    answers = []
    for turn in turns:
        history = histories.setdefault(str(turn.get("conversation", "")), [])
        answer = pipeline.ask(turn["question"], list(history))
        history += [HumanMessage(turn["question"]), AIMessage(answer.answer)]
        answers.append(answer)
    return answers


def converse(service: AnswerService | Pipeline, path: Path, as_json: bool) -> int:
    """``python -m bot converse [--json] FILE``: one answer per turn; with labels (``kind``, ``expected_verdict``,
    ``follow_up``) in the file, a score line on stderr."""
    try:
        turns = load_items(path)
    except (OSError, ValueError) as exc:
        print(f"converse: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    answers = answer_conversations(service, turns)
    right, labelled, follow_right, offtopic, lang_ok = 0, 0, 0, [], 0
    for turn, answer in zip(turns, answers, strict=True):
        if as_json:
            print(json.dumps({**answer.to_json(), "conversation": turn.get("conversation")}, ensure_ascii=False))
        else:
            print(f"[{turn.get('conversation')}] {answer.answer}\n")
        if "kind" in turn:
            labelled += 1
            got = answered_as(answer.abstained, answer.verdict)
            ok = got == turn["kind"] and (turn["kind"] != "decision" or answer.verdict == turn.get("expected_verdict"))
            right += ok
            follow_right += answer.follow_up == bool(turn.get("follow_up"))
            lang_ok += answer.language == turn.get("lang", answer.language)
            if turn["kind"] == "offtopic":
                offtopic.append(answer.abstained)
    if labelled:
        print(
            f"converse: {right}/{labelled} turns right ({right / labelled:.1%}); follow-up read right "
            f"{follow_right}/{labelled}; off-topic refused {sum(offtopic)}/{len(offtopic)}; "
            f"language match {lang_ok}/{labelled}",
            file=sys.stderr,
        )
    return 0
