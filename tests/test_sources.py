"""ingest.sources: the one sources.toml reader (fetch and the answer service's citations both use it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot import knowledge
from ingest import fetch
from ingest.sources import SourcesError, load_sources

CORPUS = Path(__file__).resolve().parents[1] / "corpus"


def test_reads_every_source_with_fetch_urls_and_remarks() -> None:
    sources = load_sources(CORPUS / "sources.toml")
    survey = sources["yang2023harnessing"]
    assert survey.cite_as == "Yang et al. (2023)" and survey.remarks["5"] == "4.4"
    assert survey.fetch_url.startswith("https://")
    assert [s.doc_id for s in fetch.read_sources(CORPUS / "sources.toml")] == [
        s.doc_id for s in sources.values() if s.fetch_url
    ]


def test_one_reader() -> None:
    assert knowledge.load_sources is load_sources and fetch.load_sources is load_sources


@pytest.mark.parametrize("text", ['[[sources]]\ntitle = "no id"\n', "sources = 3\n", "[[sources]\n"])
def test_malformed_file_names_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "sources.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SourcesError, match="sources.toml"):
        load_sources(path)
    with pytest.raises(fetch.FetchError, match="sources.toml"):
        fetch.read_sources(path)
