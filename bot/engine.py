"""The decision engine: reads a question against the survey's Figure 2 (``corpus/decision_flow.toml``).

It finds which flow conditions the question settles (cue phrases, label counts, the matched catalog task),
walks the flow to a verdict, notes where the catalog, the flow or a consideration disagree (→ ``depends``),
and lists which answers would flip the verdict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache, lru_cache

import numpy as np

from bot.knowledge import Condition, Consideration, DecisionFlow, Task
from bot.text import tokenize_cached

# A count: not part of a name like "gpt-4", "t5", "sst-2", and not a percentage.
_NUMBER = re.compile(
    r"(?<![a-z0-9.\-])(?P<num>\d+(?:[.,]\d+)*)(?![\d])\s*(?P<unit>k\b|m\b|thousand|million|万|千|百)?"
    r"(?!\s*(?:%|per ?cent|パーセント))",
    re.IGNORECASE,
)
_WORD_NUMBERS = {
    "zero": 0,
    "no": 0,
    "practically no": 0,
    "ゼロ": 0,
    "0件": 0,
    "a handful of": 5,
    "handful of": 5,
    "a few dozen": 36,
    "few dozen": 36,
    "a dozen": 12,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "twenty": 20,
    "fifty": 50,
    "a hundred": 100,
    "hundreds of": 300,
    "thousands of": 3000,
    "millions of": 3_000_000,
    "数件": 5,
    "十数件": 15,
    "数十件": 50,
    "数百件": 300,
    "数千件": 3000,
    "数万件": 30_000,
    "数百万": 3_000_000,
}
_KANA_OR_HAN = re.compile(r"[\u3040-\u30ff\u3400-\u9fff]")
_COUNTERS = set("件文例個行枚本組対")
_UNITS = {"k": 1_000, "thousand": 1_000, "m": 1_000_000, "million": 1_000_000, "万": 10_000, "千": 1_000, "百": 100}
# Words that make a nearby count a count of labelled training examples.
_LABEL_WORDS = (
    "label",
    "annotat",
    "training example",
    "training data",
    "examples",
    "samples",
    "labelled",
    "labeled",
    "scored example",
    "parallel",
    "ラベル",
    "正解",
    "アノテーション",
    "教師データ",
    "学習データ",
    "学習用",
    "実績データ",
    "訓練データ",
    "対訳",
    "注釈",
)
_PER_WORDS = ("per ", "each", "各", "ずつ", "ごと")
# Phrases that ask for a choice between model types (a content cue does not override these).
_DECISION_CUES = (
    "should i",
    "should we",
    "which kind of model",
    "which model",
    "llm or",
    "or an llm",
    "or a llm",
    "or fine-tun",
    "or a fine-tuned",
    "or a small",
    " vs",
    "versus",
    "worth",
    "is an llm",
    "do we need",
    "do i need",
    "is a small model enough",
    "どっち",
    "どちら",
    "べき",
    "向いて",
    "向く",
    "選ぶ",
    "足り",
    "大丈夫",
    "アリ",
    "意味って",
    "勝ち",
    "おすすめ",
    "いいでしょう",
    "耐えられ",
    "いいんでしょうか",
    "でいいの",
    "suffice",
    "necessary or",
    "いい?",
)
_CONTENT_CUES = (
    "what does the survey",
    "what does the paper",
    "according to the survey",
    "the survey say",
    "the paper say",
    "explain",
    "summarize",
    "summarise",
    "define",
    "definition",
    "what are the",
    "what is the",
    "what role",
    "how does the paper",
    "how does the survey",
    "remark ",
    "does the survey",
    "サーベイは",
    "サーベイでは",
    "論文では",
    "論文の",
    "について",
    "とは何",
    "とは?",
    "って何",
    "教えて",
    "違いは",
    "述べ",
    "論じ",
    "指摘",
    "書かれ",
    "挙げられ",
    "何と言",
    "どう書",
    "内容",
)


@dataclass
class ConditionState:
    condition: Condition
    holds: bool | None
    why: str  # "cue", "labels", "task", "multi" or "" (unknown)
    evidence: str = ""  # the cue phrase or number that settled it


@dataclass
class Decision:
    is_decision: bool
    verdict: str | None
    flow_verdict: str | None
    task: Task | None
    task_score: float
    states: dict[str, ConditionState]
    path: list[ConditionState]
    deciding: ConditionState | None
    conflicts: list[str] = field(default_factory=list)  # human-readable keys: "task", "consideration:<id>", ...
    considerations: list[Consideration] = field(default_factory=list)
    flips: list[tuple[ConditionState, str]] = field(default_factory=list)  # (condition, verdict if flipped)
    label_count: int | None = None
    cue_hit: bool = False  # the question itself settled a flow condition or raised a consideration


_SUFFIXES = (
    "izations",
    "ization",
    "isation",
    "ations",
    "ation",
    "izing",
    "ising",
    "izes",
    "ises",
    "ized",
    "ised",
    "ize",
    "ise",
    "ings",
    "ing",
    "ions",
    "ion",
    "ers",
    "er",
    "ed",
    "es",
    "s",
    "e",
)
_ASCII_WORD = re.compile(r"[a-z0-9]+")


def _stem(word: str) -> str:
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            word = word[: -len(suffix)]
            break
    return word[:-1] if word.endswith("i") and len(word) > 4 else word  # "summari(es)" ~ "summar(ization)"


@lru_cache(maxsize=16384)
def stem_text(text: str) -> str:
    """Space-separated stems ("summarize meeting notes" -> "summar meet note"), for inflection-proof matching."""
    return " " + " ".join(_stem(w) for w in _ASCII_WORD.findall(text)) + " "


@cache
def _phrase_pattern(phrase: str) -> tuple[re.Pattern[str], str | None]:
    """Compiled once per phrase (the catalog has ~1,000; recompiling them per question dominated latency)."""
    pattern = re.compile(rf"(?<![a-z0-9]){re.escape(phrase)}(?:e?s)?(?![a-z0-9])")
    multi_word = re.search(r"[\s-]", phrase.strip()) is not None
    return pattern, stem_text(phrase) if multi_word else None


def _contains(text: str, phrase: str, stemmed: str | None = None) -> bool:
    """ASCII phrases match whole words: one word also in its plural, several words inflection-insensitively
    ("summarize meeting notes" ~ "summarization of meeting notes"); other phrases (Japanese) match as substrings."""
    if not phrase.isascii():
        return phrase in text
    pattern, phrase_stems = _phrase_pattern(phrase)
    if pattern.search(text):
        return True
    if phrase_stems is None:
        return False  # single words: stems are too loose ("reasons" is not "reasoning")
    stemmed = stemmed if stemmed is not None else stem_text(text)
    return phrase_stems in stemmed

def _longest(text: str, phrases: tuple[str, ...], stemmed: str | None = None) -> str | None:
    stemmed = stemmed if stemmed is not None else stem_text(text)
    found = [p for p in phrases if p and _contains(text, p, stemmed)]
    return max(found, key=len) if found else None


def label_count(text: str) -> int | None:
    """The number of labelled examples a question mentions (e.g. '200k labels', '20万件のラベル', 'ten labelled')."""
    counts = []
    for word, value in _WORD_NUMBERS.items():
        for m in re.finditer(rf"(?<![a-z]){re.escape(word)}(?![a-z])", text):
            counts.append((m.start(), m.end(), value))
    for m in _NUMBER.finditer(text):
        following = text[m.end() : m.end() + 1]
        if following and _KANA_OR_HAN.match(following) and following not in _COUNTERS:
            continue  # "1クエリ", "3ヶ月": a number, but not a count of examples
        raw = m.group("num").replace(",", "")
        try:
            value = float(raw)
        except ValueError:
            continue
        unit = (m.group("unit") or "").lower()
        value *= _UNITS.get(unit, 1)
        counts.append((m.start(), m.end(), int(value)))
    best = None
    for start, end, value in counts:
        window = text[max(0, start - 30) : end + 30]
        if any(w in window for w in _LABEL_WORDS):
            per = any(w in text[max(0, start - 12) : end + 12] for w in _PER_WORDS)
            value = value * 3 if per else value  # "15 per team": a few classes' worth; still small
            best = value if best is None else max(best, value)
    return best


# A catalog task is taken from embeddings alone only above this similarity (tuned on the dev set: below it the
# nearest task was as often wrong as right, and a wrong task invents conflicts).
SEMANTIC_TASK_MIN = 0.90


class DecisionEngine:
    """Stateless apart from the flow and an embedding matrix of the task catalog (for semantic task matching)."""

    def __init__(self, flow: DecisionFlow, embed_queries=None, embed_documents=None) -> None:
        self.flow = flow
        self._embed_queries = embed_queries
        self.task_matrix: np.ndarray | None = None
        for task in flow.tasks:  # warm the alias-term cache so the first question is not slow
            for name in task.all_names:
                _terms(name)
        if embed_documents is not None and flow.tasks:
            texts = [
                f"{' / '.join(t.names['en'][:4])} / {' / '.join(t.names['ja'][:4])}. {t.finding['en']}"
                for t in flow.tasks
            ]
            self.task_matrix = embed_documents(texts)

    # ------------------------------------------------------------------ reading the question
    def match_tasks(self, text: str, vector: np.ndarray | None) -> list[tuple[Task, float]]:
        """Catalog tasks named in the question (alias match, scored by alias length), else the semantic best."""
        lexical = []
        stemmed = stem_text(text)
        terms = _terms(text)
        for task in self.flow.tasks:
            alias = _longest(text, task.all_names, stemmed)
            if alias:
                lexical.append((task, 1.0 + len(alias) / 100))
                continue
            partial = max((_coverage(_terms(name), terms) for name in task.all_names), default=0.0)
            if partial:
                lexical.append((task, 1.0 + min(partial, 18.0) / 2000))  # always ranks below a whole-alias match
        if lexical:
            return sorted(lexical, key=lambda x: -x[1])
        if vector is not None and self.task_matrix is not None:
            sims = self.task_matrix @ vector
            idx = int(np.argmax(sims))
            return [(self.flow.tasks[idx], float(sims[idx]))]
        return []

    def read_conditions(
        self, text: str, task: Task | None, n_tasks: int
    ) -> tuple[dict[str, ConditionState], int | None]:
        states: dict[str, ConditionState] = {}
        count = label_count(text)
        stemmed = stem_text(text)
        for cond in self.flow.conditions:
            yes, no = _longest(text, cond.cues_yes, stemmed), _longest(text, cond.cues_no, stemmed)
            if yes and (not no or len(yes) > len(no)):
                state = ConditionState(cond, True, "cue", yes)
            elif no:
                state = ConditionState(cond, False, "cue", no)
            else:
                state = ConditionState(cond, None, "")
            if cond.numeric and count is not None:
                if count <= int(cond.numeric.get("yes_if_at_most", -1)):
                    state = ConditionState(cond, True, "labels", str(count))
                elif count >= int(cond.numeric.get("no_if_at_least", 10**12)):
                    state = ConditionState(cond, False, "labels", str(count))
            if state.holds is None and task is not None and cond.id in task.conditions:
                state = ConditionState(cond, task.conditions[cond.id], "task", task.id)
            states[cond.id] = state
        for cond in self.flow.conditions:  # answering step 9/10 presupposes step 8
            if states[cond.id].holds is not None and states[cond.id].why in ("cue", "task"):
                for implied in cond.implies:
                    if states[implied].holds is None:
                        states[implied] = ConditionState(self.flow.condition(implied), True, "implied", cond.id)
        multi = next((c for c in self.flow.conditions if c.yes != "next" and c.id == "multi_task"), None)
        if multi is not None and n_tasks >= 3 and states[multi.id].holds is not True:
            states[multi.id] = ConditionState(multi, True, "multi", str(n_tasks))
        return states, count

    def is_decision_question(self, text: str, task_hit: bool, cue_hit: bool) -> bool:
        """A request for a verdict: asks to choose, or describes a task/situation without asking what the
        survey says. A bare choice with nothing to go on is still a decision question (answered 'depends')."""
        plain = re.sub(r"[,、]", "", text)
        decision_cue = any(c in plain for c in _DECISION_CUES)
        if decision_cue and not asks_about_survey(text):
            return True
        if any(c in text for c in _CONTENT_CUES):
            return False
        return task_hit or cue_hit

    # ------------------------------------------------------------------ the walk
    def walk(self, states: dict[str, ConditionState]) -> tuple[str, list[ConditionState]]:
        path: list[ConditionState] = []
        for cond in self.flow.conditions:
            state = states[cond.id]
            path.append(state)
            target = cond.yes if state.holds else cond.no
            if target != "next":
                return target, path
        raise ValueError("decision flow ends without an outcome; check corpus/decision_flow.toml")

    def decide(self, text: str, vector: np.ndarray | None = None, follow_up: str | None = None) -> Decision:
        """``text`` is the normalised, lower-cased question. When it is an earlier question joined with a
        ``follow_up``, what the follow-up itself states (cues, label counts) overrides the earlier facts."""
        text = re.sub(r"\s*(?:→|->|⇒|=>)\s*", "-", text)
        tasks = self.match_tasks(text, vector)
        lexical = [t for t, s in tasks if s >= 1.0]
        semantic_ok = bool(tasks) and tasks[0][1] >= SEMANTIC_TASK_MIN
        task = tasks[0][0] if tasks and (lexical or semantic_ok) else None
        score = tasks[0][1] if tasks else 0.0
        named = [t for t, s in tasks if s >= 1.01]  # whole aliases only: partial matches don't count as named tasks
        states, count = self.read_conditions(text, task, len(named))
        if follow_up:
            own_states, own_count = self.read_conditions(follow_up, task, 0)
            states.update({cid: st for cid, st in own_states.items() if st.why in ("cue", "labels")})
            count = own_count if own_count is not None else count
        cue_hit = any(s.why in ("cue", "labels") for s in states.values())
        stemmed = stem_text(text)
        considerations = [c for c in self.flow.considerations if _longest(text, c.cues, stemmed)]
        is_decision = self.is_decision_question(text, task is not None, cue_hit or bool(considerations))
        flow_verdict, path = self.walk(states)
        decision = Decision(
            is_decision=is_decision,
            verdict=None,
            flow_verdict=flow_verdict,
            task=task,
            task_score=score,
            states=states,
            path=path,
            deciding=path[-1],
            considerations=considerations,
            label_count=count,
            cue_hit=cue_hit or bool(considerations),
        )
        if not is_decision:
            return decision
        verdict = flow_verdict
        multi_task = states.get("multi_task")
        if (
            task is not None
            and not task.generic
            and task.verdict != flow_verdict
            and not (multi_task and multi_task.holds)
            # The user re-describing a property the task type itself settles (e.g. closed-book QA whose facts
            # contradict the real world) refines the task; a situational condition (few labels, OOD inputs)
            # pulling against the task's finding is a real conflict.
            and path[-1].condition.id not in task.conditions
        ):
            decision.conflicts.append("task")
        for cons in considerations:
            if cons.favours in self.flow.outcomes and cons.favours != flow_verdict:
                decision.conflicts.append(f"consideration:{cons.id}")
        if decision.conflicts:
            verdict = "depends"
        elif task is None and not cue_hit and not considerations:
            verdict = "depends"  # nothing in the question settles the flow: say what we would need to know
            decision.conflicts.append("unknown")
        decision.verdict = verdict
        decision.flips = self.flips(states, path, flow_verdict)
        return decision

    def flips(
        self, states: dict[str, ConditionState], path: list[ConditionState], verdict: str
    ) -> list[tuple[ConditionState, str]]:
        """For each condition on the path, the verdict if its answer were the other one; the user's own facts
        first (e.g. the label count), then what the question left open, then what the task type implies."""
        out = []
        for state in path:
            flipped = dict(states)
            flipped[state.condition.id] = ConditionState(state.condition, not bool(state.holds), "flip")
            new_verdict, _ = self.walk(flipped)
            if new_verdict != verdict:
                out.append((state, new_verdict))
        rank = {"labels": 0, "cue": 0, "multi": 0, "": 1}
        return sorted(out, key=lambda item: rank.get(item[0].why, 2))


def _terms(text: str) -> frozenset[str]:
    return frozenset(_stem(t) for t in tokenize_cached(text))


def _coverage(alias_terms: frozenset[str], question_terms: frozenset[str]) -> float:
    """Characters of a multi-word alias found as terms in the question, when at least two terms and two thirds of
    them are there, for aliases of three or more terms ("toxic-comment moderation" ~ "toxic comment detection");
    else 0."""
    if len(alias_terms) < 3:  # two-word aliases must appear as written: scattered pairs match too much
        return 0.0
    found = alias_terms & question_terms
    if len(found) < 2 or len(found) * 3 < len(alias_terms) * 2:
        return 0.0
    return float(sum(len(t) for t in found))


def asks_about_survey(text: str) -> bool:
    return any(w in text for w in ("survey", "paper", "the authors", "サーベイ", "論文", "remark", "述べられ"))
