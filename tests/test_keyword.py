"""ingest.keyword: BM25 scores, top-k, save/load (memory-mapped), incremental updates, the index ingest saves beside
the store, start-up without reading chunk texts, a re-ingest seen by a running retriever, SIGKILL during ingest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bot.retrieval import HybridRetriever
from ingest import keyword
from ingest.config import Settings
from ingest.keyword import KeywordIndex, Row
from ingest.pipeline import IngestReport
from ingest.store import ChunkStore
from ingest.terms import tokenize

REPO_ROOT = Path(__file__).resolve().parents[1]
CARDS = REPO_ROOT / "corpus" / "cards"
Ingest = Callable[..., IngestReport]


def rows(docs: list[list[str]], path: str = "/p", generation: str = "g1") -> list[Row]:
    return [Row(f"{path}:{generation}:{i}", path, generation, "en", "1", terms) for i, terms in enumerate(docs)]


def by_id(index: KeywordIndex, terms: list[str]) -> dict[str, float]:
    scores = index.scores(terms)
    return {index.chunk_id(i): round(float(s), 5) for i, s in enumerate(scores)}


# ---------------------------------------------------------------------------------------------- scoring
def test_scores_only_matching_documents() -> None:
    """Documents without any query term score 0; a rarer term outweighs a common one."""
    index = KeywordIndex.build(rows([["llm", "label"], ["llm", "sentiment"], ["llm", "ner"], ["cat"]]), "d")
    scores = index.scores(["sentiment"])
    assert scores[1] > 0 and scores[[0, 2, 3]].tolist() == [0, 0, 0]
    both = index.scores(["llm", "sentiment"])
    assert both[1] > both[0] > 0
    assert index.scores(["sentiment"])[1] > index.scores(["llm"])[1]  # idf: rare term weighs more


def test_unknown_terms_repeats_and_empty_index() -> None:
    """Unknown terms give zeros; repeated query terms count once; an empty index scores to an empty array."""
    index = KeywordIndex.build(rows([["a", "b"], ["b"]]), "d")
    assert index.scores(["zzz"]).tolist() == [0.0, 0.0] and index.scores([]).tolist() == [0.0, 0.0]
    assert np.allclose(index.scores(["a", "a", "a"]), index.scores(["a"]))
    empty = KeywordIndex.build([], "d")
    assert empty.scores(["a"]).shape == (0,) and empty.top(["a"], 5) == [] and len(empty) == 0


def test_length_normalisation() -> None:
    """The same term count in a longer document scores lower (b > 0)."""
    index = KeywordIndex.build(rows([["x", "y"], ["x", "y", "z", "w", "v", "u"], ["q"]]), "d")
    scores = index.scores(["x"])
    assert scores[0] > scores[1] > 0


def test_top_is_best_first_positive_only_and_ties_by_row() -> None:
    """top(k) returns the k best rows with a score > 0, best first, equal scores in row order."""
    docs = [["a"], ["b"], ["a", "b"], ["c"], ["a"], ["a", "a", "b"]]
    index = KeywordIndex.build(rows(docs), "d")
    scores = index.scores(["a", "b"])
    expected = sorted((i for i in range(len(docs)) if scores[i] > 0), key=lambda i: (-scores[i], i))
    assert [r for r, _ in index.top(["a", "b"], 10)] == expected
    assert [r for r, _ in index.top(["a", "b"], 2)] == expected[:2]
    assert 3 not in [r for r, _ in index.top(["a", "b"], 10)]


# ---------------------------------------------------------------------------------------------- disk and updates
def test_save_load_is_memory_mapped_and_equal(tmp_path: Path) -> None:
    """A saved index loads memory-mapped with the same scores, languages and sections; saving prunes old ones."""
    index = KeywordIndex.build(
        [Row("1", "/a", "g", "en", "4.1", ["sentiment", "label"]), Row("2", "/b", "g", "ja", "5", ["感情", "分析"])],
        "digest1")
    folder = index.save(tmp_path)
    assert folder == tmp_path / "digest1" and not list(tmp_path.glob(".tmp-*"))
    loaded = KeywordIndex.load(folder)
    assert isinstance(loaded.a["w_data"], np.memmap) and isinstance(loaded.a["ids"], np.memmap)
    assert by_id(loaded, ["感情", "label"]) == by_id(index, ["感情", "label"])
    assert loaded.languages == ["en", "ja"] and loaded.sections == ["4.1", "5"]
    for n in (2, 3):
        KeywordIndex.build(rows([["x"]]), f"digest{n}").save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digest2", "digest3"]
    assert keyword.find(tmp_path, "digest3") is not None and keyword.find(tmp_path, "digest1") is None


def test_rows_of_finds_held_ids_and_none_for_others(tmp_path: Path) -> None:
    """``rows_of`` maps chunk ids to rows (any order, memory-mapped or not) and gives None for ids the index does
    not hold, including a prefix of a held id and one longer than every held id; ``lang`` reads the row's language."""
    index = KeywordIndex.build(
        [Row("c", "/a", "g", "en", "1", ["x"]), Row("a", "/a", "g", "ja", "1", ["y"]),
         Row("bb", "/b", "g", "en", "2", ["z"])], "d")
    for opened in (index, KeywordIndex.load(index.save(tmp_path))):
        assert opened.rows_of(["bb", "zz", "a", "b", "bbb", "c"]) == [2, None, 1, None, None, 0]
        assert [opened.lang(r) for r in (0, 1, 2)] == ["en", "ja", "en"]
        assert opened.langs_of([2, None, 1, 0]) == ["en", None, "ja", "en"]
        assert opened.langs_of([None]) == [None] and opened.langs_of([]) == []
    assert KeywordIndex.build([], "e").rows_of(["a"]) == [None]


def vec_rows(n: int, path: str, generation: str, seed: int) -> list[Row]:
    vectors = np.random.default_rng(seed).normal(size=(n, 4)).astype(np.float32)
    return [Row(f"{path}:{generation}:{i}", path, generation, "en", "1", ["t"], vectors[i]) for i in range(n)]


def test_vectors_are_kept_row_aligned_through_updates_and_saves(tmp_path: Path) -> None:
    """The rows' vectors are stored with the index, stay aligned with their chunk ids through an update (kept,
    added and fetched rows) and a save/load (memory-mapped); a row without a vector makes the index hold none."""
    a1, b1, a2, c1 = vec_rows(3, "/a", "1", 0), vec_rows(2, "/b", "1", 1), vec_rows(2, "/a", "2", 2), vec_rows(
        1, "/c", "1", 3)
    base = KeywordIndex.build(a1 + b1, "old")
    assert base.vectors is not None and base.vectors.shape == (5, 4)
    new = base.updated({"/a": "2", "/b": "1", "/c": "1"}, "new", a2, lambda groups: c1)
    loaded = KeywordIndex.load(new.save(tmp_path))
    assert isinstance(loaded.a["vectors"], np.memmap)
    expected = {r.chunk_id: r.vector for r in b1 + a2 + c1}
    for index in (new, loaded):
        assert len(index) == 5 and index.vectors.shape == (5, 4)
        for row in range(len(index)):
            assert np.array_equal(index.vectors[row], expected[index.chunk_id(row)])
    unknown = [Row("/d:1:0", "/d", "1", "en", "1", ["t"])]
    assert base.updated({"/a": "1", "/b": "1", "/d": "1"}, "mixed", unknown, lambda groups: []).vectors is None
    assert KeywordIndex.build(unknown, "none").vectors is None and KeywordIndex.build([], "empty").vectors is None


def test_update_keeps_live_rows_drops_stale_and_fetches_only_missing() -> None:
    """updated() equals a fresh build of the same live rows; only generations it lacks are fetched."""
    a1, b1 = rows([["x", "y"], ["y"]], "/a", "1"), rows([["z"], ["x", "z"]], "/b", "1")
    a2, c1 = rows([["y", "w"]], "/a", "2"), rows([["x", "x", "q"]], "/c", "1")
    base = KeywordIndex.build(a1 + b1, "old")
    fetched: list = []

    def fetch(groups):
        fetched.extend(groups)
        return [r for r in c1 if (r.source_path, r.generation) in groups]

    new = base.updated({"/a": "2", "/b": "1", "/c": "1"}, "new", a2, fetch)
    assert fetched == [("/c", "1")], "only the generation neither kept nor given is read"
    fresh = KeywordIndex.build(b1 + a2 + c1, "new")
    for terms in (["x"], ["y", "w"], ["z", "q"]):
        assert by_id(new, terms) == by_id(fresh, terms)
    assert sorted(new.groups) == [("/a", "2"), ("/b", "1"), ("/c", "1")] and new.digest == "new"
    assert "/a:1:0" not in by_id(new, ["x"]) and len(new) == 4


# ---------------------------------------------------------------------------------------------- with a real store
def live_ids(store: ChunkStore) -> set[str]:
    return {c.id for c in store.iter_chunks()}


def index_ids(index: KeywordIndex) -> set[str]:
    return {index.chunk_id(i) for i in range(len(index))}


def test_ingest_saves_the_index_of_the_store_state(real_docs: Path, make_settings: Callable[..., Settings],
                                                   ingest: Ingest) -> None:
    """After ingest the index named by the store's digest holds exactly the live chunks; an edit makes a new one."""
    settings = make_settings()
    ingest(settings, [real_docs])
    store = ChunkStore(settings)
    _, digest = store.live_state()
    saved = keyword.find(settings.keyword_dir, digest)
    assert saved is not None and index_ids(saved) == live_ids(store) and len(saved) > 0
    doc = next(real_docs.glob("anyscale*"))
    doc.write_text(doc.read_text(encoding="utf-8") + "\n\nA new paragraph about zebrafinetuning.\n", encoding="utf-8")
    ingest(settings, [real_docs])
    _, digest2 = store.live_state()
    again = keyword.find(settings.keyword_dir, digest2)
    assert digest2 != digest and again is not None and index_ids(again) == live_ids(store)
    assert again.top(tokenize("zebrafinetuning"), 3), "the new text is in the new index"


class Spy:
    """Wraps a Chroma collection and records every get/query call."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, []

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if name in ("get", "query", "peek"):
            def record(*args, **kwargs):
                self.calls.append((name, kwargs))
                return attr(*args, **kwargs)
            return record
        return attr


def test_startup_reads_no_chunk_texts(real_docs: Path, make_settings: Callable[..., Settings], ingest: Ingest,
                                      embedder) -> None:
    """Opening a retriever touches only the manifest, never the chunk collection; ranking a small store reads
    nothing from it (dense search runs over the index's vectors); the texts of the hits asked for are read by id.
    On a larger store the dense queries return ids and distances only."""
    settings = make_settings()
    ingest(settings, [real_docs])
    store = ChunkStore(settings)
    spy = Spy(store.chunks)
    store.chunks = spy
    retriever = HybridRetriever(store, embedder)
    assert spy.calls == [], f"start-up read the chunk collection: {spy.calls}"
    assert len(retriever.chunks) == len(live_ids(ChunkStore(settings))) > 0 and spy.calls == []
    ranking = retriever.rank("fine-tuning teaches form, not facts", per_list=4)
    assert ranking.ranked and spy.calls == [], f"ranking a small store read the collection: {spy.calls}"
    hits = ranking.hits(5)
    assert hits
    gets = [kw for name, kw in spy.calls if name == "get"]
    assert gets and all(kw.get("ids") and len(kw["ids"]) <= 5 for kw in gets), gets
    assert {hit.chunk.id for hit in hits} <= {i for kw in gets for i in kw["ids"]}
    spy.calls.clear()
    retriever.exact_dense_max_chunks = 0  # a store too large for the exact in-memory search: Chroma is queried
    assert retriever.search("fine-tuning teaches form, not facts", k=5, per_list=4)
    queries = [kw for name, kw in spy.calls if name == "query"]
    assert queries and all(kw["include"] == ["distances"] for kw in queries), queries
    assert all(kw.get("where") is None or "lang" in json.dumps(kw["where"]) for kw in queries)


def test_reingest_is_seen_by_a_running_retriever(real_docs: Path, make_settings: Callable[..., Settings],
                                                 ingest: Ingest, embedder) -> None:
    """A retriever opened before a re-ingest finds the new document afterwards, without a restart."""
    settings = make_settings()
    ingest(settings, [real_docs])
    retriever = HybridRetriever(ChunkStore(settings), embedder, check_interval=0.0)
    assert not [h for h in retriever.search("quokkavector", k=5) if "bm25" in h.ranks]
    (real_docs / "new.md").write_text("# Quokka\n\nThe quokkavector method stores quokkas.\n", encoding="utf-8")
    ingest(settings, [real_docs])
    hits = [h for h in retriever.search("quokkavector", k=5) if "bm25" in h.ranks]
    assert hits and "quokkavector" in hits[0].chunk.text
    assert index_ids(retriever.index) == live_ids(ChunkStore(settings))


# ---------------------------------------------------------------------------------------------- SIGKILL
DYING_INGEST = """
import os, signal, sys
import numpy as np
real_save, calls = np.save, [0]
def dying_save(*args, **kwargs):
    calls[0] += 1
    if calls[0] == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)  # half-way through writing the keyword index
    return real_save(*args, **kwargs)
np.save = dying_save
from ingest.__main__ import main
sys.exit(main([sys.argv[1], "--quiet"]))
"""
STATE = """
import json
from ingest import keyword
from ingest.config import get_settings
from ingest.store import ChunkStore
store = ChunkStore(get_settings())
live, digest = store.live_state()
from bot.retrieval import HybridRetriever
from ingest.embeddings import load_embedder
retriever = HybridRetriever(store, load_embedder(get_settings(), progress=False))  # may save the current index
root = get_settings().keyword_dir
folders = {}
for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
    index = keyword.KeywordIndex.load(folder)
    groups = sorted(map(list, index.groups))
    folders[folder.name] = {"groups": groups, "ids": sorted(index.chunk_id(i) for i in range(len(index)))}
print(json.dumps({"live": sorted(map(list, live.items())), "digest": digest, "folders": folders,
                  "live_ids": sorted(c.id for c in store.iter_chunks()),
                  "retriever_ids": sorted(retriever.index.chunk_id(i) for i in range(len(retriever.index)))}))
"""


def test_sigkill_while_writing_the_index_leaves_old_or_new(tmp_path: Path, model_cache_dir: Path) -> None:
    """`python -m ingest` SIGKILLed half-way through writing the keyword index (after its manifest commits): on disk
    only the complete index of the state before the run is in place, never a mix; a retriever opened after the kill
    serves exactly the live chunks of the new state and saves that index; the half-written folder is removed."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, rel in enumerate(["en/yang2023harnessing/5.1-cost.md", "ja/yang2023harnessing/5.1-cost.md"]):
        (docs / f"card{i}.md").write_bytes((CARDS / rel).read_bytes())
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOTCHI_")}
    env.update(DOTCHI_STORE_PATH=str(tmp_path / "store"), DOTCHI_COLLECTION="killtest",
               DOTCHI_MODEL_CACHE_DIR=str(model_cache_dir), HF_HUB_OFFLINE="1", ANONYMIZED_TELEMETRY="False")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=900, check=False)

    def state() -> dict:
        got = run("-c", STATE)
        assert got.returncode == 0, got.stderr[-3000:]
        return json.loads(got.stdout)

    assert run("-m", "ingest", str(docs), "--quiet").returncode == 0
    before = state()
    assert list(before["folders"]) == [before["digest"]]
    (docs / "card0.md").write_text((docs / "card0.md").read_text(encoding="utf-8") + "\n\nRound two.\n",
                                   encoding="utf-8")
    (docs / "card2.md").write_bytes((CARDS / "en/msgenai02/rag.md").read_bytes())
    killed = run("-c", DYING_INGEST, str(docs), "4")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    root = tmp_path / "store-keyword" / "local" / "killtest"
    assert list(root.glob(".tmp-*")) and [p.name for p in root.iterdir() if not p.name.startswith(".")] == [
        before["digest"]], "the kill hit the write of the new index; only the old complete one is in place"
    after = state()  # its retriever saves the index of the new state
    assert after["digest"] != before["digest"], "the kill came after the manifest commits"
    assert set(after["folders"]) == {before["digest"], after["digest"]}
    assert after["folders"][before["digest"]]["ids"] == before["live_ids"], "the old index is the old state, whole"
    assert after["folders"][after["digest"]]["ids"] == after["live_ids"] == after["retriever_ids"], (
        "a retriever opened after the kill serves exactly the live chunks, and saves that index")
    assert after["folders"][after["digest"]]["groups"] == after["live"]
    assert not list(root.glob(".tmp-*")), "the dead write is cleaned up"
