"""Japanese-aware, heading-aware chunking.

Units, from coarse to fine: paragraphs (blank lines), then sentences (ending in 。！？ or . ! ? followed by space),
then words (English) or characters (Japanese, only for a sentence longer than a chunk). Units are packed greedily up
to ``chunk_size``; the last sentences of a chunk (up to ``overlap``) start the next one. Sizes are measured in
"weighted characters": a CJK character counts 2, anything else 1, which tracks the e5 tokenizer's token count
(about 4 English characters or 1.5 Japanese characters per token) closely enough to keep chunks under 512 tokens.
A chunk never crosses a section boundary because sections are chunked one at a time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ingest.loaders import Section
from ingest.text import WIDE

_PARAGRAPH = re.compile(r"\n\s*\n")
# Sentence end: Japanese full stops (optionally followed by closing brackets), or . ! ? followed by whitespace.
_SENTENCE_END = re.compile(r"(?<=[。！？!?])[」』）)\]]*|(?<=[.!?])[\"')\]]*(?=\s)")
_WORD_BREAK = re.compile(r"\s+")




class _Measure:
    """O(1) weighted length of any slice of one text (prefix sums)."""

    def __init__(self, text: str) -> None:
        self.prefix = [0]
        total = 0
        for char in text:
            total += 2 if WIDE.match(char) else 1
            self.prefix.append(total)

    def __call__(self, start: int, end: int) -> int:
        return self.prefix[end] - self.prefix[start]


def weighted_len(text: str) -> int:
    return len(text) + len(WIDE.findall(text))


@dataclass(frozen=True)
class Span:
    start: int  # offsets relative to the section text
    end: int


@dataclass(frozen=True)
class Chunk:
    text: str
    section: str
    heading: tuple[str, ...]
    page: int | None
    char_start: int  # offsets in the normalised document
    char_end: int


def _spans(text: str, pattern: re.Pattern[str], start: int, end: int, keep_separator: bool) -> list[Span]:
    """Split text[start:end] at matches; separators go with the left part (sentences) or are dropped."""
    spans, cursor = [], start
    for match in pattern.finditer(text, start, end):
        cut = match.end() if keep_separator else match.start()
        if cut > cursor:
            spans.append(Span(cursor, cut))
        cursor = match.end()
    if cursor < end:
        spans.append(Span(cursor, end))
    return [s for s in spans if text[s.start : s.end].strip()]


def _units(text: str, limit: int, size: _Measure) -> list[Span]:
    """Paragraph spans, with any longer than ``limit`` broken into sentences, then words/characters."""
    out: list[Span] = []
    for para in _spans(text, _PARAGRAPH, 0, len(text), keep_separator=False):
        if size(para.start, para.end) <= limit:
            out.append(para)
            continue
        for sent in _spans(text, _SENTENCE_END, para.start, para.end, keep_separator=True):
            if size(sent.start, sent.end) <= limit:
                out.append(sent)
            else:
                out.extend(_break_long(text, sent, limit, size))
    return out


def _break_long(text: str, span: Span, limit: int, size: _Measure) -> list[Span]:
    """Break an over-long sentence at spaces (never mid-word); text without spaces (Japanese) by characters."""
    pieces, cursor = [], span.start
    while size(cursor, span.end) > limit:
        window_end = cursor + 1
        while window_end < span.end and size(cursor, window_end + 1) <= limit:
            window_end += 1
        space = max(
            (m.start() for m in _WORD_BREAK.finditer(text, cursor + (window_end - cursor) // 2, window_end)), default=-1
        )
        cut = space if space > cursor else window_end
        pieces.append(Span(cursor, cut))
        cursor = cut
        while cursor < span.end and text[cursor].isspace():
            cursor += 1
    if cursor < span.end:
        pieces.append(Span(cursor, span.end))
    return pieces


def chunk_section(section: Section, chunk_size: int, overlap: int) -> list[Chunk]:
    text = section.text
    size = _Measure(text)
    units = _units(text, chunk_size, size)
    chunks: list[Chunk] = []
    i = 0
    while i < len(units):
        first = i
        end = units[i].end
        i += 1
        while i < len(units) and size(units[first].start, units[i].end) <= chunk_size:
            end = units[i].end
            i += 1
        start = units[first].start
        body = text[start:end].strip()
        if body:
            lead = len(text[start:end]) - len(text[start:end].lstrip())
            chunks.append(
                Chunk(
                    text=body,
                    section=section.section,
                    heading=tuple(section.heading),
                    page=section.page,
                    char_start=section.start + start + lead,
                    char_end=section.start + start + lead + len(body),
                )
            )
        if i < len(units) and overlap > 0:
            # Step back over whole trailing units that fit into the overlap (but always make progress, and only
            # as far as the next unit still fits after them: a chunk of nothing but overlap would be redundant).
            back = i
            while (
                back - 1 > first
                and size(units[back - 1].start, units[i - 1].end) <= overlap
                and size(units[back - 1].start, units[i].end) <= chunk_size
            ):
                back -= 1
            i = back
    return chunks


def chunk_sections(sections: list[Section], chunk_size: int, overlap: int) -> list[Chunk]:
    return [chunk for section in sections for chunk in chunk_section(section, chunk_size, overlap)]
