"""Text helpers for questions: normalisation, language detection, clipping; BM25 terms come from ingest.terms."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from ingest.terms import EN_STOPWORDS, tokenize  # noqa: F401 (EN_STOPWORDS re-exported)
from ingest.terms import HAN as _HAN
from ingest.terms import KANA as _KANA


def normalize_question(text: str) -> str:
    """NFKC, control characters removed (newlines/tabs become spaces), whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(" " if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") else c for c in text)
    return re.sub(r"\s+", " ", text).strip()


def detect_language(text: str) -> str:
    """'ja' or 'en' for a question. Any kana means Japanese; Han characters without kana count as Japanese too
    when they outweigh Latin letters (e.g. 「感情分析」); everything else is English."""
    if _KANA.search(text):
        return "ja"
    han = len(_HAN.findall(text))
    latin = sum(1 for c in text if c.isascii() and c.isalpha())
    return "ja" if han and han * 2 >= latin else "en"


@lru_cache(maxsize=4096)
def tokenize_cached(text: str) -> tuple[str, ...]:
    return tuple(tokenize(text))


# Over-long questions keep their beginning and their end (where the ask usually is), joined by this marker.
CLIP_SEP = "\n[…]\n"  # stands for the middle of an over-long question
CLIP_SEP_LEN = len(normalize_question(f"a{CLIP_SEP}b")) - 2  # as the service counts it (NFKC: "…" is "...")


def clip_question(text: str, limit: int) -> tuple[str, int]:
    """``text`` within ``limit`` characters as the service counts them (after ``normalize_question``): over it,
    the beginning (a third) and the end (the rest, where the ask usually is) joined by ``CLIP_SEP``. Returns the
    text and how many (normalised) characters were left out."""
    full = len(normalize_question(text))
    if full <= limit:
        return text, 0
    keep = limit - CLIP_SEP_LEN
    while True:  # NFKC can lengthen text ("…" is "..."): shrink the kept part until it fits
        head = keep // 3
        clipped = f"{text[:head].rstrip()}{CLIP_SEP}{text[len(text) - (keep - head):].lstrip()}"
        size = len(normalize_question(clipped))
        if size <= limit or keep <= 0:
            return clipped, full - (size - CLIP_SEP_LEN)
        keep = max(0, min(keep - 1, keep * (limit - CLIP_SEP_LEN) // max(1, size - CLIP_SEP_LEN)))
