"""The one answering pipeline every entry point uses (CLI ask/converse, eval, bench, the Gradio UI and its API):
``grounding`` (``AnswerService.ground``: read, decide, gate, fetch evidence) → a ``writer`` (template or LLM) that
streams ``AnswerEvent``s. The writer backend is chosen from the settings here, in one place."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from langchain_core.messages import AIMessage, BaseMessage

from bot.answer import Answer, to_messages
from bot.prompts import LANGUAGE_NAMES
from bot.service import AnswerService
from bot.text import detect_language
from bot.writers import AnswerEvent, LLMWriter, TemplateWriter, Writer
from ingest.config import Settings

if TYPE_CHECKING:  # the chat model class only for annotations: `ask` without an LLM never imports it
    from langchain_core.language_models.chat_models import BaseChatModel

CONDENSE_TURNS = 6  # history messages shown to the LLM when it condenses a follow-up
CONDENSE_ANSWER_CHARS = 500  # earlier answers are trimmed to this many characters in that prompt


class Pipeline:
    """``stream(question, history)`` yields ``grounded``, then the writer's events; ``ask`` returns the answer."""

    def __init__(self, service: AnswerService, model: BaseChatModel | None = None) -> None:
        self.service = service
        self.model = model
        template = TemplateWriter(service.flow, service.sources, service.asks)
        self.writers: dict[str, Writer] = {"template": template}
        if model is not None:
            self.writers["llm"] = LLMWriter(model, template)
        self.default_writer = "llm" if model is not None else "template"

    @classmethod
    def from_settings(cls, settings: Settings, service: AnswerService | None = None) -> Pipeline:
        """The service, plus the chat model ``settings.generator`` names (none by default)."""
        model = None
        if settings.generator != "none":
            from bot.llm import make_chat_model

            model = make_chat_model(settings)
        return cls(service or AnswerService(settings), model)

    def condense(self, question: str, history: list[BaseMessage]) -> str:
        """The LLM's standalone rewrite of a follow-up; the turn reader's reading when the model fails."""
        from langchain_core.output_parsers import StrOutputParser

        from bot.prompts import CONDENSE_PROMPT

        recent = [
            AIMessage(str(m.content)[:CONDENSE_ANSWER_CHARS]) if m.type == "ai" else m
            for m in history[-CONDENSE_TURNS:]
        ]
        chain = CONDENSE_PROMPT | self.model | StrOutputParser()
        try:
            text = chain.invoke(
                {"history": recent, "question": question, "language_name": LANGUAGE_NAMES[detect_language(question)]}
            ).strip()
        except Exception:  # noqa: BLE001 - a failed condensation falls back to the offline turn reader
            text = ""
        return text or self.service.condense(question, history)

    def stream(
        self, question: str, history: Sequence | None = None, writer: str | None = None
    ) -> Iterator[AnswerEvent]:
        name = writer or self.default_writer
        if name not in self.writers:
            raise ValueError(f"writer '{name}' is not available (configured: {', '.join(self.writers)})")
        condense = self.condense if name == "llm" else None
        grounding = self.service.ground(question, to_messages(history), condense=condense)
        yield AnswerEvent("grounded", grounding)
        yield from self.writers[name].stream(grounding)

    def ask(self, question: str, history: Sequence | None = None, writer: str | None = None) -> Answer:
        for event in self.stream(question, history, writer):
            if event.kind == "done" and event.answer is not None:
                return event.answer
        raise RuntimeError("the writer ended without an answer")
