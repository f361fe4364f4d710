"""bot.engine without a model: the Figure 2 walk, label counts, flips and conflicts (→ "depends")."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from bot.engine import ConditionState, Decision, DecisionEngine, Reading, label_count
from bot.knowledge import load_flow
from bot.reader import ReaderConfig
from bot.text import normalize_question

FLOW = load_flow(Path(__file__).resolve().parents[1] / "corpus" / "decision_flow.toml")
STEP_ID = {c.step: c.id for c in FLOW.conditions}
SENTIMENT_JA = "感情分析でラベル付きデータが20万件ある。LLMとファインチューニング、どっち？"
CHATBOT_EN = "Our chatbot must hold natural multi-turn conversations with customers: LLM or fine-tuned model?"
TOXICITY_FEW_EN = "Toxicity detection with only ten labelled examples: LLM or fine-tuned model?"


@pytest.fixture(scope="module")
def engine() -> DecisionEngine:
    return DecisionEngine(FLOW)


def states(yes: set[int] = frozenset(), unknown: set[int] = frozenset()) -> dict[str, ConditionState]:
    """Flow states where the listed steps hold, ``unknown`` ones are unsettled, the rest are explicitly no."""
    return {c.id: ConditionState(c, None if c.step in unknown else c.step in yes, "test") for c in FLOW.conditions}


def decide(engine: DecisionEngine, question: str) -> Decision:
    return engine.decide(normalize_question(question).lower())


# ---------------------------------------------------------------------------------------------- walk
@pytest.mark.parametrize(("step", "verdict"), [(1, "llm"), (2, "llm"), (3, "llm"), (4, "fine_tuned"),
                                               (5, "llm"), (6, "llm"), (7, "llm")])
def test_walk_single_step_holds(engine: DecisionEngine, step: int, verdict: str) -> None:
    """When only step k (1..7) holds, the walk stops at k with Figure 2's outcome."""
    outcome, path = engine.walk(states({step}))
    assert outcome == verdict
    assert [s.condition.step for s in path] == list(range(1, step + 1))
    assert path[-1].holds is True


def test_walk_earlier_step_wins(engine: DecisionEngine) -> None:
    """Steps are checked in order: 4 (→ fine-tuned) before 5 (→ LLM), 1 (→ LLM) before 4."""
    assert engine.walk(states({4, 5}))[0] == "fine_tuned"
    assert engine.walk(states({1, 4}))[0] == "llm"


def test_walk_nothing_holds_is_common_nlu(engine: DecisionEngine) -> None:
    """Steps 1-7 no and step 8 (knowledge-intensive) no → fine-tuned, decided at step 8."""
    outcome, path = engine.walk(states())
    assert outcome == "fine_tuned"
    assert path[-1].condition.step == 8 and len(path) == 8


def test_walk_unknown_counts_as_no(engine: DecisionEngine) -> None:
    """Unsettled conditions (None) are walked as 'no'."""
    assert engine.walk(states(unknown=set(range(1, 11))))[0] == engine.walk(states())[0]
    assert engine.walk(states({8}, unknown={9, 10}))[0] == "llm"


def test_walk_knowledge_intensive_context_sufficient(engine: DecisionEngine) -> None:
    """8 Y, 9 Y → fine-tuned (the context holds the knowledge), decided at step 9."""
    outcome, path = engine.walk(states({8, 9}))
    assert outcome == "fine_tuned" and path[-1].condition.step == 9


def test_walk_knowledge_intensive_real_world(engine: DecisionEngine) -> None:
    """8 Y, 9 N, 10 N → LLM (its world knowledge is what the task needs)."""
    outcome, path = engine.walk(states({8}))
    assert outcome == "llm" and path[-1].condition.step == 10


def test_walk_neither(engine: DecisionEngine) -> None:
    """8 Y, 9 N, 10 Y → neither (the figure's question mark)."""
    outcome, path = engine.walk(states({8, 10}))
    assert outcome == "neither"
    assert [s.condition.step for s in path] == list(range(1, 11))


def test_walk_step9_short_circuits_step10(engine: DecisionEngine) -> None:
    """With 9 Y, step 10 is never reached, whatever its answer."""
    outcome, path = engine.walk(states({8, 9, 10}))
    assert outcome == "fine_tuned" and STEP_ID[10] not in {s.condition.id for s in path}


def test_walk_raises_on_a_flow_without_outcome() -> None:
    """A flow whose last step only says 'next' is reported, not looped over."""
    from dataclasses import replace

    broken = replace(FLOW, conditions=tuple(replace(c, yes="next", no="next") for c in FLOW.conditions))
    with pytest.raises(ValueError, match="decision_flow.toml"):
        DecisionEngine(broken).walk(states())


# ---------------------------------------------------------------------------------------------- label_count
@pytest.mark.parametrize(("text", "count"), [
    ("200k labels", 200_000),
    ("20万件のラベル", 200_000),
    ("ten labelled examples", 10),
    ("ラベル付きデータが20件", 20),
    ("we have 1,500 annotated examples", 1_500),
    ("2 million labeled reviews", 2_000_000),
    ("we labelled more, now forty thousand", 40_000),
    ("twenty-five thousand labelled reviews", 25_000),
    ("five hundred labelled examples", 500),
    ("ラベルは三十万件", 300_000),
    ("二千五百件のラベル", 2_500),
    ("ラベル付きは百件", 100),
    ("数十件のラベル", 50),
])
def test_label_count_parses(text: str, count: int) -> None:
    """Counts with k/万/million units, thousands separators, number words near a label word, number words with a
    multiplier ("forty thousand") and Japanese numerals (三十万件)."""
    assert label_count(text) == count


@pytest.mark.parametrize("text", [
    "5M tickets per day",
    "we get 5m tickets per day",
    "1日に500万件の問い合わせが来る",
    "the model has 7b parameters",
    "",
    "十分なラベルがある",
    "ラベル付きデータは一万円で買える",
    "一つのシステムでラベルを付ける",
])
def test_label_count_ignores_numbers_not_about_labels(text: str) -> None:
    """A number without a label word nearby is not a label count."""
    assert label_count(text) is None


@pytest.mark.parametrize(
    "text", ["we labelled data with gpt-4", "fine-tune t5 on our labelled data", "30 per cent labelled by gpt-4"]
)
def test_label_count_ignores_digits_in_model_names(text: str) -> None:
    """Digits glued to a name are no count of labels."""
    assert label_count(text) is None


@pytest.mark.parametrize(("text", "count"), [
    ("sorry my bad, its 25 labeled, not 25k. the rest are unlabeled", 25),
    ("we have 40 labelled rows instead of 40k", 40),
    ("振り分け済みは3万件じゃなくて30件でした", 30),
    ("ラベルは2万件ではなく200件です", 200),
    ("ラベル付きは200件", 200),
])
def test_label_count_skips_the_count_a_correction_takes_back(text: str, count: int) -> None:
    """A correction names the wrong count and the right one: the retracted number does not count, and "200件" is
    not read as the word number "0件"."""
    assert label_count(text) == count


# ---------------------------------------------------------------------------------------------- decide
def test_decide_sentiment_with_many_labels(engine: DecisionEngine) -> None:
    """Sentiment + 200k labels: a decision for a fine-tuned model; few_labels settled 'no' by the count."""
    d = decide(engine, SENTIMENT_JA)
    assert d.is_decision and d.verdict == "fine_tuned" == d.flow_verdict
    assert d.task is not None and d.task.id == "sentiment"
    assert d.label_count == 200_000
    few = d.states["few_labels"]
    assert few.holds is False and few.why == "labels"


def test_flips_include_few_labels(engine: DecisionEngine) -> None:
    """Answering 'few labels' the other way would flip the sentiment verdict to LLM; flips are real flips."""
    d = decide(engine, SENTIMENT_JA)
    flips = {state.condition.id: verdict for state, verdict in d.flips}
    assert flips.get("few_labels") == "llm"
    assert all(v != d.flow_verdict for v in flips.values())
    on_path = {s.condition.id for s in d.path}
    assert set(flips) <= on_path


def test_flips_are_consistent_with_walk(engine: DecisionEngine) -> None:
    """Each flip, applied to the states, walks to the verdict it claims."""
    d = decide(engine, CHATBOT_EN)
    assert d.flips
    for state, verdict in d.flips:
        flipped = dict(d.states)
        flipped[state.condition.id] = ConditionState(state.condition, not bool(state.holds), "flip")
        assert engine.walk(flipped)[0] == verdict


def test_decide_chatbot_is_llm(engine: DecisionEngine) -> None:
    """A multi-turn customer chatbot: LLM, decided at step 1."""
    d = decide(engine, CHATBOT_EN)
    assert d.is_decision and d.verdict == "llm"
    assert d.deciding is not None and d.deciding.condition.step == 1 and d.deciding.holds is True


@pytest.mark.parametrize("question", [
    TOXICITY_FEW_EN,
    "有害コメント検出をしたいが、ラベル付きデータが10件しかない。LLMとファインチューニング、どっち？",
])
def test_catalog_vs_flow_conflict_gives_depends(engine: DecisionEngine, question: str) -> None:
    """Toxicity (catalog: fine-tuned) with ten labels (flow: step 5 → LLM) → 'depends' with a task conflict."""
    d = decide(engine, question)
    assert d.task is not None and d.task.id == "toxicity" and d.task.verdict == "fine_tuned"
    assert d.label_count == 10
    assert d.flow_verdict == "llm"
    assert d.verdict == "depends"
    assert "task" in d.conflicts


def test_content_question_has_no_verdict(engine: DecisionEngine) -> None:
    """A question about the paper's content is not a decision and gets no verdict."""
    d = decide(engine, "What does the survey say about LoRA?")
    assert not d.is_decision and d.verdict is None and d.flips == []


def test_decide_states_cover_every_condition(engine: DecisionEngine) -> None:
    """decide() reports a state for all ten conditions and a path that is a prefix of the flow."""
    for q in (SENTIMENT_JA, CHATBOT_EN, TOXICITY_FEW_EN, "hello"):
        d = decide(engine, q)
        assert set(d.states) == set(STEP_ID.values())
        assert [s.condition.step for s in d.path] == list(range(1, len(d.path) + 1))
        assert d.deciding is d.path[-1]


# ---------------------------------------------------------------------------------------------- named tasks
def _reading(engine: DecisionEngine, task_id: str, score: float) -> Reading:
    task = next(t for t in FLOW.tasks if t.id == task_id)
    base = engine.rules.read("placeholder")
    return replace(base, intent="decision", task=task, task_score=score, task_named=True, reader="learned")


def test_a_named_family_keeps_the_reading_when_a_dropped_task_is_named_too() -> None:
    """"Forget … the summaries, only the ticket routing" names summarisation and the classification family: the
    reading's family stands (before, the specific name won and kept creative generation)."""
    engine = DecisionEngine(FLOW, reader=SimpleNamespace(config=ReaderConfig()))  # with_named_task reads the knob only
    text = "ok forget the chat part and the summaries, only the ticket routing - 8k labelled tickets"
    assert {t.id for t, s in engine.rules.match_tasks(text, None) if s >= 1.01} >= {"summarization",
                                                                                     "text_classification"}
    assert engine.with_named_task(_reading(engine, "text_classification", 0.9), text).task.id == "text_classification"
    assert engine.with_named_task(_reading(engine, "text_classification", 0.9), "named entity recognition, 50k "
                                  "labelled sentences").task.id == "ner"  # a family alone still gives way


def test_a_weak_specific_guess_gives_way_to_a_named_family() -> None:
    """A specific task read below ``named_task_over_p`` gives way to the family the question names; a sure one
    stays."""
    config = ReaderConfig()
    engine = DecisionEngine(FLOW, reader=SimpleNamespace(config=config))  # with_named_task reads the knob only
    text = "three-person startup, we need spam detection on sign-up forms, 40k labelled"
    weak = engine.with_named_task(_reading(engine, "creative_writing", config.named_task_over_p - 0.1), text)
    sure = engine.with_named_task(_reading(engine, "creative_writing", config.named_task_over_p + 0.3), text)
    assert weak.task.id == "text_classification" and sure.task.id == "creative_writing"


def test_a_surely_read_task_settles_its_catalog_conditions_against_a_weak_opposite_guess() -> None:
    """Counterfactual knowledge read at 0.99 with a weak learned "needs scaling" (0.63) walks to the catalog's
    "neither", not to step 2; a sure guess, a weakly read task or a cue-read state keeps the question's reading."""
    config = ReaderConfig()
    engine = DecisionEngine(FLOW, reader=SimpleNamespace(config=config))  # complete reads the knobs only
    scaling = FLOW.condition("needs_scaling")

    def verdict(task_p: float, state: ConditionState) -> str:
        reading = _reading(engine, "counterfactual_knowledge", task_p)
        return engine.decide_reading(replace(reading, states={**reading.states, "needs_scaling": state})).verdict

    weak = ConditionState(scaling, True, "learned", "answers must follow the game's rules", 0.63)
    assert verdict(0.99, weak) == "neither"
    assert verdict(0.99, replace(weak, p=config.catalog_over_condition_p + 0.1)) == "llm"
    assert verdict(config.catalog_over_task_p - 0.2, weak) == "llm"
    assert verdict(0.99, replace(weak, why="cue")) == "llm"
