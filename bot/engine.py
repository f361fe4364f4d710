"""The decision engine: reads a question against the survey's Figure 2 (``corpus/decision_flow.toml``).

It finds which flow conditions the question settles (cue phrases, label counts, the matched catalog task),
walks the flow to a verdict, notes where the catalog, the flow or a consideration disagree (→ ``depends``),
and lists which answers would flip the verdict.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cache, lru_cache

import numpy as np

from bot.knowledge import Condition, Consideration, DecisionFlow, Task
from bot.lexicon import Lexicon, load_lexicon
from bot.text import tokenize_cached
from ingest.text import ASCII_WORD, CJK, stem


def _number_pattern(units: tuple[str, ...]) -> re.Pattern[str]:
    """A count: not part of a name like "gpt-4", "t5", "sst-2", and not a percentage; optional unit after it."""
    alternatives = "|".join(re.escape(u) + (r"\b" if u.isascii() else "") for u in sorted(units, key=len, reverse=True))
    return re.compile(
        rf"(?<![a-z0-9.\-])(?P<num>\d+(?:[.,]\d+)*)(?![\d])\s*(?P<unit>{alternatives})?"
        r"(?!\s*(?:%|per ?cent|パーセント))",
        re.IGNORECASE,
    )


_number_pattern = cache(_number_pattern)


@dataclass
class ConditionState:
    condition: Condition
    holds: bool | None
    why: str  # "cue", "labels", "learned", "task", "implied", "multi" or "" (unknown)
    evidence: str = ""  # the phrase or sentence of the question that settled it
    p: float | None = None  # the reader's probability for this value, when the reader gives one

    @property
    def value(self) -> str:
        """The reading as a word: yes, no or unstated (as in the reading data and the JSON contract)."""
        return "unstated" if self.holds is None else ("yes" if self.holds else "no")

    @property
    def stated(self) -> bool:
        """Settled by the question's own words (not by the task type or an implication)."""
        return self.why in ("cue", "labels", "learned", "multi")


@dataclass
class Reading:
    """What a question states, as read by a reader (the rule reader or the learned one): the walk's input."""

    intent: str  # "decision" | "content" | "offtopic"
    intent_p: float
    states: dict[str, ConditionState]
    label_count: int | None
    task: Task | None
    task_score: float  # rule reader: >= 1.0 for an alias match, else a similarity; learned: a probability
    task_named: bool  # the question names the task itself (alias or confident prediction), not a weak guess
    considerations: list[Consideration]
    reader: str = "rules"
    task_turn: int = 0  # which turn the task was read from: 0 the question (or a chat's first), i the i-th follow-up

    @property
    def cue_hit(self) -> bool:
        """The question itself settled a flow condition or raised a consideration."""
        return any(s.stated and s.holds is not None for s in self.states.values()) or bool(self.considerations)


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
    conflicts: list[str] = field(default_factory=list)  # "task", "consideration:<id>", "unknown", "unsure"
    considerations: list[Consideration] = field(default_factory=list)
    flips: list[tuple[ConditionState, str]] = field(default_factory=list)  # (condition, verdict if flipped)
    label_count: int | None = None
    cue_hit: bool = False  # the question itself settled a flow condition or raised a consideration
    reading: Reading | None = None
    caveats: list[str] = field(default_factory=list)  # "task": the task's finding, measured in another regime


@lru_cache(maxsize=16384)
def stem_text(text: str) -> str:
    """Space-separated stems ("summarize meeting notes" -> "summar meet note"), for inflection-proof matching."""
    return " " + " ".join(stem(w) for w in ASCII_WORD.findall(text)) + " "


@cache
def _phrase_stems(phrase: str) -> str | None:
    """A multi-word phrase's stems (matched inflection-insensitively), None for a single word."""
    return stem_text(phrase) if re.search(r"[\s-]", phrase.strip()) is not None else None


@cache
def _phrase_pattern(phrase: str) -> tuple[re.Pattern[str], str | None]:
    """Compiled once per phrase (the catalog has ~1,000; recompiling them per question dominated latency)."""
    pattern = re.compile(rf"(?<![a-z0-9]){re.escape(phrase)}(?:e?s)?(?![a-z0-9])")
    return pattern, _phrase_stems(phrase)


def compile_phrases(flow: DecisionFlow) -> int:
    """Compile every cue and alias pattern of ``flow`` now, one by one and grouped as ``any_phrase`` searches them
    (about 900, some 200 ms). A served process does this before its first question: compiled on first use, they
    were a twentieth of each answer's time over its first few dozen questions. Returns how many are compiled."""
    groups = [g for c in flow.conditions for g in (c.cues_yes, c.cues_no)]
    groups += [c.cues for c in flow.considerations] + [t.all_names for t in flow.tasks]
    groups.append(tuple(n for t in flow.tasks for n in t.all_names))  # the readers' "names any task" group
    for group in groups:
        _group_patterns(tuple(group))  # the grouped patterns ``any_phrase`` searches with
        for phrase in group:
            if phrase.isascii():
                _phrase_pattern(phrase)
    for task in flow.tasks:
        task.named_in("")  # compiles the task's names pattern (the evidence step asks which chunks name it)
    return _phrase_pattern.cache_info().currsize + _group_patterns.cache_info().currsize + len(flow.tasks)


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


@cache
def _group_patterns(phrases: tuple[str, ...]) -> tuple[re.Pattern[str] | None, ...]:
    """One regex per kind of phrase in a group: ASCII words (plural-tolerant), multi-word stems, other scripts."""
    ascii_ = sorted({p for p in phrases if p and p.isascii()}, key=len, reverse=True)
    stems = sorted({st for p in ascii_ if (st := _phrase_stems(p))}, key=len, reverse=True)
    other = sorted({p for p in phrases if p and not p.isascii()}, key=len, reverse=True)
    alt = "|".join
    return (
        re.compile(rf"(?<![a-z0-9])(?:{alt(map(re.escape, ascii_))})(?:e?s)?(?![a-z0-9])") if ascii_ else None,
        re.compile(alt(map(re.escape, stems))) if stems else None,
        re.compile(alt(map(re.escape, other))) if other else None,
    )


def any_phrase(text: str, phrases: tuple[str, ...], stemmed: str | None = None) -> bool:
    """Whether ``_longest`` would find something, with one regex per kind of phrase instead of one per phrase."""
    words, stems, other = _group_patterns(phrases)
    if other is not None and other.search(text):
        return True
    if words is not None and words.search(text):
        return True
    return stems is not None and stems.search(stemmed if stemmed is not None else stem_text(text)) is not None


def _longest(text: str, phrases: tuple[str, ...], stemmed: str | None = None) -> str | None:
    stemmed = stemmed if stemmed is not None else stem_text(text)
    found = [p for p in phrases if p and _contains(text, p, stemmed)]
    return max(found, key=len) if found else None


def label_count(text: str, lexicon: Lexicon | None = None) -> int | None:
    """The number of labelled examples a question mentions (e.g. '200k labels', '20万件のラベル', 'ten labelled')."""
    lex = lexicon or load_lexicon()
    counts = [_composed(text, m.start(), m.end(), value, lex)
              for pattern, value in lex.word_number_patterns() for m in pattern.finditer(text)]
    kanji = lex.kanji_pattern()
    for m in kanji.finditer(text) if kanji else ():
        following = text[m.end() : m.end() + 1]
        if following and CJK.match(following) and following not in lex.counters:
            continue  # 「一般」, 「十分」, 「千葉」, 「一万円」: not a count of examples
        counts.append((m.start(), m.end(), lex.kanji_number(m.group())))
    for m in _number_pattern(tuple(lex.units)).finditer(text):
        following = text[m.end() : m.end() + 1]
        if following and CJK.match(following) and following not in lex.counters:
            continue  # "1クエリ", "3ヶ月": a number, but not a count of examples
        raw = m.group("num").replace(",", "")
        try:
            value = float(raw)
        except ValueError:
            continue
        unit = (m.group("unit") or "").lower()
        value *= lex.units.get(unit, 1)
        counts.append((m.start(), m.end(), int(value)))
    best = None
    for start, end, value in counts:
        if _retracted(text, start, end, lex):
            continue
        window = text[max(0, start - 30) : end + 30]
        if any(w in window for w in lex.label_words):
            per = any(w in text[max(0, start - 12) : end + 12] for w in lex.per_words)
            value = value * 3 if per else value  # "15 per team": a few classes' worth; still small
            best = value if best is None else max(best, value)
    return best


def _composed(text: str, start: int, end: int, value: int, lex: Lexicon) -> tuple[int, int, int]:
    """A number word with what follows it: a ones word after a tens word ("twenty-five") and a multiplier
    ("forty thousand", "five hundred")."""
    if 20 <= value < 100 and value % 10 == 0:
        ones = re.match(r"[\s-]([a-z]+)\b", text[end:])
        if ones and 0 < lex.word_numbers.get(ones.group(1), 0) < 10:
            value, end = value + lex.word_numbers[ones.group(1)], end + ones.end()
    while unit := re.match(r"\s*-?\s*([a-z]+)\b", text[end:]):
        factor = lex.units.get(unit.group(1))
        if factor is None or factor < 100:
            break
        value, end = value * factor, end + unit.end()
    return start, end, value


def _retracted(text: str, start: int, end: int, lex: Lexicon) -> bool:
    """Whether the number at ``text[start:end]`` is the count a correction takes back ("not 25k",
    「3万件じゃなくて」)."""
    before = text[:start].rstrip().lower()
    for word in lex.retracting_before:
        if before.endswith(word) and not before[: -len(word)][-1:].isalpha():
            return True
    after = text[end:].lstrip(" " + lex.counters).lower()
    return any(after.startswith(w) for w in lex.retracting_after)


# A catalog task is taken from embeddings alone only above this similarity (tuned on the dev set: below it the
# nearest task was as often wrong as right, and a wrong task invents conflicts).
class RuleReader:
    """The hand-written reading: cue phrases and aliases from ``decision_flow.toml``, intent cues from the lexicon.
    Kept as the fallback and for side-by-side evaluation against the learned reader."""

    name = "rules"

    def __init__(
        self, flow: DecisionFlow, lexicon: Lexicon | None = None, embed_documents=None, semantic_task_min: float = 0.90
    ) -> None:
        """``semantic_task_min``: the cosine bar for naming a task by meaning alone (Settings.semantic_task_min)."""
        self.flow = flow
        self.semantic_task_min = semantic_task_min
        self.lexicon = lexicon or load_lexicon()
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

    def match_tasks(self, text: str, vector: np.ndarray | None) -> list[tuple[Task, float]]:
        """Catalog tasks named in the question (alias match, scored by alias length), else the semantic best."""
        lexical = []
        stemmed = stem_text(text)
        terms = _terms(text)
        for task in self.flow.tasks:
            alias = _longest(text, task.all_names, stemmed) if any_phrase(text, task.all_names, stemmed) else None
            if alias:
                lexical.append((task, 1.0 + len(alias) / 100))
                continue
            partial = max((_coverage(names, terms) for names in _alias_terms(task.all_names)), default=0.0)
            if partial:
                lexical.append((task, 1.0 + min(partial, 18.0) / 2000))  # always ranks below a whole-alias match
        if lexical:
            return sorted(lexical, key=lambda x: -x[1])
        if vector is not None and self.task_matrix is not None:
            # einsum, not BLAS: OpenBLAS threads spinning after a product slowed the next query embedding 3-4x
            sims = np.einsum("ij,j->i", self.task_matrix, np.asarray(vector, dtype=self.task_matrix.dtype))
            idx = int(np.argmax(sims))
            return [(self.flow.tasks[idx], float(sims[idx]))]
        return []

    def cue_states(self, text: str, count: int | None) -> dict[str, ConditionState]:
        """Each condition as its cue phrases and the label count settle it (None where nothing does)."""
        states: dict[str, ConditionState] = {}
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
                state = numeric_state(cond, count) or state
            states[cond.id] = state
        return states

    def considerations(self, text: str) -> list[Consideration]:
        stemmed = stem_text(text)
        return [c for c in self.flow.considerations if _longest(text, c.cues, stemmed)]

    def intent(self, text: str, task_hit: bool, cue_hit: bool) -> str:
        """A request for a verdict: asks to choose, or describes a task/situation without asking what the
        survey says. A bare choice with nothing to go on is still a decision question (answered 'depends')."""
        if asks_to_choose(text, self.lexicon) and not asks_about_survey(text, self.lexicon):
            return "decision"
        if any(c in text for c in self.lexicon.content_cues):
            return "content"
        return "decision" if task_hit or cue_hit else "content"

    def read(
        self, text: str, vector: np.ndarray | None = None, follow_ups: Sequence[str] = (), follow_up_vectors=()
    ) -> Reading:
        """``text`` is the normalised, lower-cased question. When it is earlier turns joined with ``follow_ups``
        (in turn order), what each follow-up itself states (cues, label counts) overrides what came before.
        ``vector``: the question's embedding (a ``QueryEncoding``'s vector is taken)."""
        tasks = self.match_tasks(text, getattr(vector, "vector", vector))
        lexical = [t for t, s in tasks if s >= 1.0]
        semantic_ok = bool(tasks) and tasks[0][1] >= self.semantic_task_min
        task = tasks[0][0] if tasks and (lexical or semantic_ok) else None
        score = tasks[0][1] if tasks else 0.0
        named = [t for t, s in tasks if s >= 1.01]  # whole aliases only: partial matches don't count as named tasks
        count = label_count(text, self.lexicon)
        states = self.cue_states(text, count)
        for follow_up in follow_ups:
            own_count = label_count(follow_up, self.lexicon)
            own = self.cue_states(follow_up, own_count)
            states.update({cid: st for cid, st in own.items() if st.why in ("cue", "labels")})
            count = own_count if own_count is not None else count
        multi = states.get("multi_task")
        if multi is not None and len(named) >= 3 and multi.holds is not True:
            states["multi_task"] = ConditionState(multi.condition, True, "multi", str(len(named)))
        considerations = self.considerations(text)
        cue_hit = any(s.why in ("cue", "labels", "multi") for s in states.values()) or bool(considerations)
        return Reading(
            intent=self.intent(text, task is not None, cue_hit),
            intent_p=1.0,
            states=states,
            label_count=count,
            task=task,
            task_score=score,
            task_named=task is not None and score >= 1.0,
            considerations=considerations,
            reader=self.name,
        )


def numeric_state(cond: Condition, count: int) -> ConditionState | None:
    """The label-count rule of thumb (thresholds in ``decision_flow.toml``), or None between the thresholds."""
    if count <= int(cond.numeric.get("yes_if_at_most", -1)):
        return ConditionState(cond, True, "labels", str(count), 1.0)
    if count >= int(cond.numeric.get("no_if_at_least", 10**12)):
        return ConditionState(cond, False, "labels", str(count), 1.0)
    return None


class DecisionEngine:
    """Walks Figure 2 over a question's reading; the reader (rules by default, or the learned one) is pluggable."""

    def __init__(
        self, flow: DecisionFlow, embed_queries=None, embed_documents=None, reader=None, semantic_task_min: float = 0.90
    ) -> None:
        self.flow = flow
        self.rules = RuleReader(flow, embed_documents=embed_documents, semantic_task_min=semantic_task_min)
        self.reader = reader or self.rules

    def decide(
        self, text: str, vector: np.ndarray | None = None, follow_ups: Sequence[str] = (), follow_up_vectors=()
    ) -> Decision:
        text = re.sub(r"\s*(?:→|->|⇒|=>)\s*", "-", text)
        reading = self.reader.read(text, vector, follow_ups, follow_up_vectors)
        if reading.reader != self.rules.name:
            turns = [text, *follow_ups]
            reading = self.with_named_task(reading, turns[min(reading.task_turn, len(turns) - 1)])
        return self.decide_reading(reading)

    def with_named_task(self, reading: Reading, text: str) -> Reading:
        """A specific catalog task the question names by a whole alias (data: the catalog's names) is taken when
        the learned reader found no task or only a generic family ("text classification" for "named entity
        recognition with 50k labelled sentences"): a name the user wrote beats a statistical guess. ``text``: the
        turn the task was read from (a follow-up that switched the task, else the question). A weak specific guess
        (below the reader's ``named_task_over_p``)
        gives way to any task the user named, a family included."""
        least = getattr(getattr(self.reader, "config", None), "named_task_over_p", 0.0)
        weak = reading.task is not None and not reading.task.generic and reading.task_score < least
        if reading.task is not None and not reading.task.generic and not weak:
            return reading
        found = [t for t, score in self.rules.match_tasks(text, None) if score >= 1.01]
        if reading.task is not None and reading.task in found:  # the user named the family too ("only the ticket
            return reading  # routing, forget the summaries"): the reading's choice between names stands
        named = [t for t in found if not t.generic] or (found if weak else [])
        if not named:
            return reading
        return replace(reading, task=named[0], task_score=1.0, task_named=True)

    def complete(self, reading: Reading) -> dict[str, ConditionState]:
        """The reading's states, with what the task type settles filling what the question left open, and the
        conditions that answering step 9/10 presupposes (step 8)."""
        states = dict(reading.states)
        task = reading.task
        if task is not None:
            config = getattr(self.reader, "config", None)
            sure_task = (
                config is not None and not task.generic and reading.task_score >= config.catalog_over_task_p
            )
            for cid, holds in task.conditions.items():
                state = states[cid]
                weak = (
                    sure_task and state.why == "learned" and state.holds is (not holds)
                    and (state.p if state.p is not None else 1.0) < config.catalog_over_condition_p
                )
                if state.holds is None or weak:  # a surely read task's catalog entry beats a weak opposite guess
                    states[cid] = ConditionState(self.flow.condition(cid), holds, "task", task.id)
        for cond in self.flow.conditions:
            if states[cond.id].holds is not None and states[cond.id].why in ("cue", "task", "learned"):
                for implied in cond.implies:
                    if states[implied].holds is None:
                        states[implied] = ConditionState(self.flow.condition(implied), True, "implied", cond.id)
        return states

    def walk(self, states: dict[str, ConditionState]) -> tuple[str, list[ConditionState]]:
        path: list[ConditionState] = []
        for cond in self.flow.conditions:
            state = states[cond.id]
            path.append(state)
            target = cond.yes if state.holds else cond.no
            if target != "next":
                return target, path
        raise ValueError("decision flow ends without an outcome; check corpus/decision_flow.toml")

    def decide_reading(self, reading: Reading) -> Decision:
        states = self.complete(reading)
        task = reading.task
        flow_verdict, path = self.walk(states)
        decision = Decision(
            is_decision=reading.intent == "decision",
            verdict=None,
            flow_verdict=flow_verdict,
            task=task,
            task_score=reading.task_score,
            states=states,
            path=path,
            deciding=path[-1],
            considerations=reading.considerations,
            label_count=reading.label_count,
            cue_hit=reading.cue_hit,
            reading=reading,
        )
        if not decision.is_decision:
            return decision
        deciding = path[-1].condition.id
        if task is not None and not task.generic and task.verdict != flow_verdict:
            # The finding decides only where it was measured in this very situation; elsewhere it is a caveat.
            if deciding in task.finding_covers:
                decision.conflicts.append("task")
            else:
                decision.caveats.append("task")
        for cons in reading.considerations:
            if cons.favours in self.flow.outcomes and cons.favours != flow_verdict:
                decision.conflicts.append(f"consideration:{cons.id}")
        if not decision.conflicts and task is None and not reading.cue_hit:
            decision.conflicts.append("unknown")  # nothing in the question settles the flow: say what we need
        decision.verdict = "depends" if decision.conflicts else flow_verdict
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
        rank = {"labels": 0, "cue": 0, "learned": 0, "multi": 0, "": 1}
        return sorted(out, key=lambda item: rank.get(item[0].why, 2))


def _terms(text: str) -> frozenset[str]:
    return frozenset(tokenize_cached(text))  # tokenize already stems


@cache
def _alias_terms(names: tuple[str, ...]) -> tuple[frozenset[str], ...]:
    """The term sets of a task's aliases that ``_coverage`` can match (three or more terms), computed once."""
    return tuple(terms for name in names if len(terms := _terms(name)) >= 3)


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


def asks_to_choose(text: str, lexicon: Lexicon | None = None) -> bool:
    """Whether the text asks for a choice (a decision cue, read with commas removed: "LLM, or fine-tune?")."""
    plain = re.sub(r"[,、]", "", text)
    return any(c in plain for c in (lexicon or load_lexicon()).decision_cues)


def asks_about_survey(text: str, lexicon: Lexicon | None = None) -> bool:
    return any(w in text for w in (lexicon or load_lexicon()).survey_words)
