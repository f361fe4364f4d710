"""The ingest pipeline, one linear pass: find files → hash → load → chunk → embed → upsert → commit → clean up →
keyword index."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ingest import keyword
from ingest.chunking import Chunk, chunk_sections
from ingest.config import Settings
from ingest.embeddings import Embedder, load_embedder
from ingest.keyword import Row, indexed_text
from ingest.loaders import SUPPORTED_SUFFIXES, LoadedDoc, LoadError, load_file
from ingest.store import ChunkStore, FileRecord
from ingest.terms import sentence_terms_field, tokenize

# Bump when chunking output or chunk metadata changes for the same settings: forces a rebuild (4: "[16]" references
# rewritten on load; 5: each chunk carries its sentence terms, `sentence_terms`).
CHUNKER_VERSION = 5
# Files are embedded in groups of at least this many batches' worth of chunks: full, length-sorted batches.
EMBED_GROUP_BATCHES = 8


@dataclass
class IngestReport:
    added_files: int = 0
    updated_files: int = 0
    removed_files: int = 0
    unchanged_files: int = 0
    failed_files: int = 0
    chunks_total: int = 0
    seconds: float = 0.0
    chunks_embedded: int = 0
    rebuilt: bool = False
    errors: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        rate = f", {self.chunks_embedded / self.seconds:.1f} chunks/s" if self.chunks_embedded and self.seconds else ""
        return (
            f"ingest: {self.added_files} added, {self.updated_files} updated, {self.removed_files} removed, "
            f"{self.unchanged_files} unchanged, {self.failed_files} failed; {self.chunks_total} chunks in store "
            f"({self.seconds:.1f} s{rate})"
        )


@dataclass
class _Pending:
    key: str
    file_hash: str
    doc: LoadedDoc
    chunks: list[Chunk]
    is_new: bool


def file_key(path: Path) -> str:
    return str(path.resolve())


def find_files(paths: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Expand directories (supported types, no hidden files); explicit files are kept whatever their type."""
    found: list[Path] = []
    missing: list[tuple[Path, str]] = []
    for path in paths:
        if path.is_dir():
            for candidate in sorted(path.rglob("*")):
                rel = candidate.relative_to(path)
                if any(part.startswith(".") for part in rel.parts):
                    continue
                if candidate.is_file() and candidate.suffix.lower() in SUPPORTED_SUFFIXES:
                    found.append(candidate)
        elif path.exists():
            found.append(path)
        else:
            missing.append((path, "no such file or directory"))
    return found, missing


def _under_roots(key: str, roots: list[Path]) -> bool:
    for root in roots:
        resolved = str(root.resolve())
        if key == resolved or key.startswith(resolved + os.sep):
            return True
    return False


def fingerprint(settings: Settings, embedder: Embedder) -> dict:
    return {
        "chunker": CHUNKER_VERSION,
        "chunk_size": settings.chunk_size,
        "chunk_overlap": settings.chunk_overlap,
        "embedding_model": settings.embedding_model,
        "dimension": embedder.dimension,
    }


def _groups(pending: list[_Pending], budget: int) -> Iterator[list[_Pending]]:
    """Consecutive files whose chunks add up to at least ``budget`` (the last group may be smaller)."""
    group: list[_Pending] = []
    size = 0
    for item in pending:
        group.append(item)
        size += len(item.chunks)
        if size >= budget:
            yield group
            group, size = [], 0
    if group:
        yield group


def chunk_id(key: str, file_hash: str, index: int, text: str) -> str:
    return hashlib.sha256(f"{key}\0{file_hash}\0{index}\0{text}".encode()).hexdigest()[:40]


embedding_text_for = indexed_text  # what gets embedded and BM25-indexed: the title gives a short card its topic


def embedding_text(doc: LoadedDoc, chunk: Chunk) -> str:
    return embedding_text_for(doc.title, chunk.text)


def _metadata(key: str, file_hash: str, index: int, doc: LoadedDoc, chunk: Chunk) -> dict:
    meta = {
        "doc_id": doc.doc_id,
        "title": doc.title,
        "url": doc.url,
        "lang": doc.lang,
        "section": chunk.section,
        "heading": " > ".join(chunk.heading),
        "source_path": key,
        "generation": file_hash,
        "chunk_index": index,
        "char_start": chunk.char_start,
        "char_end": chunk.char_end,
        "sentence_terms": sentence_terms_field(chunk.text),
    }
    if chunk.page is not None:
        meta["page"] = chunk.page
    return meta


def _log(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr)


def run_ingest(
    settings: Settings,
    paths: list[Path] | None = None,
    *,
    rebuild: bool = False,
    embedder: Embedder | None = None,
    store: ChunkStore | None = None,
    quiet: bool = False,
) -> IngestReport:
    """Bring the store in line with the files under ``paths`` (default: the corpus cards)."""
    started = time.perf_counter()
    report = IngestReport()
    roots = paths or [settings.corpus_dir / "cards"]
    embedder = embedder or load_embedder(settings, progress=not quiet)
    store = store or ChunkStore(settings)

    wanted = fingerprint(settings, embedder)
    stored = store.stored_fingerprint()
    if rebuild or (stored is not None and stored != wanted):
        _log("ingest: rebuilding the store (--rebuild, or chunker/model settings changed)", quiet)
        store.drop_all()
        report.rebuilt = True
    if stored != wanted or report.rebuilt:
        store.save_fingerprint(wanted)

    manifest = store.manifest()
    store.delete_orphans(manifest)  # leftovers of an interrupted run

    files, missing = find_files(roots)
    for path, reason in missing:
        report.failed_files += 1
        report.errors.append({"file": str(path), "error": reason})
        _log(f"ingest: FAILED {path}: {reason}", quiet)

    pending: list[_Pending] = []
    seen: set[str] = set()
    max_bytes = int(settings.max_file_mb * 1_000_000)
    for path in files:
        key = file_key(path)
        if key in seen:  # named twice (e.g. a folder and a file inside it)
            continue
        seen.add(key)
        try:
            if path.stat().st_size > max_bytes:  # don't even hash a huge file
                raise LoadError(
                    f"file too large ({path.stat().st_size / 1e6:.1f} MB > {settings.max_file_mb:g} MB "
                    "limit; raise DOTCHI_MAX_FILE_MB to allow it)"
                )
            file_hash = hashlib.sha256(path.read_bytes()).hexdigest()
            if key in manifest and manifest[key].file_hash == file_hash:
                report.unchanged_files += 1
                continue
            doc = load_file(path, max_bytes)
            chunks = chunk_sections(doc.sections, settings.chunk_size, settings.chunk_overlap)
            if not chunks:
                raise LoadError("no text to index")
        except (LoadError, OSError, UnicodeError) as exc:
            report.failed_files += 1
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            report.errors.append({"file": str(path), "error": reason})
            _log(f"ingest: FAILED {path}: {reason} (kept what was stored for it)", quiet)
            continue
        pending.append(_Pending(key, file_hash, doc, chunks, key not in manifest))

    rows: list[Row] = []  # keyword-index rows of the new generations, tokenised while their texts are at hand
    total = sum(len(p.chunks) for p in pending)
    budget = settings.embed_batch_size * EMBED_GROUP_BATCHES
    with tqdm(total=total, desc="embedding", unit="chunk", disable=quiet or total == 0, file=sys.stderr) as bar:
        for group in _groups(pending, budget):
            # Chunks of several small files are embedded together, so batches are full and sorted by length
            # (most cards are one to five chunks); each file still has its own manifest record (its commit point).
            texts = [embedding_text(item.doc, c) for item in group for c in item.chunks]
            vectors: list[list[float]] = []
            for start in range(0, len(texts), budget):
                batch = texts[start : start + budget]
                vectors.extend(embedder.encode_documents(batch).tolist())
                bar.update(len(batch))
            # One write for the group's chunks, then one for its manifest records: every chunk of a file is stored
            # before the record that makes it live, so a crash still leaves each file old or new.
            placed = [(item, i, c) for item in group for i, c in enumerate(item.chunks)]  # aligned with texts
            ids = [chunk_id(item.key, item.file_hash, i, c.text) for item, i, c in placed]
            metas = [_metadata(item.key, item.file_hash, i, item.doc, c) for item, i, c in placed]
            store.add_chunks(ids, [c.text for _, _, c in placed], metas, vectors)
            rows += [Row(cid, item.key, item.file_hash, item.doc.lang, c.section, tokenize(text),
                         np.asarray(vector, dtype=np.float32))
                     for cid, (item, _, c), text, vector in zip(ids, placed, texts, vectors, strict=True)]
            store.commit_files([FileRecord(item.key, item.file_hash, item.doc.doc_id, len(item.chunks))
                                for item in group])
            for item in group:
                if not item.is_new:  # a new file has no older generation (leftovers went with delete_orphans)
                    store.delete_stale(item.key, item.file_hash)
                report.chunks_embedded += len(item.chunks)
                if item.is_new:
                    report.added_files += 1
                else:
                    report.updated_files += 1

    for key in manifest:
        if key not in seen and _under_roots(key, roots) and not Path(key).exists():
            store.forget_file(key)
            store.delete_stale(key, None)
            report.removed_files += 1

    keyword.sync(store, rows)  # the keyword index of the store as it is now, saved beside it
    report.chunks_total = store.count()
    report.seconds = round(time.perf_counter() - started, 3)
    return report
