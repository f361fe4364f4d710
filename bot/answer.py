"""The answer every entry point prints or shows (the JSON contract), its citation check, and the one chat-history
format (LangChain messages) with the converter every entry point uses."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, convert_to_messages

_CITE = re.compile(r"\[(\d+)\]")


@dataclass
class Answer:
    question: str
    language: str
    verdict: str | None
    abstained: bool
    answer: str
    flow_path: list[dict]
    citations: list[dict]
    seconds: float = 0.0
    deciding_step: int | None = None
    task: str | None = None
    notice: str | None = None
    debug: dict = field(default_factory=dict)
    reading: list[dict] = field(default_factory=list)
    follow_up: bool = False  # read together with the previous turn
    writer: str = "template"  # which writer produced the prose: "template" | "llm"
    writer_note: str | None = None  # why the LLM writer fell back to the template, when it did

    def to_json(self) -> dict:
        """The stable CLI/API contract (plus added keys: deciding_step, task, notice, reading, follow_up, writer)."""
        return {
            "question": self.question,
            "language": self.language,
            "verdict": self.verdict,
            "abstained": self.abstained,
            "answer": self.answer,
            "flow_path": self.flow_path,
            "citations": self.citations,
            "deciding_step": self.deciding_step,
            "task": self.task,
            "notice": self.notice,
            "reading": self.reading,
            "follow_up": self.follow_up,
            "writer": self.writer,
            "writer_note": self.writer_note,
        }


History = list[BaseMessage]


def to_messages(history: Sequence | None) -> History:
    """Chat history in any accepted shape → LangChain messages. Accepted: messages, chat dicts
    (``{"role": "user"|"assistant", "content": str}``, as Gradio sends them) and (user, assistant) pairs."""
    out: History = []
    for turn in history or []:
        if isinstance(turn, BaseMessage):
            out.append(turn)
        elif isinstance(turn, dict):
            content = turn.get("content")
            if isinstance(content, str) and turn.get("role") in ("user", "assistant", "human", "ai", "system"):
                out += convert_to_messages([{"role": turn["role"], "content": content}])
        elif isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(t, str) for t in turn):
            out += [HumanMessage(turn[0]), AIMessage(turn[1])]
        else:
            raise TypeError(f"history: cannot read a turn of type {type(turn).__name__}")
    return out


def user_messages(history: Sequence | None) -> list[str]:
    """The non-empty user turns of a chat history, in order."""
    return [m.content for m in to_messages(history)
            if m.type == "human" and isinstance(m.content, str) and m.content.strip()]


def previous_user_message(history: Sequence | None) -> str | None:
    """The last non-empty user turn of a chat history."""
    users = user_messages(history)
    return users[-1] if users else None


def check_citations(answer: Answer, store_ids: set[str] | None = None) -> list[str]:
    """Problems with an answer's citations (empty list = valid): every [n] has a citation, every citation is
    used, numbers are 1..N, and (given ``store_ids``) every cited chunk is in the store."""
    problems = []
    used = {int(n) for n in _CITE.findall(answer.answer)}
    listed = [c["n"] for c in answer.citations]
    if sorted(listed) != list(range(1, len(listed) + 1)):
        problems.append(f"citation numbers are not 1..N: {listed}")
    if used - set(listed):
        problems.append(f"markers without a citation: {sorted(used - set(listed))}")
    if set(listed) - used:
        problems.append(f"citations never referenced: {sorted(set(listed) - used)}")
    if store_ids is not None:
        missing = [c["chunk_id"] for c in answer.citations if c["chunk_id"] not in store_ids]
        if missing:
            problems.append(f"cited chunks not in the store: {missing}")
    return problems
