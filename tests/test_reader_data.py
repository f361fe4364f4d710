"""The labelled reading data (corpus/reader/): schema, evidence, coverage, and that every labelled question's
conditions walk to its labelled verdict."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from bot.engine import ConditionState, DecisionEngine, Reading
from bot.knowledge import KnowledgeError, load_flow
from bot.reader import FOLLOWUPS, Example, load_examples

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
FLOW = load_flow(CORPUS / "decision_flow.toml")
EXAMPLES = load_examples(CORPUS, FLOW)
FRAGMENTS = load_examples(CORPUS, FLOW, FOLLOWUPS)  # chat follow-ups read on their own
ENGINE = DecisionEngine(FLOW)


def walk(example: Example) -> str:
    """Figure 2's walk over the labelled conditions (unstated = no; a label on step 9/10 implies step 8)."""
    states = {}
    for cond in FLOW.conditions:
        value = example.conditions.get(cond.id)
        states[cond.id] = ConditionState(cond, None if value is None else value == "yes", "label")
    for cond in FLOW.conditions:
        if example.conditions.get(cond.id) is not None:
            for implied in cond.implies:
                if states[implied].holds is None:
                    states[implied] = ConditionState(FLOW.condition(implied), True, "implied")
    return ENGINE.walk(states)[0]


def test_enough_questions_in_both_languages() -> None:
    langs = Counter(e.lang for e in EXAMPLES)
    assert len(EXAMPLES) >= 1500, len(EXAMPLES)
    assert abs(langs["en"] - langs["ja"]) <= 0.1 * len(EXAMPLES), langs


def test_every_decision_question_walks_to_its_verdict() -> None:
    wrong = [
        (e.id, e.verdict, walk(e))
        for e in EXAMPLES + FRAGMENTS
        if e.intent == "decision" and e.verdict not in (None, "depends") and walk(e) != e.verdict
    ]
    assert not wrong, wrong[:20]


def gold_reading(example: Example) -> Reading:
    """The reading a perfect reader would give: the labelled conditions, first (most specific) task and
    considerations."""
    tasks = {t.id: t for t in FLOW.tasks}
    considerations = {c.id: c for c in FLOW.considerations}
    states = {cond.id: ConditionState(cond, None if example.conditions.get(cond.id) is None
                                      else example.conditions[cond.id] == "yes", "learned") for cond in FLOW.conditions}
    task = tasks[example.tasks[0]] if example.tasks else None
    return Reading("decision", 1.0, states, example.label_count, task, 1.0, task is not None,
                   [considerations[c] for c in example.considerations], reader="learned")


def test_every_verdict_follows_from_its_labels_by_the_engine_rules() -> None:
    """Depends included: a labelled `depends` comes out of the engine's rules (the task's ``finding_covers``, a
    consideration favouring the other outcome, nothing stated), and a labelled outcome does not turn into
    `depends`. Knowledge-base changes that would contradict labels show up here."""
    wrong = [
        (e.id, e.verdict, decision.verdict, decision.conflicts)
        for e in EXAMPLES + FRAGMENTS
        if e.intent == "decision" and e.verdict is not None
        and (decision := ENGINE.decide_reading(gold_reading(e))).verdict != e.verdict
    ]
    assert not wrong, wrong[:20]


def test_depends_has_a_reason_and_other_intents_have_no_verdict() -> None:
    for e in EXAMPLES:
        if e.intent != "decision":
            assert e.verdict is None and not e.conditions, e.id
        elif e.verdict == "depends":
            assert e.depends_on in ("task_finding", "consideration", "unsettled"), e.id
        else:
            assert e.verdict in ("llm", "fine_tuned", "neither"), e.id


def test_evidence_is_quoted_from_the_question() -> None:
    bad = [(e.id, cid) for e in EXAMPLES for cid, phrase in e.evidence.items() if phrase not in e.question]
    assert not bad, bad[:20]


def test_every_condition_in_both_polarities_and_every_intent() -> None:
    counts = Counter((cid, v) for e in EXAMPLES for cid, v in e.conditions.items())
    for cond in FLOW.conditions:
        assert counts[(cond.id, "yes")] >= 15, (cond.id, "yes", counts[(cond.id, "yes")])
        assert counts[(cond.id, "no")] >= 5, (cond.id, "no", counts[(cond.id, "no")])
    intents = Counter(e.intent for e in EXAMPLES)
    assert intents["content"] >= 100 and intents["offtopic"] >= 100, intents


def test_most_catalog_tasks_are_labelled() -> None:
    labelled = {t for e in EXAMPLES for t in e.tasks}
    missing = [t.id for t in FLOW.tasks if t.id not in labelled]
    assert len(missing) <= len(FLOW.tasks) // 5, missing


def test_paraphrases_of_one_scenario_share_it_across_languages() -> None:
    """Questions written for the reading data (no ``source``) come as paraphrases in both languages; relabelled
    eval-set questions and chat follow-up fragments (with a ``source``) are single questions by nature."""
    written = set()
    for path in sorted((CORPUS / "reader").glob("questions_*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip() and "source" not in (row := json.loads(line)):
                written.add(row["id"])
    by_scenario: dict[str, set[str]] = {}
    for e in EXAMPLES:
        if e.id in written:
            by_scenario.setdefault(e.scenario, set()).add(e.lang)
    bilingual = sum(1 for langs in by_scenario.values() if langs == {"en", "ja"})
    assert bilingual >= len(by_scenario) // 3, (bilingual, len(by_scenario))


def test_reading_data_is_not_taken_from_the_eval_sets() -> None:
    """No evaluation question is a reading-data question. Bare follow-ups of a conversation set ("why?", "and the
    next remark?", 「どうして？」: 24 characters or fewer) are exempt: they state no situation and recur in every
    chat."""
    asked = {e.text.lower() for e in EXAMPLES + FRAGMENTS}
    for path in CORPUS.glob("*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                question = " ".join(row["question"].split()).lower()
                if row.get("follow_up") and len(question) <= 24:
                    continue
                assert question not in asked, (path.name, question)


def test_bad_line_names_file_line_and_field(tmp_path: Path) -> None:
    (tmp_path / "reader").mkdir()
    good = {"id": "x1", "scenario": "s1", "lang": "en", "question": "q", "intent": "decision", "conditions": {}}
    bad = dict(good, id="x2", conditions={"few_labels": "maybe"})
    lines = [json.dumps(good), json.dumps(bad)]
    (tmp_path / "reader" / "questions_t.jsonl").write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(KnowledgeError, match=r"questions_t\.jsonl:2: field 'conditions'"):
        load_examples(tmp_path, FLOW)


def test_follow_up_fragments_cover_both_intents_and_are_not_whole_questions() -> None:
    """The fragment reader learns content vs decision follow-ups and what a fragment states; a fragment is never
    also a standalone question of the reading data."""
    intents = Counter(e.intent for e in FRAGMENTS)
    assert intents["decision"] >= 100 and intents["content"] >= 30, intents
    assert sum(1 for e in FRAGMENTS if e.conditions) >= 100
    whole = {e.text.lower() for e in EXAMPLES}
    assert not [e.id for e in FRAGMENTS if e.text.lower() in whole]
