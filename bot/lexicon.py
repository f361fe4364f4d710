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
    kanji_digits: str = ""
    kanji_units: tuple[tuple[str, int], ...] = ()
    kanji_groups: tuple[tuple[str, int], ...] = ()

    def word_number_patterns(self) -> tuple[tuple[re.Pattern[str], int], ...]:
        return _word_number_patterns(tuple(self.word_numbers.items()))

    def kanji_number(self, numeral: str) -> int:
        """The value of a Japanese numeral such as 三十万 or 二千五百 (digits, in-group multipliers, group
        multipliers from the lexicon)."""
        units, groups = dict(self.kanji_units), dict(self.kanji_groups)
        total = group = digits = 0
        for ch in numeral:
            if ch in self.kanji_digits:
                digits = digits * 10 + self.kanji_digits.index(ch)
            elif ch in units:
                group += (digits or 1) * units[ch]
                digits = 0
            elif ch in groups:
                total += ((group + digits) or 1) * groups[ch]
                group = digits = 0
        return total + group + digits

    def kanji_pattern(self) -> re.Pattern[str] | None:
        chars = self.kanji_digits + "".join(k for k, _ in self.kanji_units + self.kanji_groups)
        return _kanji_pattern(chars) if chars else None


@cache
def _kanji_pattern(chars: str) -> re.Pattern[str]:
    return re.compile(f"(?<!数)[{re.escape(chars)}]+")


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
        kanji_digits=str(counts.get("kanji_digits", "")),
        kanji_units=tuple((str(k), int(v)) for k, v in counts.get("kanji_units", {}).items()),
        kanji_groups=tuple((str(k), int(v)) for k, v in counts.get("kanji_groups", {}).items()),
        content_cues=_strings(intent, "content_cues", "intent", path),
        survey_words=_strings(intent, "survey_words", "intent", path),
    )
