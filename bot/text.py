"""Text helpers for questions: normalisation and clipping; BM25 terms come from ingest.terms, the language detector
from ingest.text (both re-exported here)."""

from __future__ import annotations

import re
import unicodedata

from ingest.terms import EN_STOPWORDS, tokenize, tokenize_cached  # noqa: F401 (re-exported)
from ingest.text import detect_language as detect_language  # re-exported: the one detector lives in ingest


def normalize_question(text: str) -> str:
    """NFKC, control characters removed (newlines/tabs become spaces), whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text)
    if not text.isprintable():  # printable text has none of those categories: skip the per-character pass
        text = "".join(" " if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") else c for c in text)
    return re.sub(r"\s+", " ", text).strip()


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
