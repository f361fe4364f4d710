"""Script and word helpers shared by ingest and bot (bot imports them; ingest never imports bot): the one CJK
character pattern, the one language detector and the one English stemmer."""

from __future__ import annotations

import functools
import re

# Character ranges (for building classes): kana (incl. half-width katakana) and Han ideographs (incl. compatibility).
KANA_RANGES = "\u3040-\u30ff\uff66-\uff9f"
HAN_RANGES = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
KANA = re.compile(f"[{KANA_RANGES}]")
HAN = re.compile(f"[{HAN_RANGES}]")
CJK = re.compile(f"[{KANA_RANGES}{HAN_RANGES}]")  # a Japanese letter: kana or Han
# Display-wide characters (Japanese letters plus CJK punctuation and full-width forms), for length weighting.
WIDE = re.compile(f"[\u3000-\u303f{KANA_RANGES}{HAN_RANGES}\uff00-\uffef]")
ASCII_WORD = re.compile(r"[a-z0-9]+")


def detect_language(text: str) -> str:
    """'ja' or 'en' for a question or a document. With kana (one particle is enough in a short question:
    「Remark 1は？」), Japanese unless Latin letters outnumber the Japanese letters more than twenty to one (a long
    English text quoting a Japanese word); Han without kana counts as Japanese when it outweighs the Latin letters
    (「感情分析」); everything else is English."""
    kana = len(KANA.findall(text))
    han = len(HAN.findall(text))
    latin = sum(1 for c in text if c.isascii() and c.isalpha())
    if kana:
        return "ja" if (kana + han) * 20 >= latin else "en"
    return "ja" if han and han * 2 >= latin else "en"


# Suffixes stripped by ``stem``, longest first; the stem keeps at least four letters.
_SUFFIXES = (
    "izations", "ization", "isation", "ations", "ation", "izing", "ising", "izes", "ises", "ized",
    "ised", "ize", "ise", "ings", "ing", "ions", "ion", "ers", "er", "ed", "es", "s", "e",
)


@functools.lru_cache(maxsize=1 << 16)
def stem(word: str) -> str:
    """A light suffix-stripping stemmer for lower-case English words ("summarizes" -> "summar", "models" ->
    "model"); words that would keep fewer than four letters stay as they are. Cached: a corpus or a chat repeats
    its words, and this was a tenth of an answer's own time."""
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            word = word[: -len(suffix)]
            break
    return word[:-1] if word.endswith("i") and len(word) > 4 else word  # "summari(es)" ~ "summar(ization)"


# ------------------------------------------------------------------------------------------------ sentences
# A sentence may end at 。 (always), or at . ! ? (plus closing quotes/brackets) before whitespace; ! and ? also
# before a Japanese letter (NFKC turns ！？ into !?).
_JA_END = re.compile(rf"[。][」』)\]]*|[!?][」』)\]]*(?=[{KANA_RANGES}{HAN_RANGES}])")
_EN_END = re.compile(r"[.!?][\"'”’)\]]*(?=\s)")
_NEXT_STARTS = re.compile(rf"\s*[\"'“‘(\[]?[A-Z0-9{KANA_RANGES}{HAN_RANGES}]")
_LAST_WORD = re.compile(r"(?:^|\s|\()(\S+)$")


def _ends_sentence(text: str, end: int, abbreviations: frozenset[str]) -> bool:
    """Whether the full stop (or ! ?) just before ``end`` closes a sentence: not after an abbreviation ("Sec.",
    "e.g.", "et al.") or an initial ("J."), and only before a capital, a digit or a Japanese letter."""
    if not _NEXT_STARTS.match(text, end):
        return False
    word = _LAST_WORD.search(text[:end].rstrip("\"'”’)]"))
    last = word.group(1).lower().lstrip("(\"'“‘[") if word else ""
    if last in abbreviations or re.fullmatch(r"\(?[a-z]\.", last):
        return False
    return not (last == "al." and text[:end].lower().rstrip().endswith("et al."))


def split_sentences(text: str, abbreviations: frozenset[str] = frozenset()) -> list[str]:
    """Whole sentences of one paragraph or item, in order (Japanese and English; abbreviations do not split)."""
    cuts = {m.end() for m in _JA_END.finditer(text)}
    cuts |= {m.end() for m in _EN_END.finditer(text) if _ends_sentence(text, m.end(), abbreviations)}
    out, start = [], 0
    for cut in sorted(cuts):
        if text[start:cut].strip():
            out.append(text[start:cut].strip())
        start = cut
    if text[start:].strip():
        out.append(text[start:].strip())
    return out
