"""The grounding stage: question (+ history) → turn reading → reading and decision → gate → evidence, fetched up
front. ``bot.pipeline`` puts a writer after it; every entry point uses that pipeline."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from bot.answer import Answer, check_citations, previous_user_message, to_messages, user_messages
from bot.compose import content_chunks, evidence_requests, specific_terms
from bot.engine import Decision, DecisionEngine, asks_about_survey, asks_to_choose, compile_phrases
from bot.grounding import Evidence, Grounding
from bot.knowledge import load_content_asks, load_flow, load_sources
from bot.retrieval import HybridRetriever
from bot.text import clip_question, detect_language, normalize_question, tokenize
from ingest.config import Settings
from ingest.embeddings import DocumentMemo, Embedder, load_embedder
from ingest.store import ChunkStore, StoredChunk

TASK_EVIDENCE_K = 8  # candidates per section when the claim is about a task (one that names the task is preferred)
SITUATION_TURNS = 4  # earlier user turns a follow-up's situation is rebuilt from (encodings are cached)
Condenser = Callable[[str, list], str]  # (question, history messages) -> standalone question
__all__ = ["Answer", "AnswerService", "Gate", "check_citations", "previous_user_message"]


class Situation(NamedTuple):
    """What a chat turn is read in: ``root``, the turn that set the situation out; ``fragments``, the follow-up
    turns that continue it, in order (what each states overrides what came before: the reading starts from the
    root alone); ``decides``, whether it reads as a decision; ``follows``, whether the turn reader read the turn
    as a follow-up."""

    root: str
    fragments: tuple[str, ...] = ()
    decides: bool = False
    follows: bool = False

    @property
    def text(self) -> str:
        """The turns joined: what retrieval searches with and what the answer quotes from."""
        return " ".join((self.root, *self.fragments))


def _states_fact(decision: Decision) -> bool:
    """Whether a turn read on its own states a fact of a decision: a settled condition or a consideration."""
    reading = decision.reading
    return bool(reading.considerations) or any(st.holds is not None for st in reading.states.values())


@dataclass(frozen=True)
class Gate:
    """Relevance gate thresholds (``Settings.gate_*``, where their tuning is documented)."""

    accept: float  # best dense similarity at or above which a question is in scope
    with_match: float  # at or above which it is in scope when it names a task, a flow cue or the survey
    offtopic_p: float  # the reader's off-topic probability at or above which a question is refused
    content_p: float = 1.01  # the reader's content probability at or above which a question matches (off: > 1)

    @classmethod
    def from_settings(cls, settings: Settings) -> Gate:
        return cls(settings.gate_accept, settings.gate_with_match, settings.gate_offtopic_p, settings.gate_content_p)


class AnswerService:
    def __init__(
        self,
        settings: Settings,
        embedder: Embedder | None = None,
        store: ChunkStore | None = None,
        gate: Gate | None = None,
    ) -> None:
        self.settings = settings
        self.embedder = embedder or load_embedder(settings)
        self.store = store or ChunkStore(settings)
        self.retriever = HybridRetriever(
            self.store, self.embedder, rrf_k=settings.rrf_k, per_list=settings.retrieval_per_list,
            dense_filter_max_chunks=settings.dense_filter_max_chunks,
            exact_dense_max_chunks=settings.exact_dense_max_chunks,
        )
        self.flow = load_flow(settings.corpus_dir / "decision_flow.toml")
        self.sources = load_sources(settings.corpus_dir / "sources.toml")
        self.asks = load_content_asks(settings.corpus_dir / "content.toml")
        self.engine = DecisionEngine(
            self.flow,
            self.embedder.encode_queries,
            DocumentMemo(self.embedder, settings.model_cache_dir),  # task vectors memoised on disk: no re-embedding
            semantic_task_min=settings.semantic_task_min,
        )
        self.gate = gate or Gate.from_settings(settings)
        self.turns = None
        if settings.reader == "learned":
            from bot.reader import ensure_reader
            from bot.turns import ensure_turn_reader

            self.engine.reader = ensure_reader(settings, self.embedder, self.flow, progress=True)
            self.retriever.token_layer = self.engine.reader.config.part_layer  # one forward pass serves both
            self.turns = ensure_turn_reader(settings, self.embedder)

    def warm_up(self) -> int:
        """Ready a long-lived process (the UI server, the bench) before its first question: compile the cue
        patterns, then hand the heap that loading freed back to the system. A one-question CLI call skips it.
        Returns how many patterns are compiled."""
        compiled = compile_phrases(self.flow)
        release_free_memory()
        return compiled

    @property
    def chunk_count(self) -> int:
        return len(self.retriever.chunks)

    def condense(self, question: str, history: list | None, question_vector: np.ndarray | None = None) -> str:
        """The text a turn is read in (``situation``'s text): what the LLM condenser falls back to."""
        return self.situation(question, history, question_vector).text

    def situation(self, question: str, history: list | None, question_vector: np.ndarray | None = None) -> Situation:
        """Without an LLM: a turn that depends on the previous one (an ellipsis, "why?", a correction; decided by
        the learned turn reader) continues the previous turn's situation — its own chain of turns, so a chain of
        follow-ups keeps the first question and each turn's own facts in order. After a content or off-topic turn,
        a follow-up that asks to choose, states a fact, says it goes back, or reads as a decision continues the
        latest decision situation ("so which one then?"), and one that states a whole task of its own is read on
        its own ("so which one then for my intent classifier, 20k labels?"). Anything else stands alone.
        ``question_vector``: the turn's query embedding when the caller already has it."""
        users = user_messages(history)
        if not users:
            return Situation(question)
        if self.turns is not None:
            window = users[-SITUATION_TURNS:]
            return self._join(self._situations(window), window[-1], question, question_vector)
        previous = users[-1]
        if len(question) > 160:
            return Situation(question)
        own = self.engine.decide(normalize_question(question).lower())
        if own.task is not None and own.task_score >= 1.0:
            return Situation(question)
        return Situation(previous, (question,), follows=True)

    def _follows(self, previous: str, question: str, question_vector: np.ndarray | None = None) -> bool:
        prev_text, text = normalize_question(previous), normalize_question(question)
        if question_vector is None:
            question_vector = self.retriever.embed_query(text)
        return self.turns.follow_up(prev_text, text, self.retriever.embed_query(prev_text), question_vector)[0]

    def _decide(self, situation: Situation) -> Decision:
        """A situation's decision, each turn read clipped as a whole question would be (encodings are cached from
        when its turns were answered)."""
        limit = self.settings.max_question_chars
        root, *own = [normalize_question(clip_question(t, limit)[0]) for t in (situation.root, *situation.fragments)]
        return self.engine.decide(
            root.lower(), self.retriever.encode_query(root), [f.lower() for f in own],
            [self.retriever.encode_query(f) for f in own],
        )

    def _join(self, situations: list[Situation], previous: str, question: str,
              question_vector: np.ndarray | None = None) -> Situation:
        """The situation a turn is read in, given the earlier turns' situations."""
        if not self._follows(previous, question, question_vector):
            return Situation(question)
        base = situations[-1]
        if not base.decides:
            own = normalize_question(question).lower()
            alone = self._decide(Situation(question)) if own else None
            latest = next((s for s in reversed(situations) if s.decides), None)
            if (
                alone is not None and alone.is_decision and alone.task is not None and alone.reading.task_named
                and (latest is None or self._another_task(alone, self._decide(latest)))
            ):
                return Situation(question, (), follows=True)  # a whole situation of its own after a content turn
            if (
                asks_to_choose(own, self.engine.rules.lexicon) or self.turns.returns(question)
                or (alone is not None and (alone.is_decision or _states_fact(alone)))
                or self._continues_decision(question)
            ):
                base = next((s for s in reversed(situations) if s.decides), base)
        return Situation(base.root, (*base.fragments, question), follows=True)

    def _another_task(self, alone: Decision, latest: Decision) -> bool:
        """Whether a follow-up read alone names a specific task of its own, other than the latest decision's
        (``ReaderConfig.own_task_p``): then it is a new situation, not the latest one continued."""
        least = getattr(getattr(self.engine.reader, "config", None), "own_task_p", 0.0)
        task = alone.task
        return (
            task is not None and not task.generic and alone.task_score >= least
            and (latest.task is None or task.id != latest.task.id)
        )

    def _continues_decision(self, question: str) -> bool:
        """Whether a follow-up's own words continue a model choice (the fragment reader reads it as a decision:
        「それでもLLMですか？」, "are you sure?"), not a content or off-topic question ("and the next remark?",
        "and tomorrow?")."""
        read = getattr(self.engine.reader, "fragment_intent", None)
        normal = normalize_question(question)
        found = read(normal.lower(), self.retriever.encode_query(normal)) if read and normal else None
        least = self.engine.reader.config.follow_up_content_p  # where a follow-up's own intent wins (reader knob)
        return found is not None and found[0] == "decision" and found[1] >= least

    def _situations(self, users: list[str]) -> list[Situation]:
        """Each user turn's situation and whether it reads as a decision: what the next turn may continue."""
        out: list[Situation] = []
        for i, turn in enumerate(users):
            situation = Situation(turn) if i == 0 else self._join(out, users[i - 1], turn)
            decides = bool(normalize_question(situation.text)) and self._decide(situation).is_decision
            out.append(situation._replace(decides=decides))
        return out

    def ask(self, question: str, history: Sequence | None = None) -> Answer:
        """Answer one turn with the built-in template writer (``Pipeline`` is the general entry point)."""
        from bot.pipeline import Pipeline

        return Pipeline(self).ask(question, history)

    def ground(self, question: str, history: Sequence | None = None, condense: Condenser | None = None) -> Grounding:
        """Read, decide, gate and fetch the evidence for one turn. ``history``: earlier turns (any shape
        ``to_messages`` accepts); ``condense``: an LLM's rewrite of a follow-up into a standalone question, used
        instead of the turn reader when given."""
        started = time.perf_counter()
        raw = question if isinstance(question, str) else str(question)
        history = to_messages(history)
        own_text = normalize_question(raw)
        # The turn's own embedding serves the follow-up decision, the follow-up's own reading, and (when the turn
        # stands alone) retrieval: computed once.
        own_encoding = (
            self.retriever.encode_query(own_text)
            if condense is None and self.turns is not None and previous_user_message(history)
            and re.search(r"\w", own_text)
            else None
        )
        situation = Situation(raw)
        if history and previous_user_message(history):
            own_vector = own_encoding.vector if own_encoding is not None else None
            situation = (
                Situation(condense(raw, history)) if condense else self.situation(raw, history, own_vector)
            )
        text = normalize_question(situation.text)
        follows = situation.follows or text != own_text
        lang_override = detect_language(own_text) if follows else None
        notice = None
        text, cut = clip_question(text, self.settings.max_question_chars)
        if cut:  # the middle goes: the beginning sets the scene, the end usually holds the ask
            text = normalize_question(text)
            notice = "truncated"
        lang = lang_override or detect_language(text)  # each turn answers in its own language
        grounding = Grounding(raw, text, lang, "empty", started, notice=notice, follow_up=follows)
        if not re.search(r"\w", text):
            return grounding
        lowered = text.lower()
        encoding = (
            own_encoding if own_encoding is not None and text == own_text else self.retriever.encode_query(text)
        )
        vector = encoding.vector
        # A chain is read from its first turn alone, each follow-up's own words overriding what came before; the
        # encodings are the cached ones (this turn's own, the text's, the earlier turns').
        decision = self._decide(situation if situation.fragments else Situation(text))
        reading = decision.reading
        _restore_case(decision, text, lowered)
        extra = [name for t in ([decision.task] if decision.task else []) for name in t.all_names[:6]]
        ranking = self.retriever.rank(text, extra_terms=tokenize(" ".join(extra)), vector=vector)
        top_dense = ranking.top_dense(self.settings.retrieval_k)
        matched = reading.intent != "offtopic" and (
            reading.task_named or decision.cue_hit or asks_about_survey(lowered)
            or (reading.reader == "learned" and reading.intent == "content" and reading.intent_p >= self.gate.content_p)
        )
        read_offtopic = reading.intent == "offtopic" and reading.intent_p >= self.gate.offtopic_p
        in_scope = (
            bool(ranking.ranked)
            and not read_offtopic
            and (top_dense >= self.gate.accept or (top_dense >= self.gate.with_match and matched))
        )
        grounding.decision = decision
        grounding.debug = {
            "top_dense": round(top_dense, 4),
            "task": decision.task.id if decision.task else None,
            "task_score": round(decision.task_score, 3),
            "is_decision": decision.is_decision,
            "intent": f"{reading.intent}:{reading.intent_p:.2f}",
            "reader": reading.reader,
            "cue_hit": decision.cue_hit,
        }
        if not in_scope:
            grounding.kind = "abstain"
        elif decision.is_decision and decision.verdict:
            grounding.kind = "decision"
            grounding.evidence = self.fetch_evidence(decision, vector, lang)
        else:
            grounding.kind = "content"
            referenced = [
                found[0][0]
                for section in self.referenced_sections(lowered)
                if (found := self.retriever.best_in_sections(vector, [section], self.flow.doc_id, lang))
            ]
            grounding.content = content_chunks(
                ranking.hits(self.settings.retrieval_k), lang, self.flow.doc_id, first=referenced,
                terms=frozenset(specific_terms(text, self.asks)),
            )
            grounding.cards = self.card_chunks(grounding.content)
        return grounding

    def fetch_evidence(self, decision: Decision, vector: np.ndarray, lang: str) -> Evidence:
        """The best chunk for each section list the decision's answer may cite: the first section (most specific
        first) that has a chunk wins, as the writer asks for it. For a claim about the task, the best chunk that
        names the task (any of its names), else the best one."""
        evidence, doc = Evidence(), self.flow.doc_id
        tasks = {t.id: t for t in self.flow.tasks}
        for sections, exact, about in evidence_requests(decision, self.flow):
            key = (tuple(sections), exact, about)
            if key in evidence.found:
                continue
            task = tasks.get(about)
            first, naming = None, None
            for section in sections:
                found = self.retriever.best_in_sections(
                    vector, [section], doc, lang, k=TASK_EVIDENCE_K if task else 1, exact=exact
                )
                first = first or (found[0][0] if found else None)
                if task is None:
                    if first is not None:
                        break
                    continue
                naming = next((c for c, _ in found if task.named_in(f"{c.metadata.get('title', '')} {c.text}")), None)
                if naming is not None:
                    break
            evidence.found[key] = naming or first
        return evidence

    def card_chunks(self, chunks: list[StoredChunk]) -> dict[str, list[StoredChunk]]:
        """Every live chunk of each given chunk's card (its file), in order: a content answer reads the card whole,
        not only the chunk retrieval found."""
        by_card: dict[tuple[str, str], list[StoredChunk]] = {}
        for chunk in self.store.generation_chunks(sorted({c.group for c in chunks})):
            by_card.setdefault(chunk.group, []).append(chunk)
        out = {}
        for c in chunks:
            card = by_card.get(c.group, [])
            out[c.id] = sorted(card, key=lambda x: int(x.metadata.get("chunk_index", 0))) if card else [c]
        return out

    def referenced_sections(self, lowered: str) -> list[str]:
        """Survey sections a question names: "Remark 8", "section 4.1", "§5.2", "4.3節", "Figure 2" / 「図2」."""
        survey = self.sources.get(self.flow.doc_id)
        out: list[str] = []
        for number in re.findall(r"(?:remark|リマーク)\s*(\d)", lowered):
            if survey and number in survey.remarks:
                out.append(survey.remarks[number])
        out += re.findall(r"(?:section|sec\.|§)\s*(\d(?:\.\d){0,2})", lowered)
        out += re.findall(r"(\d(?:\.\d){0,2})\s*節", lowered)
        if re.search(r"figure\s*2|fig\.\s*2|図\s*2", lowered):
            out.append(self.flow.figure_section)
        known = set(self.retriever.sections)
        return [s for s in dict.fromkeys(out) if s in known]


def _restore_case(decision: Decision, text: str, lowered: str) -> None:
    """Quote the evidence as the user wrote it: readers see the lower-cased question."""
    if len(text) != len(lowered):
        return
    for state in decision.states.values():
        start = lowered.find(state.evidence) if state.evidence and state.why in ("cue", "learned") else -1
        if start >= 0:
            state.evidence = text[start : start + len(state.evidence)]


def release_free_memory() -> bool:
    """Return the C heap's free pages to the system (glibc ``malloc_trim``): loading the models and the reader
    leaves ~30 MB of freed temporaries resident otherwise. A no-op (False) where glibc is not the allocator."""
    import ctypes
    import gc

    gc.collect()
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False
