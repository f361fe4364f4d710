"""ChunkStore on real Chroma (disk and a `chroma run` server): generations, manifest, cleanup, search."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import ingest.store as store_module
from ingest.config import Settings
from ingest.embeddings import Embedder
from ingest.store import SETTINGS_ID, ChunkStore, FileRecord, StoreError

TEXTS = {
    "ft": "Fine-tuned models suit sentiment analysis.",
    "ja": "感情分析にはファインチューニングしたモデルが向いている。",
    "train": "The train to Osaka leaves at nine.",
}


def put(store: ChunkStore, embedder: Embedder, path: str, generation: str, texts: list[str]) -> list[str]:
    """Write one generation of chunks for ``path`` (not committed)."""
    ids = [f"{path}:{generation}:{i}" for i in range(len(texts))]
    metas = [{"source_path": path, "generation": generation, "chunk_index": i, "doc_id": "d"}
             for i in range(len(texts))]
    store.add_chunks(ids, texts, metas, embedder.encode_documents(texts).tolist())
    return ids


def live(store: ChunkStore) -> set[str]:
    return {c.id for c in store.iter_chunks()}


@pytest.fixture
def store(make_settings: Callable[..., Settings]) -> ChunkStore:
    return ChunkStore(make_settings())


def test_manifest_record_is_the_commit_point(store: ChunkStore, embedder: Embedder) -> None:
    """Uncommitted chunks are invisible; committing switches generations; stale ones can then be deleted."""
    old = put(store, embedder, "/a.md", "h1", [TEXTS["ft"], TEXTS["train"]])
    assert live(store) == set(), "nothing is live before the first commit"
    store.commit_file(FileRecord("/a.md", "h1", "a", 2))
    assert live(store) == set(old)
    new = put(store, embedder, "/a.md", "h2", [TEXTS["ja"]])
    assert live(store) == set(old), "a written but uncommitted generation stays invisible"
    assert {c.id for c in store.iter_chunks(live_only=False)} == set(old) | set(new)
    store.commit_file(FileRecord("/a.md", "h2", "a", 1))
    assert live(store) == set(new)
    assert store.manifest() == {"/a.md": FileRecord("/a.md", "h2", "a", 1)}
    assert store.delete_stale("/a.md", "h2") == 2
    assert store.count() == 1 and live(store) == set(new)


def test_delete_stale_none_removes_all_of_one_file(store: ChunkStore, embedder: Embedder) -> None:
    a = put(store, embedder, "/a.md", "h1", [TEXTS["ft"]])
    put(store, embedder, "/b.md", "h1", [TEXTS["train"], TEXTS["ja"]])
    store.commit_file(FileRecord("/a.md", "h1", "a", 1))
    store.commit_file(FileRecord("/b.md", "h1", "b", 2))
    store.forget_file("/b.md")
    assert store.delete_stale("/b.md", None) == 2
    assert set(store.manifest()) == {"/a.md"}
    assert live(store) == set(a) and store.count() == 1


def test_delete_orphans_keeps_only_live_generations(store: ChunkStore, embedder: Embedder) -> None:
    keep = put(store, embedder, "/a.md", "h2", [TEXTS["ft"]])
    put(store, embedder, "/a.md", "h1", [TEXTS["train"]])  # old generation left by a crash
    put(store, embedder, "/gone.md", "h1", [TEXTS["ja"]])  # never committed
    store.commit_file(FileRecord("/a.md", "h2", "a", 1))
    assert store.delete_orphans(store.manifest()) == 2
    assert {c.id for c in store.iter_chunks(live_only=False)} == set(keep)


def test_paging_covers_every_chunk(store: ChunkStore, embedder: Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    """iter_chunks, add_chunks and delete_stale page through results (page size shrunk to 2)."""
    monkeypatch.setattr(store_module, "_PAGE", 2)
    texts = [f"Sentence number {i} about fine-tuning." for i in range(7)]
    ids = put(store, embedder, "/p.md", "h1", texts)
    store.commit_file(FileRecord("/p.md", "h1", "p", 7))
    got = list(store.iter_chunks())
    assert len(got) == 7 and {c.id for c in got} == set(ids)
    assert {c.text for c in got} == set(texts)
    assert store.delete_stale("/p.md", None) == 7
    assert store.count() == 0


def test_fingerprint_roundtrip_and_drop_all(store: ChunkStore, embedder: Embedder) -> None:
    assert store.stored_fingerprint() is None
    store.save_fingerprint({"chunk_size": 1200, "chunker": 3})
    assert store.stored_fingerprint() == {"chunk_size": 1200, "chunker": 3}
    put(store, embedder, "/a.md", "h1", [TEXTS["ft"]])
    store.commit_file(FileRecord("/a.md", "h1", "a", 1))
    assert SETTINGS_ID not in store.manifest()
    store.drop_all()
    assert store.count() == 0 and store.manifest() == {} and store.stored_fingerprint() is None


def test_query_ranks_by_meaning_and_hides_stale(store: ChunkStore, embedder: Embedder) -> None:
    ids = put(store, embedder, "/a.md", "h1", [TEXTS["ft"], TEXTS["train"]])
    stale = put(store, embedder, "/b.md", "old", [TEXTS["ja"]])
    store.commit_file(FileRecord("/a.md", "h1", "a", 2))
    store.commit_file(FileRecord("/b.md", "new", "b", 0))
    vector = embedder.encode_queries(["感情分析に向いているモデルは？"])[0]
    everything = store.query(vector, k=3)
    assert everything[0][0].id == stale[0], "the Japanese chunk is nearest to the Japanese question"
    assert all(-1.0 <= score <= 1.0 for _, score in everything)
    assert everything[0][1] > everything[-1][1]
    live_map = {p: r.file_hash for p, r in store.manifest().items()}
    filtered = store.query(vector, k=3, live=live_map)
    assert [c.id for c, _ in filtered] == [ids[0], ids[1]]


def test_persists_across_clients(make_settings: Callable[..., Settings], embedder: Embedder) -> None:
    """A fresh ChunkStore on the same path sees the committed data."""
    first = ChunkStore(make_settings())
    ids = put(first, embedder, "/a.md", "h1", [TEXTS["ft"]])
    first.commit_file(FileRecord("/a.md", "h1", "a", 1))
    again = ChunkStore(make_settings())
    assert live(again) == set(ids)
    assert ChunkStore(make_settings(collection="othercoll")).count() == 0


def test_unreachable_server_is_a_store_error(make_settings: Callable[..., Settings], unused_port: int) -> None:
    settings = make_settings(chroma_host="127.0.0.1", chroma_port=unused_port)
    with pytest.raises(StoreError, match="DOTCHI_CHROMA_HOST"):
        ChunkStore(settings)


def test_unusable_store_path_is_a_store_error(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x", encoding="utf-8")
    with pytest.raises(StoreError, match="DOTCHI_STORE_PATH"):
        ChunkStore(make_settings(store_path=blocker / "chroma"))


def test_server_store_generations(chroma_server: tuple[str, int], make_settings: Callable[..., Settings],
                                  embedder: Embedder) -> None:
    """The same commit-point semantics hold against a `chroma run` server."""
    host, port = chroma_server
    settings = make_settings(chroma_host=host, chroma_port=port, collection="storeserver")
    store = ChunkStore(settings)
    old = put(store, embedder, "/a.md", "h1", [TEXTS["ft"]])
    store.commit_file(FileRecord("/a.md", "h1", "a", 1))
    put(store, embedder, "/a.md", "h2", [TEXTS["train"]])
    fresh = ChunkStore(settings)
    assert live(fresh) == set(old) and fresh.count() == 2
    assert fresh.delete_orphans(fresh.manifest()) == 1
    assert live(ChunkStore(settings)) == set(old) and ChunkStore(settings).count() == 1
