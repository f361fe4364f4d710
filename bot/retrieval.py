"""Hybrid retrieval: dense (Chroma, searched once per corpus language) + BM25 (Sudachi terms), fused with RRF.

Searching each language separately and fusing keeps a Japanese question from only ever seeing Japanese chunks
(multilingual-e5 ranks same-language passages first), so JA→EN and EN→JA retrieval both work.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse

from bot.text import tokenize
from ingest.embeddings import Embedder
from ingest.pipeline import embedding_text_for
from ingest.store import ChunkStore, StoredChunk


@dataclass
class Hit:
    chunk: StoredChunk
    score: float  # fused RRF score
    dense: float = 0.0  # best cosine similarity seen for this chunk
    bm25: float = 0.0
    ranks: dict[str, int] = field(default_factory=dict)


class BM25Index:
    """Okapi BM25 over pre-tokenised documents; query = sum of precomputed per-term weight columns."""

    def __init__(self, docs: list[list[str]], k1: float = 1.2, b: float = 0.75) -> None:
        self.vocab: dict[str, int] = {}
        rows, cols, tfs = [], [], []
        lengths = np.zeros(len(docs), dtype=np.float32)
        for i, terms in enumerate(docs):
            lengths[i] = len(terms)
            for term, tf in Counter(terms).items():
                rows.append(i)
                cols.append(self.vocab.setdefault(term, len(self.vocab)))
                tfs.append(tf)
        n_docs = max(len(docs), 1)
        tf = sparse.csr_matrix(
            (np.array(tfs, dtype=np.float32), (rows, cols)), shape=(len(docs), max(len(self.vocab), 1))
        )
        df = np.bincount(np.array(cols, dtype=np.int64), minlength=max(len(self.vocab), 1)).astype(np.float32)
        idf = np.log(1.0 + (n_docs - df + 0.5) / (df + 0.5)).astype(np.float32)
        avgdl = float(lengths.mean()) if len(docs) else 1.0
        norm = k1 * (1 - b + b * lengths / max(avgdl, 1e-6))
        coo = tf.tocoo()
        weights = idf[coo.col] * coo.data * (k1 + 1) / (coo.data + norm[coo.row])
        self.weights = sparse.csc_matrix((weights, (coo.row, coo.col)), shape=tf.shape)
        self.n_docs = len(docs)

    def scores(self, query_terms: list[str]) -> np.ndarray:
        ids = [self.vocab[t] for t in dict.fromkeys(query_terms) if t in self.vocab]
        if not ids or self.n_docs == 0:
            return np.zeros(self.n_docs, dtype=np.float32)
        return np.asarray(self.weights[:, ids].sum(axis=1)).ravel()


class HybridRetriever:
    """Loads the live chunks once (for BM25 and section look-ups); dense search goes to Chroma each time."""

    def __init__(self, store: ChunkStore, embedder: Embedder, rrf_k: int = 60, per_list: int = 20) -> None:
        """``rrf_k``, ``per_list``: the fusion constant and the candidates per ranked list (Settings.rrf_k,
        Settings.retrieval_per_list)."""
        self.store = store
        self.embedder = embedder
        self.rrf_k = rrf_k
        self.per_list = per_list
        self.refresh()

    def refresh(self) -> None:
        """Re-read the store (after an ingest)."""
        self.live = {path: rec.file_hash for path, rec in self.store.manifest().items()}
        self.chunks: list[StoredChunk] = list(self.store.iter_chunks(live_only=True))
        self.by_id = {c.id: i for i, c in enumerate(self.chunks)}
        self.bm25 = BM25Index([tokenize(embedding_text_for(c.metadata.get("title", ""), c.text)) for c in self.chunks])
        self.languages = sorted({c.metadata.get("lang", "en") for c in self.chunks}) or ["en"]
        self.sections = sorted({str(c.metadata.get("section", "")) for c in self.chunks})

    def embed_query(self, question: str) -> np.ndarray:
        return self.embedder.encode_queries([question])[0]

    def search(
        self,
        question: str,
        k: int = 8,
        extra_terms: list[str] | None = None,
        vector: np.ndarray | None = None,
        per_list: int | None = None,
    ) -> list[Hit]:
        """Fuse dense-per-language and BM25 rankings with reciprocal rank fusion."""
        if not self.chunks:
            return []
        vector = self.embed_query(question) if vector is None else vector
        per_list = per_list or self.per_list
        hits: dict[str, Hit] = {}

        def add(chunk: StoredChunk, rank: int, source: str, dense: float = 0.0, bm25: float = 0.0) -> None:
            hit = hits.setdefault(chunk.id, Hit(chunk=chunk, score=0.0))
            hit.score += 1.0 / (self.rrf_k + rank)
            hit.dense = max(hit.dense, dense)
            hit.bm25 = max(hit.bm25, bm25)
            hit.ranks[source] = rank

        for lang in self.languages:
            for rank, (chunk, sim) in enumerate(self.dense(vector, per_list, where={"lang": lang}), start=1):
                add(chunk, rank, f"dense_{lang}", dense=sim)
        scores = self.bm25.scores(tokenize(question) + list(extra_terms or []))
        top = np.argsort(-scores)[:per_list]
        for rank, idx in enumerate((i for i in top if scores[i] > 0), start=1):
            add(self.chunks[idx], rank, "bm25", bm25=float(scores[idx]))
        return sorted(hits.values(), key=lambda h: -h.score)[:k]

    def dense(self, vector: np.ndarray, k: int, where: dict | None = None) -> list[tuple[StoredChunk, float]]:
        return self.store.query(vector, k, live=self.live, where=where)

    def sections_under(self, section: str) -> list[str]:
        return [s for s in self.sections if s == section or s.startswith(section + ".")]

    def best_in_sections(
        self, vector: np.ndarray, sections: list[str], doc_id: str, lang: str, k: int = 1, exact: bool = False
    ) -> list[tuple[StoredChunk, float]]:
        """Best chunks of ``doc_id`` within the given sections (or under them), preferring ``lang``."""
        wanted = sorted(set(sections) if exact else {s for sec in sections for s in self.sections_under(sec)})
        if not wanted:
            return []
        base = [{"doc_id": doc_id}, {"section": {"$in": wanted}}]
        found = self.dense(vector, k, where={"$and": [*base, {"lang": lang}]})
        if len(found) < k:
            found += [f for f in self.dense(vector, k, where={"$and": base}) if f[0].id not in {x[0].id for x in found}]
        return found[:k]
