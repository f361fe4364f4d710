"""Chroma access shared by ingest (writes) and bot (reads).

Two collections: ``<name>`` holds the chunks, ``<name>_files`` holds the manifest (one record per ingested file
plus one ``__settings__`` record). The manifest record of a file is the commit point of a replace: chunks carry the
``generation`` (file hash) they belong to, and only chunks whose generation matches the manifest are live. A crash
between writing new chunks and committing leaves the old generation live; a crash after committing leaves the new
one live. Stale generations are deleted right after the commit, or by the next ingest run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import chromadb
import numpy as np
from chromadb.config import Settings as ChromaSettings

from ingest.config import Settings

SETTINGS_ID = "__settings__"
_PAGE = 5000


class StoreError(RuntimeError):
    """The vector store could not be reached or used; the message says what to do."""


@dataclass(frozen=True)
class FileRecord:
    path: str
    file_hash: str
    doc_id: str
    chunks: int


@dataclass(frozen=True)
class StoredChunk:
    id: str
    text: str
    metadata: dict[str, Any]

    @property
    def group(self) -> tuple[str, str]:
        """(source path, generation): the one ingest of one file that wrote this chunk, i.e. its card."""
        return str(self.metadata.get("source_path", "")), str(self.metadata.get("generation", ""))


def _include(vectors: bool) -> list[str]:
    """What a chunk read asks Chroma for: texts and metadata, and the stored vectors when ``vectors``."""
    return ["documents", "metadatas", *(["embeddings"] if vectors else [])]


def _vectors_of(got: dict, vectors: bool) -> list:
    """A Chroma ``get`` result's embeddings as float32 rows (Nones when they were not asked for)."""
    if not vectors:
        return [None] * len(got["ids"])
    return [np.asarray(v, dtype=np.float32) for v in got["embeddings"]]


def open_client(settings: Settings) -> chromadb.api.ClientAPI:
    chroma_settings = ChromaSettings(anonymized_telemetry=False, allow_reset=False)
    try:
        if settings.uses_server:
            return chromadb.HttpClient(host=settings.chroma_host, port=settings.chroma_port, settings=chroma_settings)
        settings.store_path.mkdir(parents=True, exist_ok=True)
        return chromadb.PersistentClient(path=str(settings.store_path), settings=chroma_settings)
    except Exception as exc:  # noqa: BLE001 - chromadb raises many types for an unreachable store
        where = settings.describe_store()
        raise StoreError(f"Cannot open {where}: {exc}. Check DOTCHI_CHROMA_HOST/PORT or DOTCHI_STORE_PATH.") from exc


class ChunkStore:
    """Chunks + manifest in Chroma. Vectors are always supplied by us (no Chroma embedding function)."""

    def __init__(self, settings: Settings, client: chromadb.api.ClientAPI | None = None) -> None:
        self.settings = settings
        self.client = client or open_client(settings)
        self.chunks = self._collection(settings.collection)
        self.files = self._collection(f"{settings.collection}_files")

    def _collection(self, name: str):
        return self.client.get_or_create_collection(
            name, embedding_function=None, configuration={"hnsw": {"space": "cosine"}}
        )

    # ---------------------------------------------------------------- manifest
    def manifest(self) -> dict[str, FileRecord]:
        got = self.files.get(include=["metadatas"])
        records = {}
        for rid, meta in zip(got["ids"], got["metadatas"], strict=True):
            if rid != SETTINGS_ID:
                records[rid] = FileRecord(
                    path=rid, file_hash=str(meta["file_hash"]), doc_id=str(meta["doc_id"]), chunks=int(meta["chunks"])
                )
        return records

    def live_generations(self, manifest: dict[str, FileRecord] | None = None) -> dict[str, str]:
        """The one live-generation map: source path -> the generation (file hash) its manifest record names.
        Only chunks whose ``generation`` matches are live."""
        records = self.manifest() if manifest is None else manifest
        return {path: rec.file_hash for path, rec in records.items()}

    def live_state(self) -> tuple[dict[str, str], str]:
        """The live-generation map and a digest of it plus the store fingerprint (one read of the manifest):
        the digest names the keyword index built for exactly this state."""
        got = self.files.get(include=["metadatas", "documents"])
        live, fingerprint = {}, None
        for rid, meta, doc in zip(got["ids"], got["metadatas"], got["documents"], strict=True):
            if rid == SETTINGS_ID:
                fingerprint = doc
            else:
                live[rid] = str(meta["file_hash"])
        payload = json.dumps([self.settings.collection, fingerprint, sorted(live.items())], ensure_ascii=False)
        return live, hashlib.sha256(payload.encode()).hexdigest()[:32]

    def stored_fingerprint(self) -> dict | None:
        got = self.files.get(ids=[SETTINGS_ID], include=["documents"])
        return json.loads(got["documents"][0]) if got["ids"] else None

    def save_fingerprint(self, fingerprint: dict) -> None:
        self.files.upsert(
            ids=[SETTINGS_ID],
            documents=[json.dumps(fingerprint, sort_keys=True)],
            metadatas=[{"kind": "settings"}],
            embeddings=[[0.0, 0.0]],
        )

    def commit_file(self, record: FileRecord) -> None:
        """The atomic switch: from now on ``record.file_hash`` is the live generation of ``record.path``."""
        self.commit_files([record])

    def commit_files(self, records: list[FileRecord]) -> None:
        """``commit_file`` for several files in one write; each record is still its own file's switch (a crash
        part-way leaves every file on its old or its new generation)."""
        for start in range(0, len(records), _PAGE):
            page = records[start : start + _PAGE]
            self.files.upsert(
                ids=[r.path for r in page],
                documents=[r.path for r in page],
                metadatas=[
                    {"file_hash": r.file_hash, "doc_id": r.doc_id, "chunks": r.chunks, "kind": "file"} for r in page
                ],
                embeddings=[[0.0, 0.0]] * len(page),
            )

    def forget_file(self, path: str) -> None:
        self.files.delete(ids=[path])

    # ---------------------------------------------------------------- chunks
    def add_chunks(self, ids: list[str], texts: list[str], metadatas: list[dict], vectors) -> None:
        for start in range(0, len(ids), _PAGE):
            end = start + _PAGE
            self.chunks.upsert(
                ids=ids[start:end],
                documents=texts[start:end],
                metadatas=metadatas[start:end],
                embeddings=vectors[start:end],
            )

    def delete_stale(self, path: str, live_hash: str | None) -> int:
        """Delete chunks of ``path`` whose generation is not ``live_hash`` (all of them when None)."""
        where: dict = {"source_path": path}
        if live_hash is not None:
            where = {"$and": [{"source_path": path}, {"generation": {"$ne": live_hash}}]}
        stale = self.chunks.get(where=where, include=[])["ids"]
        for start in range(0, len(stale), _PAGE):
            self.chunks.delete(ids=stale[start : start + _PAGE])
        return len(stale)

    def delete_orphans(self, manifest: dict[str, FileRecord]) -> int:
        """Delete every chunk that is not in the live generation of a file in the manifest."""
        removed = 0
        live = self.live_generations(manifest)
        orphan_ids = [
            chunk.id
            for chunk in self.iter_chunks(live_only=False)
            if live.get(chunk.metadata.get("source_path")) != chunk.metadata.get("generation")
        ]
        for start in range(0, len(orphan_ids), _PAGE):
            self.chunks.delete(ids=orphan_ids[start : start + _PAGE])
            removed += len(orphan_ids[start : start + _PAGE])
        return removed

    def iter_chunks(self, live_only: bool = True):
        """All chunks (paged), by default only the live generations."""
        for chunk, _ in self._paged(live_only, vectors=False):
            yield chunk

    def _paged(self, live_only: bool, vectors: bool) -> Iterator[tuple[StoredChunk, np.ndarray | None]]:
        """All chunks (paged) with their stored vectors when ``vectors``; by default only the live generations."""
        live = self.live_generations() if live_only else None
        include = _include(vectors)
        offset = 0
        while True:
            got = self.chunks.get(include=include, limit=_PAGE, offset=offset)
            if not got["ids"]:
                return
            for cid, text, meta, vector in zip(got["ids"], got["documents"], got["metadatas"],
                                               _vectors_of(got, vectors), strict=True):
                if live is None or live.get(meta.get("source_path")) == meta.get("generation"):
                    yield StoredChunk(cid, text, meta), vector
            offset += len(got["ids"])

    def get_chunks(self, ids: list[str]) -> list[StoredChunk]:
        """The chunks with these ids, in the order given (ids not in the store are skipped)."""
        if not ids:
            return []
        got = self.chunks.get(ids=list(dict.fromkeys(ids)), include=["documents", "metadatas"])
        found = {cid: StoredChunk(cid, text, meta)
                 for cid, text, meta in zip(got["ids"], got["documents"], got["metadatas"], strict=True)}
        return [found[i] for i in ids if i in found]

    def generation_chunks(self, groups: list[tuple[str, str]]) -> Iterator[StoredChunk]:
        """Every chunk of the given (source path, generation) pairs: one filtered read when they are few, one paged
        scan when they are many."""
        for chunk, _ in self._generations(groups, vectors=False):
            yield chunk

    def generation_chunk_vectors(self, groups: list[tuple[str, str]]) -> Iterator[tuple[StoredChunk, np.ndarray]]:
        """``generation_chunks`` with each chunk's stored vector."""
        yield from self._generations(groups, vectors=True)

    def _generations(self, groups: list[tuple[str, str]], vectors: bool):
        wanted = set(groups)
        if len(wanted) > 20:
            for chunk, vector in self._paged(live_only=False, vectors=vectors):
                if chunk.group in wanted:
                    yield chunk, vector
            return
        if not wanted:
            return
        include = _include(vectors)
        each = [{"$and": [{"source_path": path}, {"generation": generation}]} for path, generation in sorted(wanted)]
        got = self.chunks.get(where=each[0] if len(each) == 1 else {"$or": each}, include=include)  # one read
        for cid, text, meta, vector in zip(got["ids"], got["documents"], got["metadatas"],
                                           _vectors_of(got, vectors), strict=True):
            yield StoredChunk(cid, text, meta), vector

    def section_chunks(
        self, doc_id: str, section: str, live: dict[str, str]
    ) -> tuple[list[StoredChunk], np.ndarray]:
        """The live chunks of one document section, with their stored vectors (rows in chunk order)."""
        got = self.chunks.get(
            where={"$and": [{"doc_id": doc_id}, {"section": section}]},
            include=["documents", "metadatas", "embeddings"],
        )
        chunks, rows = [], []
        for cid, text, meta, vector in zip(
            got["ids"], got["documents"], got["metadatas"], got["embeddings"], strict=True
        ):
            if live.get(meta.get("source_path")) == meta.get("generation"):
                chunks.append(StoredChunk(cid, text, meta))
                rows.append(np.asarray(vector, dtype=np.float32))
        return chunks, (np.vstack(rows) if rows else np.zeros((0, 0), dtype=np.float32))

    def count(self) -> int:
        return self.chunks.count()

    def drop_all(self) -> None:
        for name in (self.settings.collection, f"{self.settings.collection}_files"):
            with contextlib.suppress(Exception):  # an absent collection is fine
                self.client.delete_collection(name)
        self.chunks = self._collection(self.settings.collection)
        self.files = self._collection(f"{self.settings.collection}_files")

    def query_ids(self, vector, n: int, where: dict | None = None) -> list[tuple[str, float]]:
        """Dense search returning (chunk id, cosine similarity) only: without documents and metadata Chroma answers
        in about a third of the time; the caller checks liveness against its keyword index and fetches the texts
        of the hits it keeps."""
        got = self.chunks.query(
            query_embeddings=[list(map(float, vector))], n_results=max(1, n), where=where, include=["distances"]
        )
        return [(cid, 1.0 - float(dist)) for cid, dist in zip(got["ids"][0], got["distances"][0], strict=True)]

    def query(
        self, vector, k: int, live: dict[str, str] | None = None, where: dict | None = None
    ) -> list[tuple[StoredChunk, float]]:
        """Dense search (optionally with a Chroma ``where`` filter); returns (chunk, cosine similarity). Given the
        live generations, stale ones are filtered out (over-fetching 2x to make up for them)."""
        fetch = k * 2 if live is not None else k
        got = self.chunks.query(
            query_embeddings=[list(map(float, vector))],
            n_results=max(1, fetch),
            where=where,
            include=["documents", "metadatas", "distances"],
        )
        out = []
        for cid, text, meta, dist in zip(
            got["ids"][0], got["documents"][0], got["metadatas"][0], got["distances"][0], strict=True
        ):
            if live is not None and live.get(meta.get("source_path")) != meta.get("generation"):
                continue
            out.append((StoredChunk(cid, text, meta), 1.0 - float(dist)))
        return out[:k]
