"""BM25 terms shared by ingest (which builds the keyword index) and bot (which queries it): Sudachi (mode A)
normalised forms for Japanese, lower-cased, stemmed words minus stop words for Latin script."""

from __future__ import annotations

import re
import threading
import unicodedata
from functools import lru_cache

from ingest.text import ASCII_WORD, CJK, HAN, KANA, split_sentences, stem  # noqa: F401 (KANA, HAN re-exported)

_SUDACHI_MAX_BYTES = 40_000  # Sudachi rejects inputs near 49 kB; longer text is tokenised in pieces

# Small English stop list: BM25 idf already discounts common words, this only drops pure function words.
EN_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "of",
        "to",
        "in",
        "on",
        "for",
        "with",
        "by",
        "at",
        "from",
        "as",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "i",
        "we",
        "you",
        "they",
        "he",
        "she",
        "my",
        "our",
        "your",
        "their",
        "me",
        "us",
        "do",
        "does",
        "did",
        "should",
        "would",
        "could",
        "can",
        "will",
        "shall",
        "may",
        "might",
        "must",
        "what",
        "which",
        "who",
        "whom",
        "how",
        "why",
        "when",
        "where",
        "there",
        "here",
        "than",
        "then",
        "so",
        "if",
        "not",
        "no",
        "yes",
        "about",
        "into",
        "over",
        "under",
        "up",
        "out",
        "any",
        "some",
        "all",
        "more",
        "most",
        "such",
        "very",
        "just",
        "also",
        "only",
        "own",
        "same",
        "other",
        "too",
        "s",
        "t",
    ]
)
_JA_SKIP_POS = {"助詞", "助動詞", "補助記号", "空白", "記号"}


class _Sudachi:
    """One Sudachi tokenizer per thread (it is not thread-safe)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self):
        tok = getattr(self._local, "tok", None)
        if tok is None:
            from sudachipy import Dictionary, SplitMode

            tok = Dictionary(dict="core").tokenizer(mode=SplitMode.A)
            self._local.tok = tok
        return tok


_SUDACHI = _Sudachi()


def _pieces(text: str) -> list[str]:
    pieces, current, size = [], [], 0
    for part in re.split(r"(?<=[。！？!?\n])", text):
        n = len(part.encode())
        if size + n > _SUDACHI_MAX_BYTES and current:
            pieces.append("".join(current))
            current, size = [], 0
        while n > _SUDACHI_MAX_BYTES:  # a single huge "sentence"
            cut = _SUDACHI_MAX_BYTES // 4
            pieces.append(part[:cut])
            part = part[cut:]
            n = len(part.encode())
        current.append(part)
        size += n
    if current:
        pieces.append("".join(current))
    return pieces


def _latin_terms(text: str) -> list[str]:
    """Lower-case words minus stop words, stemmed ("models" -> "model", "reasoning" -> "reason")."""
    return [stem(word) for word in ASCII_WORD.findall(text) if word not in EN_STOPWORDS]


def tokenize(text: str) -> list[str]:
    """BM25 terms: Sudachi (mode A) normalised forms for Japanese, lower-cased words for Latin script."""
    return list(tokenize_cached(text)) if len(text) <= _CACHED_TEXT_CHARS else _tokenize(text)


_CACHED_TEXT_CHARS = 600  # an answer tokenises its question and its evidence sentences several times: cache short texts


@lru_cache(maxsize=4096)
def tokenize_cached(text: str) -> tuple[str, ...]:
    """``tokenize`` as a tuple, cached whatever the length (the one cache: ``tokenize`` reads short texts from it;
    the decision engine re-reads whole questions through it)."""
    return tuple(_tokenize(text))


def _tokenize(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", text).lower()
    if not CJK.search(text):
        return _latin_terms(text)
    terms: list[str] = []
    tok = _SUDACHI.get()
    for piece in _pieces(text):
        for m in tok.tokenize(piece):
            if m.part_of_speech()[0] in _JA_SKIP_POS:
                continue
            surface = m.surface().strip()
            if not surface:
                continue
            if surface.isascii():
                terms.extend(_latin_terms(surface))
            else:
                terms.append(m.normalized_form().lower())
    return terms


# ------------------------------------------------------------------------------------------- sentence terms
# The sources panel marks the sentence of a cited chunk that supports the claim (shared content terms). The terms of
# every chunk's sentences are written at ingest into the chunk's metadata (``sentence_terms``), so an answer does
# not tokenise the sentences of the chunks it cites.
HIRAGANA = re.compile(r"[\u3040-\u309f]+")  # an all-hiragana token (a particle, an ending) carries no topic


@lru_cache(maxsize=8192)
def content_terms(text: str) -> frozenset[str]:
    """Tokens that carry meaning for matching a claim to a sentence (no one-letter or all-hiragana tokens)."""
    return frozenset({t for t in tokenize(text) if len(t) >= 2 and not HIRAGANA.fullmatch(t)})


def chunk_sentences(text: str) -> list[str]:
    """A chunk's sentences, line by line, in order."""
    return [s for line in text.splitlines() for s in split_sentences(line)]


def sentence_terms_field(text: str) -> str:
    """The metadata value: one line per sentence of ``chunk_sentences``, its content terms joined by spaces."""
    return "\n".join(" ".join(sorted(content_terms(s))) for s in chunk_sentences(text))


def parse_sentence_terms(field: str | None, sentences: list[str]) -> list[frozenset[str]]:
    """The content terms of each of ``sentences``: from the stored field when it has one line per sentence (terms
    never hold whitespace), else tokenised now (a chunk stored before the field existed)."""
    if field is not None:
        lines = field.split("\n")
        if len(lines) == len(sentences):
            return [frozenset(line.split()) for line in lines]
    return [content_terms(s) for s in sentences]
