"""The one reader of ``corpus/sources.toml`` (every source: doc_id, title, authors, year, URL, language, remarks and
the original's ``fetch_url``), used by ``ingest --fetch`` and by the answer service's citations."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path


class SourcesError(ValueError):
    """sources.toml is missing or malformed; the message names the file (and the entry)."""


@dataclass(frozen=True)
class Source:
    doc_id: str
    title: str
    authors: tuple[str, ...] = ()
    year: int | None = None
    url: str = ""
    lang: str = "en"
    remarks: dict[str, str] = field(default_factory=dict)  # remark number -> section
    fetch_url: str = ""  # where `python -m ingest --fetch` downloads the original; empty: not fetched

    @property
    def cite_as(self) -> str:
        """Short attribution, e.g. 'Yang et al. (2023)'."""
        if len(self.authors) > 1:
            first = self.authors[0].split()[-1]
            return f"{first} et al. ({self.year})" if self.year else f"{first} et al."
        return self.title


def load_sources(path: Path) -> dict[str, Source]:
    """doc_id -> Source for every ``[[sources]]`` entry; SourcesError names the file and the faulty entry."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SourcesError(f"{path} not found; run from the repo root or set DOTCHI_CORPUS_DIR") from exc
    except (OSError, UnicodeError, tomllib.TOMLDecodeError) as exc:
        raise SourcesError(f"cannot read {path}: {exc}") from exc
    entries = data.get("sources", [])
    if not isinstance(entries, list):
        raise SourcesError(f"{path}: 'sources' must be an array of tables ([[sources]])")
    out = {}
    for i, s in enumerate(entries):
        if not isinstance(s, dict) or not s.get("doc_id") or not s.get("title"):
            raise SourcesError(f"{path}: sources[{i}] needs a 'doc_id' and a 'title'")
        doc_id = str(s["doc_id"])
        out[doc_id] = Source(
            doc_id=doc_id,
            title=str(s["title"]),
            authors=tuple(str(a) for a in s.get("authors", [])),
            year=int(s["year"]) if s.get("year") else None,
            url=str(s.get("url", "")),
            lang=str(s.get("lang", "en")),
            remarks={str(k): str(v) for k, v in (s.get("remarks") or {}).items()},
            fetch_url=str(s.get("fetch_url", "")),
        )
    return out
