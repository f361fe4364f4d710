"""The keyword (BM25) index: built by ingest beside the store, loaded by the bot without re-tokenising anything.

One index describes exactly one state of the store: the live-generation map (source path -> file hash) plus the
store's fingerprint, hashed into ``digest``. It lives in ``<keyword_dir>/<digest>/`` and is written to a temporary
folder first and renamed into place, so a crash leaves the old complete index or the new complete one, never a
mix. A reader picks the folder whose digest matches the store it sees; when there is none (an ingest was killed
between two commits, or the store is a server that another machine filled) it updates the nearest index from the
store — reusing the rows of generations it already has, tokenising only the missing ones — and saves that.

Layout (all ``.npy`` files are opened memory-mapped): ``meta.json`` (digest, generations, language and section
tables, vocabulary), per-row arrays (chunk id, generation, language, section), the term counts (CSR, used to
update), the precomputed BM25 weights (CSC, one column per term: a query reads only its terms' columns) and the
rows' stored embeddings (``vectors``, float32, one row per chunk; zero columns when some row's vector is unknown), so
a small store is searched exactly in memory instead of by a Chroma query per question.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import sparse

from ingest.store import ChunkStore
from ingest.terms import tokenize

FORMAT_VERSION = 2  # 2: the rows' embeddings (``vectors``)
K1, B = 1.2, 0.75
_ARRAYS = ("ids", "row_group", "row_lang", "row_section", "tf_data", "tf_indices", "tf_indptr",
           "w_data", "w_indices", "w_indptr", "vectors")


@dataclass(frozen=True)
class Row:
    """One chunk as the index needs it: its id, the generation it belongs to, language, section, BM25 terms and
    the embedding the store holds for it (None when unknown: the index then keeps no vectors)."""

    chunk_id: str
    source_path: str
    generation: str
    lang: str
    section: str
    terms: list[str]
    vector: np.ndarray | None = None


def indexed_text(title: str, text: str) -> str:
    """What gets embedded and BM25-indexed: the title gives a short card its topic."""
    return f"{title}\n{text}" if title else text


def row_for(chunk_id: str, text: str, metadata: dict, vector=None) -> Row:
    """Tokenise one stored chunk into an index row (``vector``: its stored embedding, when known)."""
    return Row(chunk_id, str(metadata.get("source_path", "")), str(metadata.get("generation", "")),
               str(metadata.get("lang", "en")), str(metadata.get("section", "")),
               tokenize(indexed_text(str(metadata.get("title", "")), text)),
               None if vector is None else np.asarray(vector, dtype=np.float32))


def _row_vectors(rows: list[Row]) -> np.ndarray:
    """The rows' embeddings stacked, or an (n, 0) array when any is unknown or they differ in size."""
    if rows and all(r.vector is not None for r in rows) and len({r.vector.shape for r in rows}) == 1:
        return np.vstack([r.vector for r in rows]).astype(np.float32)
    return np.zeros((len(rows), 0), dtype=np.float32)


class KeywordIndex:
    """Okapi BM25 (k1=1.2, b=0.75, Lucene idf) over pre-tokenised chunks, with the generation of every row."""

    def __init__(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        self.a = arrays
        self.meta = meta
        self.digest: str = meta["digest"]
        self.groups: list[tuple[str, str]] = [tuple(g) for g in meta["groups"]]
        self.vocab_list: list[str] = meta["vocab"]
        self.vocab: dict[str, int] = {t: i for i, t in enumerate(self.vocab_list)}
        self.languages: list[str] = sorted(set(meta["langs"][i] for i in np.unique(arrays["row_lang"]))) if len(
            arrays["ids"]) else []
        self.sections: list[str] = sorted(
            set(meta["sections"][i] for i in np.unique(arrays["row_section"]))) if len(arrays["ids"]) else []
        self._id_order: np.ndarray | None = None  # ids' sorted order, for rows_of

    # ------------------------------------------------------------------------------------------- build
    @classmethod
    def build(cls, rows: list[Row], digest: str) -> KeywordIndex:
        """A fresh index over ``rows``."""
        vocab: dict[str, int] = {}
        groups: dict[tuple[str, str], int] = {}
        langs: dict[str, int] = {}
        sections: dict[str, int] = {}
        cols = np.array([vocab.setdefault(t, len(vocab)) for r in rows for t in r.terms], dtype=np.int32)
        row_of = np.repeat(np.arange(len(rows), dtype=np.int32), [len(r.terms) for r in rows])
        n = len(rows)
        arrays = {
            "ids": np.array([r.chunk_id for r in rows], dtype=str) if rows else np.zeros(0, dtype="<U1"),
            "row_group": np.array([groups.setdefault((r.source_path, r.generation), len(groups)) for r in rows],
                                  dtype=np.int32),
            "row_lang": np.array([langs.setdefault(r.lang, len(langs)) for r in rows], dtype=np.int32),
            "row_section": np.array([sections.setdefault(r.section, len(sections)) for r in rows], dtype=np.int32),
            "vectors": _row_vectors(rows),
        }
        tf = sparse.csr_matrix((np.ones(len(cols), dtype=np.float32), (row_of, cols)), shape=(n, max(len(vocab), 1)))
        tf.sum_duplicates()  # term counts
        meta = {"groups": list(groups), "langs": list(langs), "sections": list(sections), "vocab": list(vocab)}
        return cls._finish(arrays, tf, meta, digest)

    @classmethod
    def _finish(cls, arrays: dict[str, np.ndarray], tf: sparse.csr_matrix, meta: dict, digest: str) -> KeywordIndex:
        """Drop unused terms, then precompute the per-term BM25 weight columns."""
        tf = tf.tocsr()
        tf.sum_duplicates()
        used = np.unique(tf.indices)
        if len(used) < tf.shape[1]:
            remap = np.full(tf.shape[1], -1, dtype=np.int64)
            remap[used] = np.arange(len(used))
            tf = sparse.csr_matrix((tf.data, remap[tf.indices].astype(np.int32), tf.indptr),
                                   shape=(tf.shape[0], max(len(used), 1)))
            meta = {**meta, "vocab": [meta["vocab"][i] for i in used]}
        n = tf.shape[0]
        lengths = np.asarray(tf.sum(axis=1)).ravel().astype(np.float32)
        df = np.bincount(tf.indices, minlength=tf.shape[1]).astype(np.float32)
        idf = np.log(1.0 + (max(n, 1) - df + 0.5) / (df + 0.5)).astype(np.float32)
        avgdl = float(lengths.mean()) if n else 1.0
        norm = K1 * (1 - B + B * lengths / max(avgdl, 1e-6))
        coo = tf.tocoo()
        weights = idf[coo.col] * coo.data * (K1 + 1) / (coo.data + norm[coo.row])
        csc = sparse.csc_matrix((weights.astype(np.float32), (coo.row, coo.col)), shape=tf.shape)
        csc.sort_indices()
        arrays = {
            **arrays,
            "tf_data": tf.data.astype(np.float32), "tf_indices": tf.indices.astype(np.int32),
            "tf_indptr": tf.indptr.astype(np.int64),
            "w_data": csc.data.astype(np.float32), "w_indices": csc.indices.astype(np.int32),
            "w_indptr": csc.indptr.astype(np.int64),
        }
        return cls(arrays, {**meta, "digest": digest, "version": FORMAT_VERSION, "n_docs": n})

    def updated(self, live: dict[str, str], digest: str, new_rows: Iterable[Row],
                fetch: Callable[[list[tuple[str, str]]], Iterable[Row]]) -> KeywordIndex:
        """The index of the store state ``live`` (path -> generation): rows of live generations are kept, ``new_rows``
        of live generations are added, and generations still missing are read through ``fetch``."""
        wanted = set(live.items())
        keep_groups = np.array([g in wanted for g in self.groups] or [False], dtype=bool)
        keep = np.flatnonzero(keep_groups[self.a["row_group"]]) if len(self.a["ids"]) else np.zeros(0, np.int64)
        have = {self.groups[g] for g in np.unique(self.a["row_group"][keep])}
        added = [r for r in new_rows if (r.source_path, r.generation) in wanted - have]
        have |= {(r.source_path, r.generation) for r in added}
        missing = sorted(wanted - have)
        if missing:
            added += list(fetch(missing))
        if not added and len(keep) == len(self.a["ids"]):
            return self if self.digest == digest else KeywordIndex(self.a, {**self.meta, "digest": digest})
        extra = self.build(added, digest)  # the new rows, with their own tables ...
        return self._merge(keep, extra, digest)  # ... merged after the kept rows

    def _merge(self, keep: np.ndarray, extra: KeywordIndex, digest: str) -> KeywordIndex:
        meta: dict = {"groups": list(self.groups), "langs": list(self.meta["langs"]),
                      "sections": list(self.meta["sections"]), "vocab": list(self.vocab_list)}
        tables = {"groups": {g: i for i, g in enumerate(self.groups)},
                  "langs": {v: i for i, v in enumerate(meta["langs"])},
                  "sections": {v: i for i, v in enumerate(meta["sections"])},
                  "vocab": dict(self.vocab)}

        def remap(name: str, values: list) -> np.ndarray:
            table = tables[name]
            for v in values:
                if v not in table:
                    table[v] = len(table)
                    meta[name].append(v)
            return np.array([table[v] for v in values], dtype=np.int64)

        g_map = remap("groups", list(extra.groups))
        l_map = remap("langs", list(extra.meta["langs"]))
        s_map = remap("sections", list(extra.meta["sections"]))
        v_map = remap("vocab", list(extra.vocab_list))
        mine = self.tf()[keep]
        theirs = extra.tf()
        theirs = sparse.csr_matrix((theirs.data, v_map[theirs.indices] if len(v_map) else theirs.indices,
                                    theirs.indptr), shape=(theirs.shape[0], len(meta["vocab"]) or 1))
        mine = sparse.csr_matrix(mine, shape=(mine.shape[0], len(meta["vocab"]) or 1))
        tf = sparse.vstack([mine, theirs], format="csr")
        arrays = {
            "ids": np.concatenate([np.asarray(self.a["ids"][keep]).astype(str), extra.a["ids"].astype(str)])
            if len(keep) or len(extra.a["ids"]) else np.zeros(0, dtype="<U1"),
            "row_group": np.concatenate([self.a["row_group"][keep], g_map[extra.a["row_group"]]]).astype(np.int32),
            "row_lang": np.concatenate([self.a["row_lang"][keep], l_map[extra.a["row_lang"]]]).astype(np.int32),
            "row_section": np.concatenate([self.a["row_section"][keep],
                                           s_map[extra.a["row_section"]]]).astype(np.int32),
            "vectors": _stack_vectors(np.asarray(self.a["vectors"])[keep], np.asarray(extra.a["vectors"])),
        }
        used_groups = np.unique(arrays["row_group"])  # forget generations that no row belongs to any more
        g_new = np.full(len(meta["groups"]), -1, dtype=np.int64)
        g_new[used_groups] = np.arange(len(used_groups))
        arrays["row_group"] = g_new[arrays["row_group"]].astype(np.int32)
        meta["groups"] = [meta["groups"][i] for i in used_groups]
        return self._finish(arrays, tf, meta, digest)

    @property
    def vectors(self) -> np.ndarray | None:
        """The rows' embeddings (memory-mapped when loaded), or None when the index does not hold them."""
        vectors = self.a["vectors"]
        return vectors if len(self) and vectors.shape[1] else None

    def tf(self) -> sparse.csr_matrix:
        """Term counts, one row per chunk."""
        return sparse.csr_matrix((np.asarray(self.a["tf_data"]), np.asarray(self.a["tf_indices"]),
                                  np.asarray(self.a["tf_indptr"])), shape=(len(self.a["ids"]), max(len(self.vocab), 1)))

    # ------------------------------------------------------------------------------------------- query
    def __len__(self) -> int:
        return len(self.a["ids"])

    @property
    def n_docs(self) -> int:
        return len(self)

    def chunk_id(self, row: int) -> str:
        return str(self.a["ids"][row])

    def rows_of(self, chunk_ids: list[str]) -> list[int | None]:
        """The row of each chunk id, None for an id the index does not hold (not live in its store state). A
        binary search over the ids in sorted order (an int32 permutation computed on first use), not a dict of
        every id."""
        ids = self.a["ids"]
        if not len(ids) or not chunk_ids:
            return [None] * len(chunk_ids)
        order = self._id_order
        if order is None:
            order = self._id_order = np.argsort(ids, kind="stable").astype(np.int32)
        wanted = np.asarray(chunk_ids, dtype=ids.dtype)
        at = np.minimum(np.searchsorted(ids, wanted, sorter=order), len(ids) - 1)
        rows = order[at]
        # One gather (element access on a memory map costs ~1 us each), compared with the ids as given: ``wanted``
        # has the index's fixed width, so an id longer than every held id was cut to fit it for the search.
        found = np.asarray(ids[rows]) == np.asarray(chunk_ids)
        return [int(r) if ok else None for r, ok in zip(rows.tolist(), found.tolist(), strict=True)]

    def lang(self, row: int) -> str:
        return self.meta["langs"][int(self.a["row_lang"][row])]

    def langs_of(self, rows: list[int | None]) -> list[str | None]:
        """``lang`` of each row (None stays None), with one gather."""
        known = [r for r in rows if r is not None]
        codes = iter(np.asarray(self.a["row_lang"][known]).tolist() if known else [])
        langs = self.meta["langs"]
        return [langs[next(codes)] if r is not None else None for r in rows]

    def scores(self, query_terms: list[str]) -> np.ndarray:
        """BM25 score of every row (repeated query terms count once)."""
        out = np.zeros(len(self), dtype=np.float32)
        indptr, indices, data = self.a["w_indptr"], self.a["w_indices"], self.a["w_data"]
        for col in dict.fromkeys(self.vocab[t] for t in query_terms if t in self.vocab):
            start, end = int(indptr[col]), int(indptr[col + 1])
            out[indices[start:end]] += data[start:end]
        return out

    def top(self, query_terms: list[str], k: int) -> list[tuple[int, float]]:
        """The ``k`` best rows with a score above zero, best first (ties by row)."""
        scores = self.scores(query_terms)
        rows = np.flatnonzero(scores > 0)
        if len(rows) > k:
            rows = rows[np.argpartition(-scores[rows], k - 1)[:k]]
        rows = rows[np.lexsort((rows, -scores[rows]))]
        return [(int(r), float(scores[r])) for r in rows[:k]]

    # ------------------------------------------------------------------------------------------- disk
    def save(self, root: Path, keep: int = 2) -> Path:
        """Write the index to ``root/<digest>/`` atomically (temporary folder + rename); keep the ``keep`` newest."""
        root.mkdir(parents=True, exist_ok=True)
        final = root / self.digest
        if not (final / "meta.json").exists():
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=root))
            for name in _ARRAYS:
                np.save(tmp / f"{name}.npy", np.asarray(self.a[name]), allow_pickle=False)
            (tmp / "meta.json").write_text(json.dumps(self.meta, ensure_ascii=False), encoding="utf-8")
            _fsync_dir(tmp)
            try:
                os.rename(tmp, final)
            except OSError:  # another process renamed the same digest first: same content
                shutil.rmtree(tmp, ignore_errors=True)
            _fsync_dir(root)
        now = final.stat().st_mtime
        os.utime(final, (now, now))
        _prune(root, final, keep)
        return final

    @classmethod
    def load(cls, folder: Path) -> KeywordIndex:
        """Open a saved index memory-mapped (nothing is re-tokenised)."""
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        if meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"keyword index format {meta.get('version')} != {FORMAT_VERSION}")
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False) for name in _ARRAYS}
        return cls(arrays, meta)


def _stack_vectors(kept: np.ndarray, added: np.ndarray) -> np.ndarray:
    """Kept rows' vectors over the added rows': (n, 0) when one side lacks them (or their sizes differ)."""
    if not len(added):
        return kept
    if not len(kept):
        return added
    if kept.shape[1] and kept.shape[1] == added.shape[1]:
        return np.vstack([kept, added]).astype(np.float32)
    return np.zeros((len(kept) + len(added), 0), dtype=np.float32)


def _fsync_dir(path: Path) -> None:
    for child in path.iterdir() if path.is_dir() else []:
        if child.is_file():
            with open(child, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prune(root: Path, current: Path, keep: int) -> None:
    """Remove old index folders (all but the ``keep`` newest, always keeping ``current``) and stale temp folders."""
    done = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p != current),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    for old in done[max(keep - 1, 0):]:
        shutil.rmtree(old, ignore_errors=True)
    for tmp in root.glob(".tmp-*"):  # the half-written folder of a killed run (its process is gone)
        pid = tmp.name.split("-")[1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find(root: Path, digest: str) -> KeywordIndex | None:
    """The saved index of exactly this store state, or None."""
    folder = root / digest
    if not (folder / "meta.json").exists():
        return None
    try:
        return KeywordIndex.load(folder)
    except (OSError, ValueError, KeyError):
        return None


def newest(root: Path) -> KeywordIndex | None:
    """The most recently saved index (a base to update from), or None."""
    if not root.is_dir():
        return None
    for folder in sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                         key=lambda p: p.stat().st_mtime, reverse=True):
        with contextlib.suppress(OSError, ValueError, KeyError):
            return KeywordIndex.load(folder)
    return None


def empty(digest: str = "") -> KeywordIndex:
    return KeywordIndex.build([], digest)


def sync(store: ChunkStore, new_rows: Iterable[Row] = (), save: bool = True,
         state: tuple[dict[str, str], str] | None = None) -> KeywordIndex:
    """The index of the store as it is now (or in ``state``, from ``store.live_state()``): the saved one when it
    matches, else the newest saved one updated (``new_rows`` first, then the generations still missing, read from
    the store) and saved."""
    root = store.settings.keyword_dir
    live, digest = state or store.live_state()
    found = find(root, digest)
    if found is not None:
        return found
    base = newest(root) or empty()
    index = base.updated(live, digest, new_rows, lambda groups: (
        row_for(c.id, c.text, c.metadata, vector) for c, vector in store.generation_chunk_vectors(groups)))
    if save:
        with contextlib.suppress(OSError):  # a read-only place: serve from memory, the next ingest saves it
            index.save(root)
    return index
