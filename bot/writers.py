"""Writers turn a ``Grounding`` into an ``Answer`` and stream it as ``AnswerEvent``s: text deltas, then the final
answer. The template writer is the built-in composer; the LLM writer prompts a LangChain chat model with the
grounding's numbered sources and falls back to the template when the model errors, times out or cites nothing."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from bot.answer import Answer
from bot.compose import Citations, T, compose_content, compose_decision, mark_support, with_sources
from bot.grounding import Grounding
from bot.knowledge import ContentAsks, DecisionFlow, Source
from bot.prompts import FENCES, LANGUAGE_NAMES

if TYPE_CHECKING:  # the chat model class only for annotations: `ask` without an LLM never imports it
    from langchain_core.language_models.chat_models import BaseChatModel

_MARKER = re.compile(r"\[(\d+)\]")
_LINE = re.compile(r"[^\n]*\n|[^\n]+$")


@dataclass(frozen=True)
class AnswerEvent:
    """One event of an answer stream, the same type for every writer and entry point.
    ``grounded``: the grounding is ready (verdict, flow, sources can be shown); ``delta``: more answer text;
    ``reset``: the text streamed so far is withdrawn (``text`` says why) and the fallback answer follows;
    ``done``: the final ``answer``."""

    kind: Literal["grounded", "delta", "reset", "done"]
    grounding: Grounding
    text: str = ""
    answer: Answer | None = None


class Writer(Protocol):
    name: str

    def stream(self, grounding: Grounding) -> Iterator[AnswerEvent]: ...


def answer_shell(g: Grounding) -> Answer:
    """The answer's facts from the grounding (verdict, path, reading, …); the writer adds prose and citations."""
    decision = g.decision if g.kind == "decision" else None
    return Answer(
        g.question,
        g.language,
        g.verdict,
        g.abstained,
        "",
        g.flow_path(),
        [],
        deciding_step=decision.deciding.condition.step if decision and decision.deciding else None,
        task=decision.task.id if decision and decision.task else None,
        notice=g.notice,
        debug=g.debug,
        reading=g.reading(),
        follow_up=g.follow_up,
    )


def _done(g: Grounding, answer: Answer) -> AnswerEvent:
    answer.seconds = round(time.perf_counter() - g.started, 4)
    return AnswerEvent("done", g, answer=answer)


class TemplateWriter:
    """The built-in answer: verdict, reasons with [n], the flow path, caveats, what would change it, sources."""

    name = "template"

    def __init__(self, flow: DecisionFlow, sources: dict[str, Source], asks: ContentAsks | None = None) -> None:
        self.flow = flow
        self.sources = sources
        self.asks = asks  # content ask patterns (corpus/content.toml)

    def write(self, g: Grounding) -> Answer:
        answer = answer_shell(g)
        lang = g.language
        if g.kind in ("empty", "abstain"):
            answer.answer = T[lang][g.kind]
            return answer
        cites = Citations(self.sources)
        if g.kind == "decision" and g.decision is not None:
            body = compose_decision(g.decision, self.flow, lang, g.evidence.best, cites)
        else:
            body = compose_content(g.content, g.text, lang, cites, self.asks, g.cards)
        mark_support(body, cites)
        answer.answer = with_sources(body, lang, cites)
        answer.citations = [c.to_json() for c in cites.items]
        return answer

    def stream(self, g: Grounding) -> Iterator[AnswerEvent]:
        answer = self.write(g)
        for line in _LINE.findall(answer.answer):  # no artificial pauses: the text is ready
            yield AnswerEvent("delta", g, text=line)
        yield _done(g, answer)


@dataclass(frozen=True)
class WriterFallback:
    """Emitted by the LLM chain's fallback runnable when the model fails before its first token."""

    reason: str


def repair_citations(text: str, n_sources: int) -> tuple[str, list[int], list[int]]:
    """Drop markers that name no source; return (text, kept source numbers in order of first use, dropped ones)."""
    kept: list[int] = []
    dropped: list[int] = []

    def fix(match: re.Match) -> str:
        n = int(match.group(2))
        if 1 <= n <= n_sources:
            if n not in kept:
                kept.append(n)
            return match.group(0)
        dropped.append(n)
        return ""

    return re.sub(r"(\s?)\[(\d+)\]", fix, text), kept, dropped


def renumber(text: str, order: list[int]) -> str:
    """Renumber markers so the cited sources become [1], [2], … in order of first use."""
    mapping = {old: new for new, old in enumerate(order, start=1)}
    return _MARKER.sub(lambda m: f"[{mapping[int(m.group(1))]}]" if int(m.group(1)) in mapping else "", text)


def prompt_inputs(g: Grounding) -> dict:
    """The answer prompt's variables for a grounding: the engine's verdict and path, the numbered sources."""
    sources = "\n".join(
        FENCES.source(n, str(c.metadata.get("title", "")), str(c.metadata.get("section", "")), c.text)
        for n, c in enumerate(g.sources, start=1)
    )
    path = " → ".join(f"{p['step']}. {p['condition']}: {p['holds']}" for p in g.flow_path()) or "n/a"
    return {
        "language_name": LANGUAGE_NAMES[g.language],
        "verdict": g.verdict or "none (not a decision question)",
        "path": path,
        "sources": sources,
        "question": g.text,
    }


FALLBACK_NOTES = {
    "en": "(The LLM's answer could not be used ({reason}); here is the built-in answer.)",
    "ja": "（LLMの回答を使えませんでした（{reason}）。組み込みの回答を表示します。）",
}


class LLMWriter:
    """``ANSWER_PROMPT | model | text``, with a LangChain fallback for a model that fails before its first token;
    a failure mid-stream or an answer that cites no source also falls back to the template writer."""

    name = "llm"

    def __init__(self, model: BaseChatModel, template: TemplateWriter) -> None:
        from langchain_core.output_parsers import StrOutputParser
        from langchain_core.runnables import RunnableLambda

        from bot.prompts import ANSWER_PROMPT

        self.model = model
        self.template = template
        generate = ANSWER_PROMPT | model | StrOutputParser()
        fallback = RunnableLambda(lambda inputs: WriterFallback(f"error: {type(inputs['error']).__name__}"))
        self.chain = generate.with_fallbacks([fallback], exception_key="error")

    def stream(self, g: Grounding) -> Iterator[AnswerEvent]:
        if g.abstained or not g.sources:
            yield from self.template.stream(g)  # nothing to ground an LLM answer on: the model is not called
            return
        parts: list[str] = []
        try:
            for chunk in self.chain.stream(prompt_inputs(g)):
                if isinstance(chunk, WriterFallback):
                    yield from self._fall_back(g, chunk.reason, streamed=False)
                    return
                if chunk:
                    parts.append(chunk)
                    yield AnswerEvent("delta", g, text=chunk)
        except Exception as exc:  # noqa: BLE001 - a backend failing mid-stream: withdraw the text, keep the app up
            yield from self._fall_back(g, f"error: {type(exc).__name__}", streamed=True)
            return
        text, kept, dropped = repair_citations("".join(parts), len(g.sources))
        if not kept:
            yield from self._fall_back(g, "no citations", streamed=True)
            return
        answer = answer_shell(g)
        cites = Citations(self.template.sources)
        for n in kept:
            cites.cite(g.sources[n - 1])
        answer.answer = renumber(text, kept).strip()
        mark_support(answer.answer, cites)
        answer.citations = [c.to_json() for c in cites.items]
        answer.writer = self.name
        if dropped:
            answer.debug = {**answer.debug, "dropped_markers": dropped}
        yield _done(g, answer)

    def _fall_back(self, g: Grounding, reason: str, streamed: bool) -> Iterator[AnswerEvent]:
        note = FALLBACK_NOTES[g.language].format(reason=reason)
        if streamed:
            yield AnswerEvent("reset", g, text=note)
        for event in self.template.stream(g):
            if event.kind == "done" and event.answer is not None:
                event.answer.writer_note = reason
            yield event
