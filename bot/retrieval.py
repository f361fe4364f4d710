"""Hybrid retrieval: dense (Chroma, searched once per corpus language) + BM25 (Sudachi terms, the keyword index
ingest saved beside the store), fused with RRF.

Searching each language separately and fusing keeps a Japanese question from only ever seeing Japanese chunks
(multilingual-e5 ranks same-language passages first), so JA→EN and EN→JA retrieval both work.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from bot.text import tokenize
from ingest import keyword
from ingest.embeddings import Embedder, QueryEncoding
from ingest.keyword import KeywordIndex
from ingest.store import ChunkStore, StoredChunk

QUERY_CACHE_SIZE = 64  # query embeddings kept (a chat's earlier turns are re-read on each turn)


@dataclass
class Hit:
    chunk: StoredChunk
    score: float  # fused RRF score
    dense: float = 0.0  # best cosine similarity seen for this chunk
    bm25: float = 0.0
    ranks: dict[str, int] = field(default_factory=dict)


@dataclass
class Ranking:
    """Chunk ids best first with their fused scores; ``hits`` reads the texts of the best ones."""

    cache: ChunkCache
    ranked: list[str]
    fused: dict[str, list]  # chunk id -> [score, dense, bm25, ranks]

    def top_dense(self, k: int) -> float:
        """The best cosine similarity among the ``k`` best-ranked chunks (0 when there are none)."""
        return max((self.fused[cid][1] for cid in self.ranked[:k]), default=0.0)

    def hits(self, k: int) -> list[Hit]:
        """The ``k`` best chunks with their texts; a chunk deleted since the index was opened (a re-ingest) is
        skipped and the next one taken."""
        hits: list[Hit] = []
        ranked = self.ranked
        while len(hits) < k and ranked:
            wanted, ranked = ranked[: k - len(hits)], ranked[k - len(hits):]
            hits += [Hit(chunk, *self.fused[chunk.id]) for chunk in self.cache.get(wanted)]
        return hits


class LiveChunks(Sequence[StoredChunk]):
    """The live chunks in keyword-index row order. ``len()`` comes from the index; the texts are read from the store
    only when the sequence is iterated or indexed (eval, bench, tests) — the answer path never does that."""

    def __init__(self, store: ChunkStore, index: KeywordIndex) -> None:
        self.store, self.index = store, index
        self._chunks: list[StoredChunk] | None = None
        self._lock = threading.Lock()

    def _all(self) -> list[StoredChunk]:
        with self._lock:
            if self._chunks is None:
                ids = [self.index.chunk_id(i) for i in range(len(self.index))]
                self._chunks = [c for start in range(0, len(ids), 5000)
                                for c in self.store.get_chunks(ids[start : start + 5000])]
            return self._chunks

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item):  # type: ignore[override]
        return self._all()[item]

    def __iter__(self) -> Iterator[StoredChunk]:
        return iter(self._all())

    def __eq__(self, other: object) -> bool:
        return list(self) == other if isinstance(other, list) else NotImplemented


class SectionChunks:
    """The live chunks of one document's sections with their vectors, fetched from the store the first time a
    section is asked for and then searched exactly in memory: the evidence an answer cites comes from a handful
    of the flow document's sections, and a filtered Chroma query per section cost ~3 ms each."""

    def __init__(self, store: ChunkStore, live: dict[str, str]) -> None:
        self.store, self.live = store, live
        self._found: dict[tuple[str, str], tuple[list[StoredChunk], np.ndarray]] = {}
        self._lock = threading.Lock()

    def _section(self, doc_id: str, section: str) -> tuple[list[StoredChunk], np.ndarray]:
        key = (doc_id, section)
        found = self._found.get(key)
        if found is None:
            with self._lock:
                found = self._found.get(key)
                if found is None:
                    chunks, vectors = self.store.section_chunks(doc_id, section, self.live)
                    found = self._found[key] = (chunks, vectors)
        return found

    def best(
        self, vector: np.ndarray, doc_id: str, sections: Sequence[str], k: int, lang: str | None = None
    ) -> list[tuple[StoredChunk, float]]:
        """The ``k`` chunks (of ``lang`` when given) most similar to ``vector`` in the given sections."""
        chunks: list[StoredChunk] = []
        rows: list[np.ndarray] = []
        for section in sections:
            found, vectors = self._section(doc_id, section)
            for chunk, row in zip(found, vectors, strict=True):
                if lang is None or chunk.metadata.get("lang") == lang:
                    chunks.append(chunk)
                    rows.append(row)
        if not chunks:
            return []
        sims = np.einsum("ij,j->i", np.vstack(rows), np.asarray(vector, dtype=np.float32))
        order = sorted(range(len(chunks)), key=lambda i: (-float(sims[i]), chunks[i].id))[:k]
        return [(chunks[i], float(sims[i])) for i in order]


def exact_dense_by_language(
    index: KeywordIndex, vectors: np.ndarray, vector: np.ndarray, per_list: int
) -> dict[str, list[tuple[str, float]]]:
    """The best ``per_list`` rows of each language by cosine similarity (the vectors are unit length), ties by
    row; as (chunk id, similarity)."""
    sims = np.asarray(vectors @ np.asarray(vector, dtype=np.float32))
    codes = np.asarray(index.a["row_lang"])
    out: dict[str, list[tuple[str, float]]] = {}
    for code, lang in enumerate(index.meta["langs"]):
        rows = np.flatnonzero(codes == code)
        if not len(rows):
            continue
        if len(rows) > per_list:
            rows = rows[np.argpartition(-sims[rows], per_list - 1)[:per_list]]
        rows = rows[np.lexsort((rows, -sims[rows]))]
        out[lang] = [(index.chunk_id(int(r)), float(sims[r])) for r in rows]
    return out


class ChunkCache:
    """The chunks the last searches returned, by id (at most ``size``, least recently used dropped): the same
    passages come back question after question, and a store read costs more than the rest of the fusion. One
    cache per store state, so a re-ingest never serves an old chunk."""

    def __init__(self, store: ChunkStore, size: int = 2048) -> None:
        self.store, self.size = store, size
        self._chunks: OrderedDict[str, StoredChunk] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, ids: list[str]) -> list[StoredChunk]:
        """The chunks with these ids, in the order given (ids not in the store are skipped)."""
        with self._lock:
            missing = [i for i in ids if i not in self._chunks]
        fetched = {c.id: c for c in self.store.get_chunks(missing)} if missing else {}
        with self._lock:
            self._chunks.update(fetched)
            found = [c for i in ids if (c := self._chunks.get(i)) is not None]
            for chunk in found:
                self._chunks.move_to_end(chunk.id)
            while len(self._chunks) > self.size:
                self._chunks.popitem(last=False)
        return found


@dataclass(frozen=True)
class _View:
    """What one search reads: the keyword index and the live-generation map of one store state."""

    digest: str
    live: dict[str, str]
    index: KeywordIndex
    chunks: LiveChunks
    sections: SectionChunks
    cache: ChunkCache


class HybridRetriever:
    """Opens the keyword index ingest saved for the store's current state (nothing is re-tokenised or read in
    full); dense search goes to Chroma each time. A new store state (a re-ingest) is picked up by the next search
    after ``check_interval`` seconds, without a restart."""

    def __init__(
        self,
        store: ChunkStore,
        embedder: Embedder,
        rrf_k: int = 60,
        per_list: int = 20,
        check_interval: float = 5.0,
        dense_filter_max_chunks: int = 5_000,
        exact_dense_max_chunks: int = 5_000,
    ) -> None:
        """``rrf_k``, ``per_list``, ``dense_filter_max_chunks``, ``exact_dense_max_chunks``: the Settings fields of
        those names (``per_list``: retrieval_per_list); ``check_interval``: seconds between checks for a
        re-ingested store."""
        self.store = store
        self.embedder = embedder
        self.rrf_k = rrf_k
        self.per_list = per_list
        self.dense_filter_max_chunks = dense_filter_max_chunks
        self.exact_dense_max_chunks = exact_dense_max_chunks
        self.check_interval = check_interval
        self._lock = threading.Lock()
        self._vectors_lock = threading.Lock()
        self._query_vectors: dict[str, QueryEncoding] = {}
        self.token_layer = -1  # the hidden layer whose token vectors encodings keep (set by the reader's needs)
        self._checked = 0.0
        self.refresh()

    def refresh(self, state: tuple[dict[str, str], str] | None = None) -> None:
        """Re-read the store's state and open its keyword index (after an ingest)."""
        live, digest = state or self.store.live_state()
        index = keyword.sync(self.store, state=(live, digest))
        self._view = _View(digest, live, index, LiveChunks(self.store, index), SectionChunks(self.store, live),
                           ChunkCache(self.store))
        self._checked = time.monotonic()

    def refresh_if_changed(self) -> bool:
        """Switch to the store's current state when it changed since the last look; True when it did."""
        with self._lock:
            self._checked = time.monotonic()
            state = self.store.live_state()
            if state[1] == self._view.digest:
                return False
            self.refresh(state)
            return True

    def _current(self) -> _View:
        if time.monotonic() - self._checked >= self.check_interval:
            self.refresh_if_changed()
        return self._view

    # Attributes of the current view, for callers of the earlier retriever.
    live = property(lambda self: self._view.live)
    bm25 = property(lambda self: self._view.index)
    index = property(lambda self: self._view.index)
    chunks = property(lambda self: self._view.chunks)
    languages = property(lambda self: self._view.index.languages or ["en"])
    sections = property(lambda self: self._view.index.sections)

    @property
    def by_id(self) -> dict[str, int]:
        index = self._view.index
        return {index.chunk_id(i): i for i in range(len(index))}

    def encode_query(self, question: str) -> QueryEncoding:
        """The query embedding with its token vectors of hidden layer ``token_layer`` (what the learned reader
        pools its sentence vectors from: one forward pass serves both); the last few are kept, since a chat
        re-reads its earlier turns."""
        with self._vectors_lock:
            found = self._query_vectors.get(question)
        if found is None or found.layer != self.token_layer:
            found = self.embedder.encode_query_tokens([question], self.token_layer)[0]
            for array in (found.vector, found.tokens, found.offsets):
                array.setflags(write=False)  # shared by every caller that asks again: never changed in place
            with self._vectors_lock:
                self._query_vectors[question] = found
                while len(self._query_vectors) > QUERY_CACHE_SIZE:
                    self._query_vectors.pop(next(iter(self._query_vectors)))
        return found

    def embed_query(self, question: str) -> np.ndarray:
        """The query embedding (cached with its token vectors, see ``encode_query``)."""
        return self.encode_query(question).vector

    def search(
        self,
        question: str,
        k: int = 8,
        extra_terms: list[str] | None = None,
        vector: np.ndarray | None = None,
        per_list: int | None = None,
    ) -> list[Hit]:
        """Fuse dense-per-language and BM25 rankings with reciprocal rank fusion; the best ``k`` with their texts."""
        return self.rank(question, extra_terms, vector, per_list).hits(k)

    def rank(
        self,
        question: str,
        extra_terms: list[str] | None = None,
        vector: np.ndarray | None = None,
        per_list: int | None = None,
    ) -> Ranking:
        """The fused ranking of chunk ids (no texts read yet: an answer that cites none never fetches them)."""
        view = self._current()
        fused: dict[str, list] = {}  # chunk id -> [score, dense, bm25, ranks]
        if not len(view.index):
            return Ranking(view.cache, [], fused)
        vector = self.embed_query(question) if vector is None else vector
        per_list = per_list or self.per_list

        def add(chunk_id: str, rank: int, source: str, dense: float = 0.0, bm25: float = 0.0) -> None:
            entry = fused.setdefault(chunk_id, [0.0, 0.0, 0.0, {}])
            entry[0] += 1.0 / (self.rrf_k + rank)
            entry[1], entry[2] = max(entry[1], dense), max(entry[2], bm25)
            entry[3][source] = rank

        for lang, found in self.dense_ids_by_language(view, vector, per_list).items():
            for rank, (chunk_id, sim) in enumerate(found, start=1):
                add(chunk_id, rank, f"dense_{lang}", dense=sim)
        for rank, (row, score) in enumerate(view.index.top(tokenize(question) + list(extra_terms or []), per_list), 1):
            add(view.index.chunk_id(row), rank, "bm25", bm25=score)
        ranked = sorted(fused, key=lambda cid: -fused[cid][0])  # stable: ties keep the order the lists gave
        return Ranking(view.cache, ranked, fused)

    def dense_ids_by_language(
        self, view: _View, vector: np.ndarray, per_list: int
    ) -> dict[str, list[tuple[str, float]]]:
        """The best ``per_list`` live chunk ids of each corpus language with their cosine similarity. One
        unfiltered query for ``4 x per_list`` per language (``2 x`` on a large store), split by language; on a
        store of at most ``dense_filter_max_chunks`` live chunks, a language left short gets its own filtered
        query, so each list is what a filtered query gives (a language with ``per_list`` hits in the merged list
        has its best ones there), up to the approximate index ordering a near-tie at the tail differently. On a
        larger store a short language just has a shorter list (BM25 still ranks it). Chroma returns ids and
        distances only; liveness and language come from the keyword index of the same view.

        A store of at most ``exact_dense_max_chunks`` live chunks whose index holds the rows' vectors is searched
        exactly in memory instead (one product with the memory-mapped vectors, no Chroma call): the lists are
        what the filtered queries approximate."""
        languages = view.index.languages or ["en"]
        vectors = view.index.vectors if len(view.index) <= self.exact_dense_max_chunks else None
        if vectors is not None and vectors.shape[1] == len(vector):
            return exact_dense_by_language(view.index, vectors, vector, per_list)
        out: dict[str, list[tuple[str, float]]] = {lang: [] for lang in languages}

        def keep(found: list[tuple[str, float]]) -> None:
            langs = view.index.langs_of(view.index.rows_of([c for c, _ in found]))
            for (chunk_id, sim), lang in zip(found, langs, strict=True):
                kept = out.get(lang) if lang is not None else None
                if kept is not None and len(kept) < per_list and (chunk_id, sim) not in kept:
                    kept.append((chunk_id, sim))

        small = len(view.index) <= self.dense_filter_max_chunks
        # Deeper on a small store: with 2x, one language came up short for 98 % of the dev questions (a question
        # pulls its own language's chunks up), and each fallback query costs as much as the merged one.
        n = per_list * (4 if small else 2) * len(languages)
        found = self.store.query_ids(vector, n)
        keep(found)
        if len(found) == n and small:
            for lang in languages:
                if len(out[lang]) < per_list:
                    out[lang] = []
                    keep(self.store.query_ids(vector, per_list * 2, where={"lang": lang}))
        return out

    def dense(self, vector: np.ndarray, k: int, where: dict | None = None) -> list[tuple[StoredChunk, float]]:
        return self.store.query(vector, k, live=self._current().live, where=where)

    def sections_under(self, section: str) -> list[str]:
        return [s for s in self.sections if s == section or s.startswith(section + ".")]

    def best_in_sections(
        self, vector: np.ndarray, sections: list[str], doc_id: str, lang: str, k: int = 1, exact: bool = False
    ) -> list[tuple[StoredChunk, float]]:
        """Best chunks of ``doc_id`` within the given sections (or under them), preferring ``lang``."""
        wanted = sorted(set(sections) if exact else {s for sec in sections for s in self.sections_under(sec)})
        if not wanted:
            return []
        view = self._current()
        found = view.sections.best(vector, doc_id, wanted, k, lang)
        if len(found) < k:
            seen = {f[0].id for f in found}
            found += [f for f in view.sections.best(vector, doc_id, wanted, k) if f[0].id not in seen]
        return found[:k]
