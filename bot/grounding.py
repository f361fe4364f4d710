"""Grounding: everything an answer rests on, settled before any prose is written — the language, how the question
was read, the decision, the relevance gate's result and the numbered evidence the answer may cite. Writers
(``bot.writers``) turn a ``Grounding`` into text; none of them calls retrieval."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from bot.engine import Decision
from ingest.store import StoredChunk

Kind = Literal["empty", "abstain", "decision", "content"]
EvidenceKey = tuple[tuple[str, ...], bool, str | None]  # (sections, most specific first; exact; task id it is about)


class MissingEvidence(KeyError):
    """A writer asked for evidence the grounding did not fetch: the writer and ``evidence_requests`` disagree."""


@dataclass
class Evidence:
    """The best chunk for each section list a writer may cite, fetched up front. ``best`` is a pure lookup."""

    found: dict[EvidenceKey, StoredChunk | None] = field(default_factory=dict)

    def best(self, sections: Iterable[str], exact: bool = False, about: str | None = None) -> StoredChunk | None:
        """The chunk fetched for these sections (for a claim about task ``about``: one that names the task)."""
        key = (tuple(sections), exact, about)
        if key not in self.found:
            raise MissingEvidence(key)
        return self.found[key]

    def chunks(self) -> list[StoredChunk]:
        """Distinct chunks in the order they were requested."""
        seen: dict[str, StoredChunk] = {}
        for chunk in self.found.values():
            if chunk is not None and chunk.id not in seen:
                seen[chunk.id] = chunk
        return list(seen.values())


@dataclass
class Grounding:
    """One turn, grounded. ``sources`` are the numbered chunks (1..N) an LLM writer is shown; the template writer
    cites from ``evidence`` (decisions) or ``content`` and its cards (content questions), which are subsets of
    ``sources``."""

    question: str  # as the user typed it
    text: str  # what was read: the turn, or the turn read together with the previous one; clipped
    language: str
    kind: Kind
    started: float = field(default_factory=time.perf_counter)
    decision: Decision | None = None
    evidence: Evidence = field(default_factory=Evidence)
    content: list[StoredChunk] = field(default_factory=list)
    cards: dict[str, list[StoredChunk]] = field(default_factory=dict)  # content chunk id -> its card's chunks
    notice: str | None = None
    follow_up: bool = False
    debug: dict = field(default_factory=dict)

    @property
    def abstained(self) -> bool:
        return self.kind in ("empty", "abstain")

    @property
    def sources(self) -> list[StoredChunk]:
        if self.kind != "content":
            return self.evidence.chunks()
        seen: dict[str, StoredChunk] = {}  # each content chunk's whole card (its chunks in order), once
        for chunk in self.content:
            for part in self.cards.get(chunk.id) or [chunk]:
                seen.setdefault(part.id, part)
        return list(seen.values())

    @property
    def verdict(self) -> str | None:
        return self.decision.verdict if self.kind == "decision" and self.decision else None

    def flow_path(self, lang: str | None = None) -> list[dict]:
        if self.kind != "decision" or self.decision is None:
            return []
        lang = lang or self.language
        return [
            {"step": s.condition.step, "condition": s.condition.name[lang], "holds": s.holds, "id": s.condition.id}
            for s in self.decision.path
        ]

    def reading(self) -> list[dict]:
        """How the question was read, per condition: value, the reader's probability and the words it came from."""
        if self.kind != "decision" or self.decision is None:
            return []
        return [
            {
                "id": cid,
                "value": state.value,
                "p": None if state.p is None else round(state.p, 3),
                "evidence": state.evidence,
                "source": state.why or "unstated",
            }
            for cid, state in self.decision.states.items()
        ]
