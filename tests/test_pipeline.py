"""run_ingest end to end on real files, the real model and real Chroma (disk and server)."""

from __future__ import annotations

import hashlib
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from fpdf import FPDF

from ingest.chunking import weighted_len
from ingest.config import Settings
from ingest.loaders import decode_text, normalize
from ingest.pipeline import IngestReport
from ingest.store import ChunkStore

Ingest = Callable[..., IngestReport]
MakeSettings = Callable[..., Settings]
META_KEYS = {"doc_id", "title", "url", "lang", "section", "heading", "source_path", "generation", "chunk_index",
             "char_start", "char_end"}
EXTRA = ("\n\n## Added later\n\nThis paragraph was appended after the first ingest, so the file must be "
         "re-embedded and its old chunks must disappear.\n")


def by_file(store: ChunkStore, live_only: bool = True) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for chunk in store.iter_chunks(live_only=live_only):
        out.setdefault(chunk.metadata["source_path"], set()).add(chunk.id)
    return out


def key(path: Path) -> str:
    return str(path.resolve())


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_clean(store: ChunkStore, files: list[Path]) -> None:
    """The store holds exactly the live chunks of ``files``: no duplicates, no orphans, no stale generations."""
    everything = list(store.iter_chunks(live_only=False))
    ids = [c.id for c in everything]
    assert len(ids) == len(set(ids)) == store.count()
    manifest = store.manifest()
    assert set(manifest) == {key(f) for f in files}
    for chunk in everything:
        record = manifest[chunk.metadata["source_path"]]
        assert chunk.metadata["generation"] == record.file_hash
    for f in files:
        assert manifest[key(f)].file_hash == sha(f)
        assert sum(1 for c in everything if c.metadata["source_path"] == key(f)) == manifest[key(f)].chunks > 0


def make_pdf(path: Path) -> Path:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    pdf.set_title("Fine-tuning memo")
    pdf.add_page()
    pdf.multi_cell(0, 8, "1 Introduction\nLarge language models handle many tasks without training data.")
    pdf.add_page()
    pdf.multi_cell(0, 8, "2.1 Fine-tuning\nSmall fine-tuned models are cheaper to serve and win on NLU benchmarks.")
    pdf.output(str(path))
    return path


def card(path: Path, doc_id: str, body: str, section: str = "4.1") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'---\ndoc_id: {doc_id}\nsection: "{section}"\ntitle: Card {doc_id}\nlang: en\n'
                    f"url: https://example.org/{doc_id}\n---\n{body}\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- happy path


def test_first_run_adds_all_second_run_changes_nothing(real_docs: Path, make_settings: MakeSettings,
                                                       ingest: Ingest) -> None:
    settings = make_settings()
    first = ingest(settings, [real_docs])
    assert (first.added_files, first.updated_files, first.removed_files, first.failed_files) == (2, 0, 0, 0)
    store = ChunkStore(settings)
    assert first.chunks_total == store.count() == first.chunks_embedded > 2
    assert_clean(store, sorted(real_docs.iterdir()))
    ids = by_file(store)

    second = ingest(settings, [real_docs])
    assert (second.added_files, second.updated_files, second.removed_files, second.failed_files) == (0, 0, 0, 0)
    assert second.unchanged_files == 2 and second.chunks_embedded == 0 and not second.rebuilt
    assert second.chunks_total == first.chunks_total
    assert by_file(ChunkStore(settings)) == ids


def test_chunk_metadata(real_docs: Path, sources_dir: Path, make_settings: MakeSettings, ingest: Ingest) -> None:
    """Every chunk carries doc/section/offset metadata; PDF chunks also carry their page."""
    shutil.copyfile(sources_dir / "ms_genai_beginners_02_improving_llm_results_ja.md", real_docs / "ja.md")
    pdf = make_pdf(real_docs / "memo.pdf")
    card(real_docs / "card.md", "yang2023harnessing", "Intro.\n\n### 4.1.1 Wins\n\nFine-tuned models win.")
    settings = make_settings()
    report = ingest(settings, [real_docs])
    assert report.added_files == 5 and report.failed_files == 0
    chunks = list(ChunkStore(settings).iter_chunks())
    assert {c.metadata["source_path"] for c in chunks} == {key(p) for p in real_docs.iterdir()}
    for chunk in chunks:
        meta = chunk.metadata
        assert set(meta) >= META_KEYS, set(meta) ^ META_KEYS
        assert meta["lang"] in ("ja", "en")
        assert meta["char_start"] < meta["char_end"]
        path = Path(meta["source_path"])
        if path.suffix == ".pdf":
            assert meta["page"] in (1, 2)
            assert meta["title"] == "Fine-tuning memo" and meta["doc_id"] == "memo"
        else:
            assert "page" not in meta
            document = normalize(decode_text(path.read_bytes()))
            assert document[meta["char_start"] : meta["char_end"]] == chunk.text

    def of(name: str) -> list:
        return [c for c in chunks if Path(c.metadata["source_path"]).name.startswith(name)]

    anyscale = of("anyscale")[0].metadata
    assert anyscale["doc_id"] == "anyscale-fine-tuning-is-for-form-not-facts-notes"
    assert anyscale["url"] == "https://www.anyscale.com/blog/fine-tuning-is-for-form-not-facts"
    assert anyscale["title"].startswith('"Fine tuning is for form, not facts" (Anyscale blog)')
    assert anyscale["lang"] == "en"
    assert {c.metadata["lang"] for c in of("ja")} == {"ja"}
    assert any("LLMの成果を向上させる" in c.metadata["heading"] for c in of("ja"))
    assert {(c.metadata["section"], c.metadata["page"]) for c in of("memo")} == {("1", 1), ("2.1", 2)}
    sections = {c.text: (c.metadata["section"], c.metadata["heading"]) for c in of("card")}
    assert sections == {"Intro.": ("4.1", ""), "Fine-tuned models win.": ("4.1.1", "4.1.1 Wins")}
    assert {c.metadata["doc_id"] for c in of("card")} == {"yang2023harnessing"}
    assert {c.metadata["source_path"] for c in of("memo")} == {key(pdf)}


def test_editing_a_file_replaces_only_its_chunks(real_docs: Path, make_settings: MakeSettings,
                                                  ingest: Ingest) -> None:
    settings = make_settings()
    ingest(settings, [real_docs])
    before = by_file(ChunkStore(settings))
    edited = next(real_docs.glob("anyscale*"))
    other = next(real_docs.glob("jingfeng*"))
    edited.write_text(edited.read_text(encoding="utf-8") + EXTRA, encoding="utf-8")

    report = ingest(settings, [real_docs])
    assert (report.added_files, report.updated_files, report.unchanged_files, report.removed_files) == (0, 1, 1, 0)
    store = ChunkStore(settings)
    after = by_file(store)
    assert after[key(other)] == before[key(other)]
    assert after[key(edited)].isdisjoint(before[key(edited)])
    all_ids = {c.id for c in store.iter_chunks(live_only=False)}
    assert not before[key(edited)] & all_ids, "old chunks of the edited file must be deleted, not just hidden"
    assert any("appended after the first ingest" in c.text for c in store.iter_chunks())
    assert_clean(store, [edited, other])


def test_deleting_a_file_removes_its_chunks(real_docs: Path, make_settings: MakeSettings, ingest: Ingest) -> None:
    settings = make_settings()
    ingest(settings, [real_docs])
    before = by_file(ChunkStore(settings))
    gone = next(real_docs.glob("jingfeng*"))
    kept = next(real_docs.glob("anyscale*"))
    gone.unlink()

    report = ingest(settings, [real_docs])
    assert (report.removed_files, report.unchanged_files, report.added_files, report.failed_files) == (1, 1, 0, 0)
    store = ChunkStore(settings)
    assert by_file(store, live_only=False) == {key(kept): before[key(kept)]}
    assert report.chunks_total == store.count() == len(before[key(kept)])
    assert_clean(store, [kept])


def test_changing_chunk_size_rebuilds(real_docs: Path, make_settings: MakeSettings, ingest: Ingest) -> None:
    big = make_settings()
    first = ingest(big, [real_docs])
    small = make_settings(chunk_size=400, chunk_overlap=50)
    report = ingest(small, [real_docs])
    assert report.rebuilt and report.added_files == 2 and report.unchanged_files == 0
    store = ChunkStore(small)
    assert store.stored_fingerprint()["chunk_size"] == 400
    assert report.chunks_total == store.count() > first.chunks_total
    assert max(weighted_len(c.text) for c in store.iter_chunks()) <= 400
    assert_clean(store, sorted(real_docs.iterdir()))
    again = ingest(small, [real_docs])
    assert not again.rebuilt and again.unchanged_files == 2 and again.added_files == 0


def test_rebuild_flag_reingests_with_same_ids(real_docs: Path, make_settings: MakeSettings, ingest: Ingest) -> None:
    settings = make_settings()
    ingest(settings, [real_docs])
    before = by_file(ChunkStore(settings))
    report = ingest(settings, [real_docs], rebuild=True)
    assert report.rebuilt and report.added_files == 2 and report.unchanged_files == 0
    assert by_file(ChunkStore(settings)) == before, "chunk ids are deterministic"


# ---------------------------------------------------------------------------------------------- failures


def test_bad_files_fail_one_by_one(real_docs: Path, tmp_path: Path, make_settings: MakeSettings,
                                   ingest: Ingest) -> None:
    """Each bad input is reported with its file name; the good files are still ingested."""
    good_pdf = make_pdf(tmp_path / "good.pdf").read_bytes()
    (real_docs / "corrupt.pdf").write_bytes(good_pdf[: len(good_pdf) // 2])
    (real_docs / "odd-filter.pdf").write_bytes(good_pdf.replace(b"/FlateDecode", b"/FlateDecodX"))
    (real_docs / "empty.md").write_bytes(b"")
    (real_docs / "binary.md").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8)
    (real_docs / "huge.md").write_text("too big " * 4000, encoding="utf-8")  # 32 kB > 0.02 MB
    missing = tmp_path / "does-not-exist.md"
    settings = make_settings(max_file_mb=0.02)

    report = ingest(settings, [real_docs, missing])
    errors = {Path(e["file"]).name: e["error"] for e in report.errors}
    assert set(errors) == {"corrupt.pdf", "odd-filter.pdf", "empty.md", "binary.md", "huge.md",
                           "does-not-exist.md"}
    assert report.failed_files == 6 and report.added_files == 2
    assert "PDF" in errors["corrupt.pdf"] and "PDF" in errors["odd-filter.pdf"]
    assert "empty" in errors["empty.md"]
    assert "binary" in errors["binary.md"]
    assert "too large" in errors["huge.md"] and "0.02 MB" in errors["huge.md"]
    assert "no such file" in errors["does-not-exist.md"]
    assert all(str(real_docs) in e["file"] or str(missing) == e["file"] for e in report.errors)
    store = ChunkStore(settings)
    assert_clean(store, sorted(real_docs.glob("*_NOTES.md")))


def test_file_that_breaks_later_keeps_its_chunks(real_docs: Path, tmp_path: Path, make_settings: MakeSettings,
                                                  ingest: Ingest) -> None:
    """A previously ingested file that becomes corrupt is reported and its old chunks stay live."""
    pdf = make_pdf(real_docs / "memo.pdf")
    md = next(real_docs.glob("anyscale*"))
    settings = make_settings()
    ingest(settings, [real_docs])
    before = by_file(ChunkStore(settings))
    count = ChunkStore(settings).count()
    md_bytes, pdf_bytes = md.read_bytes(), pdf.read_bytes()
    md.write_bytes(random.Random(0).randbytes(3000))
    pdf.write_bytes(pdf_bytes[:200])

    report = ingest(settings, [real_docs])
    assert report.failed_files == 2 and report.updated_files == 0 and report.removed_files == 0
    assert {Path(e["file"]).name for e in report.errors} == {md.name, "memo.pdf"}
    store = ChunkStore(settings)
    assert by_file(store) == before and store.count() == count

    md.write_bytes(md_bytes)
    pdf.write_bytes(pdf_bytes)
    healed = ingest(settings, [real_docs])
    assert healed.failed_files == 0 and healed.unchanged_files == 3 and healed.chunks_embedded == 0


@pytest.mark.parametrize("crash_in", ["commit_files", "delete_stale"])
def test_crash_during_replace_leaves_one_generation(crash_in: str, real_docs: Path, make_settings: MakeSettings,
                                                    ingest: Ingest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash before the commit keeps the old chunks live, after it the new ones; never a mix, never none.
    The next run leaves exactly the chunks of the current files."""
    settings = make_settings()
    ingest(settings, [real_docs])
    before = by_file(ChunkStore(settings))
    edited = next(real_docs.glob("anyscale*"))
    other = next(real_docs.glob("jingfeng*"))
    old_hash = sha(edited)
    edited.write_text(edited.read_text(encoding="utf-8") + EXTRA, encoding="utf-8")
    new_hash = sha(edited)

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash")

    with monkeypatch.context() as patch, pytest.raises(RuntimeError, match="simulated crash"):
        patch.setattr(ChunkStore, crash_in, crash)
        ingest(settings, [real_docs])

    store = ChunkStore(settings)
    live = [c for c in store.iter_chunks() if c.metadata["source_path"] == key(edited)]
    generations = {c.metadata["generation"] for c in live}
    expected = old_hash if crash_in == "commit_files" else new_hash
    assert generations == {expected}, "exactly one generation is live"
    if crash_in == "commit_files":
        assert {c.id for c in live} == before[key(edited)]
    else:
        assert {c.id for c in live}.isdisjoint(before[key(edited)])
        assert len(live) == store.manifest()[key(edited)].chunks
    assert by_file(store)[key(other)] == before[key(other)]
    assert store.count() > len(list(store.iter_chunks())), "the crash left the other generation on disk"

    report = ingest(settings, [real_docs])
    assert report.failed_files == 0
    assert report.updated_files == (1 if crash_in == "commit_files" else 0)
    store = ChunkStore(settings)
    assert_clean(store, [edited, other])
    assert report.chunks_total == store.count() == len(list(store.iter_chunks()))
    assert by_file(store)[key(other)] == before[key(other)]


# ---------------------------------------------------------------------------------------------- paths


def test_file_named_twice_is_ingested_once(real_docs: Path, make_settings: MakeSettings, ingest: Ingest) -> None:
    settings = make_settings()
    one = next(real_docs.glob("anyscale*"))
    report = ingest(settings, [real_docs, one, real_docs])
    assert report.added_files == 2 and report.failed_files == 0
    assert report.chunks_embedded == report.chunks_total == ChunkStore(settings).count()


def test_removal_only_under_the_given_roots(tmp_path: Path, make_settings: MakeSettings, ingest: Ingest) -> None:
    """A file deleted outside the folders being ingested is left alone until its own folder is ingested."""
    a = card(tmp_path / "a" / "a.md", "a", "Alpha card about prompting.")
    b = card(tmp_path / "b" / "b.md", "b", "Beta card about fine-tuning.")
    settings = make_settings()
    assert ingest(settings, [a.parent, b.parent]).added_files == 2
    b.unlink()
    only_a = ingest(settings, [a.parent])
    assert only_a.removed_files == 0 and key(b) in ChunkStore(settings).manifest()
    only_b = ingest(settings, [b.parent])
    assert only_b.removed_files == 1 and only_b.failed_files == 0
    assert_clean(ChunkStore(settings), [a])


def test_default_root_is_corpus_cards(tmp_path: Path, make_settings: MakeSettings, ingest: Ingest) -> None:
    """Without paths the corpus cards folder is ingested; hidden files and unsupported types are skipped."""
    cards = tmp_path / "corpus" / "cards"
    visible = card(cards / "en" / "yang" / "nlu.md", "yang2023harnessing", "Fine-tuned models win on NLU.")
    card(cards / "en" / ".drafts" / "wip.md", "draft", "Not ready.")
    card(cards / "en" / ".hidden.md", "hidden", "Not ready either.")
    (cards / "en" / "notes.docx").write_bytes(b"PK\x03\x04")
    settings = make_settings(corpus_dir=tmp_path / "corpus")
    report = ingest(settings, None)
    assert report.added_files == 1 and report.failed_files == 0
    assert_clean(ChunkStore(settings), [visible])


# ---------------------------------------------------------------------------------------------- server mode


def test_server_mode_ingest_is_readable_and_idempotent(chroma_server: tuple[str, int], real_docs: Path,
                                                       make_settings: MakeSettings, ingest: Ingest) -> None:
    host, port = chroma_server
    settings = make_settings(chroma_host=host, chroma_port=port, collection="serverpipeline",
                             store_path=real_docs.parent / "unused-local-store")
    first = ingest(settings, [real_docs])
    assert first.added_files == 2 and first.failed_files == 0
    fresh = ChunkStore(settings)
    assert fresh.count() == first.chunks_total == len(list(fresh.iter_chunks())) > 0
    ids = by_file(fresh)
    assert_clean(fresh, sorted(real_docs.iterdir()))
    assert not (real_docs.parent / "unused-local-store").exists(), "server mode must not write a local store"

    again = ingest(settings, [real_docs])
    assert (again.added_files, again.updated_files, again.removed_files, again.unchanged_files) == (0, 0, 0, 2)
    assert by_file(ChunkStore(settings)) == ids


def test_small_files_are_embedded_together_and_each_is_committed(tmp_path: Path, make_settings: MakeSettings,
                                                                 ingest: Ingest, embedder,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of many small files go to the model in shared batches of at least ``embed_batch_size x
    EMBED_GROUP_BATCHES`` (the last may be smaller), and every file still gets its own chunks and manifest record,
    with the vectors that embedding its own chunks alone gives."""
    import numpy as np

    from ingest.pipeline import EMBED_GROUP_BATCHES

    docs = tmp_path / "many"
    docs.mkdir()
    for i in range(12):
        (docs / f"note{i:02d}.md").write_text(f"# Note {i}\n\nSmall card number {i} about labelled data and LLMs.\n",
                                              encoding="utf-8")
    calls: list[int] = []
    encode = embedder.encode_documents
    monkeypatch.setattr(embedder, "encode_documents", lambda texts, **kw: calls.append(len(texts)) or encode(texts))
    settings = make_settings(embed_batch_size=2)
    report = ingest(settings, [docs])
    budget = 2 * EMBED_GROUP_BATCHES
    assert report.added_files == 12 and sum(calls) == report.chunks_embedded
    assert len(calls) < 12 and all(n >= budget for n in calls[:-1]), calls
    store = ChunkStore(settings)
    assert len(store.manifest()) == 12 and set(by_file(store)) == {key(p) for p in docs.iterdir()}
    got = store.chunks.get(include=["documents", "metadatas", "embeddings"])
    one = next(i for i, m in enumerate(got["metadatas"]) if m["source_path"] == key(docs / "note03.md"))
    alone = encode([f"{got['metadatas'][one]['title']}\n{got['documents'][one]}"])[0]
    assert float(np.dot(alone, got["embeddings"][one])) > 0.999
