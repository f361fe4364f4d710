"""The reader's word lists (``corpus/reader/lexicon.toml``): number words, label-count words, intent cues."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from bot.knowledge import KnowledgeError, _read_toml

DEFAULT_PATH = Path(__file__).resolve().parents[1] / "corpus" / "reader" / "lexicon.toml"


@dataclass(frozen=True)
class Lexicon:
    word_numbers: dict[str, int]
    counters: str
    units: dict[str, int]
    label_words: tuple[str, ...]
    per_words: tuple[str, ...]
    retracting_before: tuple[str, ...]
    retracting_after: tuple[str, ...]
    decision_cues: tuple[str, ...]
    content_cues: tuple[str, ...]
    survey_words: tuple[str, ...]

    def word_number_patterns(self) -> tuple[tuple[re.Pattern[str], int], ...]:
        return _word_number_patterns(tuple(self.word_numbers.items()))


@cache
def _word_number_patterns(items: tuple[tuple[str, int], ...]) -> tuple[tuple[re.Pattern[str], int], ...]:
    return tuple((re.compile(rf"(?<![a-z0-9]){re.escape(w)}(?![a-z])"), v) for w, v in items)


def _strings(table: dict, key: str, where: str, path: Path) -> tuple[str, ...]:
    values = table.get(key)
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise KnowledgeError(f"{path}: {where}.{key} must be a list of strings")
    return tuple(v.lower() for v in values)


@cache
def load_lexicon(path: Path = DEFAULT_PATH) -> Lexicon:
    data = _read_toml(path)
    try:
        numbers = {str(k).lower(): int(v) for k, v in data["word_numbers"].items()}
        counts, intent = data["label_count"], data["intent"]
        units = {str(k).lower(): int(v) for k, v in counts["units"].items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise KnowledgeError(f"{path}: missing or malformed table/field {exc}") from exc
    return Lexicon(
        word_numbers=numbers,
        counters=str(counts.get("counters", "")),
        units=units,
        label_words=_strings(counts, "label_words", "label_count", path),
        per_words=_strings(counts, "per_words", "label_count", path),
        retracting_before=_strings(counts, "retracting_before", "label_count", path),
        retracting_after=_strings(counts, "retracting_after", "label_count", path),
        decision_cues=_strings(intent, "decision_cues", "intent", path),
        content_cues=_strings(intent, "content_cues", "intent", path),
        survey_words=_strings(intent, "survey_words", "intent", path),
    )
