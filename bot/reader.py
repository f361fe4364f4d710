"""The learned question reader: intent, each Figure 2 condition, the task and the considerations, predicted from
the question's e5 embedding (already computed for retrieval) plus lexical features (character n-grams, the flow's
cue phrases, task aliases, the label-count parser), by logistic regression trained on ``corpus/reader/``.

``python -m bot train-reader`` trains it (deterministic, seconds once the questions' embeddings are cached); the
service retrains on start-up when the reading data, the flow or the lexicon changed (their hash is in the model).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np
from scipy import sparse

from bot.engine import (
    ConditionState,
    Reading,
    RuleReader,
    _longest,
    any_phrase,
    asks_about_survey,
    asks_to_choose,
    label_count,
    numeric_state,
    stem_text,
)
from bot.knowledge import DecisionFlow, KnowledgeError, Task, read_jsonl
from bot.lexicon import Lexicon, load_lexicon
from bot.text import normalize_question
from ingest.embeddings import QueryEncoding

QueryVector = np.ndarray | QueryEncoding  # a question's embedding, with its token vectors when the caller has them

READER_VERSION = 6
VALUES = ("no", "unstated", "yes")
INTENTS = ("content", "decision", "offtopic")
NO_TASK = "-"
_SENTENCE = re.compile(r"(?<=[。！？!?\n])|(?<=[.;])\s+|(?<=[、,])(?=.{25,})")


def dump_model(blob: dict, path: str | Path) -> None:
    """Pickle (protocol 5) a trained model's parts. Not joblib: its pure-Python unpickler took 0.35-0.8 s on the
    reader's ~90k n-gram vocabulary strings at every start-up, where the C unpickler takes ~0.06 s."""
    with open(path, "wb") as out:
        pickle.dump(blob, out, protocol=5)


def load_model(path: str | Path) -> object:
    """A model saved by ``dump_model`` (a file this project wrote beside its store, never downloaded)."""
    with open(path, "rb") as source:
        return pickle.load(source)  # noqa: S301 - our own artefact


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` (float32). For a few rows (one question at reading time) on torch's thread pool, already awake
    from the query's forward pass: numpy's einsum ran beside those spinning threads at 5.1-5.9 ms p50 a read on
    this 2-core machine, torch takes 3.4-3.6 ms (BLAS's own threads made a one-question product 20-40 ms)."""
    if a.shape[0] > 16:
        return a @ b
    import torch  # loaded with the embedding model already

    left = torch.from_numpy(np.array(a, dtype=np.float32, order="C"))  # a copy: query vectors may be read-only
    right = np.asarray(b, dtype=np.float32)
    if not right.flags.writeable:  # torch warns on read-only arrays even though mm only reads them
        right = right.copy()
    return torch.mm(left, torch.from_numpy(right)).numpy()


FEW_ROWS = 8  # Neighbours.raw for at most this many questions without left-out scenarios: by groups of keys
MAX_SEGMENTS = 12  # a longer question's neighbouring sentences are merged (bounds the sentence-embedding cost)


def segments(text: str) -> list[tuple[int, int]]:
    """Character ranges of the question's sentences and long clauses (stripped, non-empty), in order; at most
    ``MAX_SEGMENTS`` (neighbours merged evenly)."""
    out: list[tuple[int, int]] = []
    start = 0
    for m in [*_SENTENCE.finditer(text), None]:
        end = len(text) if m is None else m.start()
        if m is not None and m.end() == start == end:
            continue
        piece = text[start:end]
        if piece.strip():
            lead = len(piece) - len(piece.lstrip())
            out.append((start + lead, start + len(piece.rstrip())))
        if m is not None:
            start = m.end()
    if len(out) > MAX_SEGMENTS:
        bounds = np.linspace(0, len(out), MAX_SEGMENTS + 1).round().astype(int)
        out = [(out[a][0], out[b - 1][1]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return out or [(0, len(text))]


def segment_texts(text: str) -> list[str]:
    return [text[a:b] for a, b in segments(text)]


@dataclass(frozen=True)
class ReaderConfig:
    """Every knob of the learned reader (chosen by cross-validation on the reading data; see README)."""

    ngram_range: tuple[int, int] = (1, 4)  # character n-grams within word boundaries (Japanese has none: whole runs)
    min_df: int = 2
    embedding_weight: float = 1.0  # scale of the e5 vector next to the l2-normalised n-gram vector
    cue_weight: float = 1.0
    c_intent: float = 4.0
    c_condition: float = 4.0
    c_task: float = 8.0
    c_consideration: float = 4.0
    task_min_p: float = 0.15  # below: no task (5-fold CV, 0.35 -> 0.15: task 62.8 -> 69.1 %, verdict 86.5 -> 87.2 %)
    consideration_min_p: float = 0.5
    min_positives: int = 4  # a consideration with fewer labelled examples falls back to its cue phrases
    yes_min_p: float | None = None  # None: the likeliest value wins
    neighbours: bool = True  # similarity to labelled questions/evidence spans per reading (see Neighbours)
    neighbour_weight: float = 0.3
    balanced_conditions: bool = True  # 5-fold CV by scenario: verdict 80.0 % balanced vs 67.7 % unweighted
    threads: int = 2  # the output models are fitted side by side
    tol: float = 1e-3  # newton-cg stopping tolerance: 1e-3 halves training time vs sklearn's 1e-4 (see README)
    sentences: bool = True  # per-sentence condition scores (SentenceScorer), pooled into the question's row
    sentence_alpha: float = 1.0  # ridge penalty of the sentence scorer
    sentence_positive_weight: float = 3.0
    sentence_weight: float = 1.0
    sentence_folds: int = 3  # the training rows' sentence scores come from models that did not see their scenario
    # A sentence's vector is the mean of its tokens in this hidden layer of the question's own forward pass (no
    # second pass). 5-fold CV, verdict: on 2,846 questions sentences embedded on their own 89.2 %, pooled from
    # layer 4 88.6, layer 8 89.2, the last layer 87.1-87.7 % (too mixed with the rest of the question); on 3,066
    # layer 6 89.4, layer 8 89.5, layer 10 89.0 %.
    part_layer: int = 8
    # A follow-up whose own reading names another task, or states a task condition (`about = "task"` in the flow
    # file), with at least this probability replaces the earlier turn's task and task conditions.
    follow_up_switch_p: float = 0.7
    # A follow-up read on its own (by the fragment reader, ``LearnedReader.followups``) as a question about the
    # survey ("which remark is that from?", "and hallucination in that setting?") with at least this probability is
    # answered as content, not with the earlier verdict. Chosen on the labelled fragments, each of followups_b22-b24
    # read by a fragment reader trained on the other two: 0.5 catches 93 of 131 content fragments and loses 8 of
    # 552 decision fragments; 0.8 catches 63 and loses 2. Stop 16, each of the seven followups files held out, the
    # reader also learning from 1,000 questions: 0.5 catches 161 of 187 and loses 21 of 927.
    follow_up_content_p: float = 0.5
    # A follow-up the fragment reader reads as off-topic ("週末の京都、混んでるかな？" after three turns about a
    # classifier) with at least this probability is refused, even when the turn reader took it for a follow-up (5 %
    # of off-topic turns in its cross-validation). Its off-topic class comes from the sampled standalone questions;
    # bare pushbacks ("are you sure?", 「ほんとに？」) read decision at 0.99-1.0, travel and lunch questions
    # off-topic at 0.93-1.0.
    follow_up_offtopic_p: float = 0.5
    # After a content answer, a follow-up that names a task of its own ("so which one for my news summaries? 50k
    # reference summaries") is read on its own when that task is specific (not a family such as text
    # classification), differs from the latest decision's task and is read with at least this probability;
    # otherwise it continues the latest decision ("and with zero labels in a new game?" after a toxicity filter,
    # read alone as text classification at 0.78; "privacy thing: …transcripts must never leave" read as PII
    # redaction at 0.43).
    own_task_p: float = 0.5
    # A specific task read with less than this probability gives way to a task the question names by a catalog
    # alias, a family included (``DecisionEngine.with_named_task``). On 5-fold CV readings of 7,212 questions
    # (verdict with no such rule 89.95 %): 0.3 89.97 %, 0.4 89.89, 0.5 89.78, 0.7 89.66.
    named_task_over_p: float = 0.3
    # A specific task read with at least ``catalog_over_task_p`` settles its catalog conditions even against the
    # reader's opposite guess when that guess is below ``catalog_over_condition_p`` ("physics deliberately
    # reversed … answers must follow the game's rules": counterfactual knowledge at 0.99, needs-scaling "yes" at
    # 0.63). Chosen on 5-fold CV readings of 7,212 questions (verdict 89.36 % without): task p 0.7 / condition p
    # 0.8 +0.38 points (65 readings changed); 0.7/0.6 +0.20, 0.9/0.8 +0.26, 0.7/0.9 +0.42 (81 changed).
    catalog_over_task_p: float = 0.7
    catalog_over_condition_p: float = 0.8
    # The fragment reader learns from the labelled fragments and this many standalone questions (a fixed sample):
    # the questions bring wordings the fragments lack ("something that chats with them" is mimic_human). Each
    # followups file held out (927 decision, 187 content fragments), all conditions right: 0 questions 63.0 %,
    # 500 66.2 %, 1,000 68.9 %, 1,500 67.3 %, 3,000 68.5 %; 1,000 keeps train-reader near a minute.
    fragment_questions: int = 1000


@dataclass
class Example:
    id: str
    scenario: str
    lang: str
    question: str
    intent: str
    conditions: dict[str, str]
    label_count: int | None
    tasks: list[str]
    considerations: list[str]
    verdict: str | None
    depends_on: str | None = None
    evidence: dict[str, str] = field(default_factory=dict)

    @cached_property
    def text(self) -> str:
        return normalize_question(self.question)


# ---------------------------------------------------------------------------------------------- data
QUESTIONS, FOLLOWUPS = "questions", "followups"  # standalone questions; chat follow-up fragments read on their own


def reading_files(corpus_dir: Path, kind: str = QUESTIONS) -> list[Path]:
    return sorted((corpus_dir / "reader").glob(f"{kind}_*.jsonl"))


def load_examples(corpus_dir: Path, flow: DecisionFlow, kind: str = QUESTIONS) -> list[Example]:
    """Every labelled question (``kind`` questions) or follow-up fragment (``followups``) under ``corpus/reader/``;
    a malformed line raises KnowledgeError naming the file, the line and the field."""
    cond_ids = {c.id for c in flow.conditions}
    task_ids = {t.id for t in flow.tasks}
    cons_ids = {c.id for c in flow.considerations}
    out: list[Example] = []
    seen: set[str] = set()
    for path in reading_files(corpus_dir, kind):
        for where, row in read_jsonl(path, ("id", "scenario", "lang", "question", "intent")):
            if row["intent"] not in INTENTS:
                raise KnowledgeError(f"{where}: field 'intent' must be one of {INTENTS}, not {row['intent']!r}")
            conditions = row.get("conditions") or {}
            bad = {k: v for k, v in conditions.items() if k not in cond_ids or v not in ("yes", "no")}
            if bad:
                raise KnowledgeError(f"{where}: field 'conditions' has unknown ids or values {bad}")
            tasks = list(row.get("tasks") or [])
            if set(tasks) - task_ids:
                raise KnowledgeError(f"{where}: field 'tasks' names unknown task(s) {sorted(set(tasks) - task_ids)}")
            cons = list(row.get("considerations") or [])
            if set(cons) - cons_ids:
                raise KnowledgeError(
                    f"{where}: field 'considerations' names unknown id(s) {sorted(set(cons) - cons_ids)}"
                )
            if row["id"] in seen:
                raise KnowledgeError(f"{where}: duplicate id {row['id']!r}")
            seen.add(row["id"])
            out.append(
                Example(
                    id=row["id"],
                    scenario=row["scenario"],
                    lang=row["lang"],
                    question=row["question"],
                    intent=row["intent"],
                    conditions=dict(conditions),
                    label_count=row.get("label_count"),
                    tasks=tasks,
                    considerations=cons,
                    verdict=row.get("verdict"),
                    depends_on=row.get("depends_on"),
                    evidence=dict(row.get("evidence") or {}),
                )
            )
    return out


def data_hash(corpus_dir: Path, lexicon_path: Path | None = None) -> str:
    """Changes whenever the reading data, the flow/catalog, the lexicon, the reader's knobs or its code version
    change."""
    digest = hashlib.sha256(f"reader-v{READER_VERSION} {ReaderConfig()!r}".encode())
    paths = [
        *reading_files(corpus_dir),
        *reading_files(corpus_dir, FOLLOWUPS),
        corpus_dir / "decision_flow.toml",
        lexicon_path or load_lexicon_path(),
    ]
    for path in paths:
        digest.update(path.name.encode())
        digest.update(path.read_bytes() if path.exists() else b"")
    return digest.hexdigest()[:16]


def load_lexicon_path() -> Path:
    from bot.lexicon import DEFAULT_PATH

    return DEFAULT_PATH


# ---------------------------------------------------------------------------------------------- features
class Featurizer:
    """[character n-grams | cue-phrase, alias and label-count indicators | e5 embedding] as one sparse row."""

    def __init__(self, flow: DecisionFlow, lexicon: Lexicon, config: ReaderConfig) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.flow = flow
        self.lexicon = lexicon
        self.config = config
        self.rules = RuleReader(flow, lexicon)
        self.neighbours: Neighbours | None = None
        self.sentences: SentenceScorer | None = None
        self.dimension = 0
        self.ngrams = TfidfVectorizer(
            analyzer="char_wb",
            ngram_range=config.ngram_range,
            min_df=config.min_df,
            sublinear_tf=True,
            dtype=np.float32,
        )

    @cached_property
    def _all_task_names(self) -> tuple[str, ...]:
        return tuple(name for task in self.flow.tasks for name in task.all_names)

    def cues(self, text: str, count: int | None | bool = False) -> np.ndarray:
        """Indicator features a hand-written reader would have used as rules. ``count``: the text's label count
        when the caller already read it (``False``: read it here)."""
        stemmed = stem_text(text)
        row: list[float] = []
        for cond in self.flow.conditions:
            row.append(float(any_phrase(text, cond.cues_yes, stemmed)))
            row.append(float(any_phrase(text, cond.cues_no, stemmed)))
        decision = asks_to_choose(text, self.lexicon)
        survey = asks_about_survey(text, self.lexicon)
        row.append(float(decision))
        row.append(float(any(c in text for c in self.lexicon.content_cues)))
        row.append(float(survey))
        row.append(float(decision and not survey))  # asks for a choice without asking what the survey says
        names = self._all_task_names
        if any_phrase(text, names, stemmed):  # one search for "names no task at all", the common case is cheap
            row += [float(any_phrase(text, task.all_names, stemmed)) for task in self.flow.tasks]
        else:
            row += [0.0] * len(self.flow.tasks)
        if count is False:
            count = label_count(text, self.lexicon)
        row += [
            float(count is None),
            float(count is not None and count <= 100),
            float(count is not None and 100 < count < 1000),
            float(count is not None and count >= 1000),
        ]
        for cons in self.flow.considerations:
            row.append(float(any_phrase(text, cons.cues, stemmed)))
        return np.asarray(row, dtype=np.float32) * self.config.cue_weight

    def fit(self, texts: Sequence[str]) -> sparse.csr_matrix:
        """Fit the n-gram vocabulary on the training texts; returns their n-gram rows (``transform``'s ``grams``
        for those same texts, so they are not computed twice)."""
        return self.ngrams.fit_transform([t.lower() for t in texts])

    def lexical(
        self,
        texts: Sequence[str],
        cue_memo: dict[str, np.ndarray] | None = None,
        grams: sparse.csr_matrix | None = None,
    ) -> sparse.csr_matrix:
        """N-gram and cue columns. ``cue_memo``: cue rows by text, shared by trainings on the same flow and
        lexicon (the fragment reader's sampled questions, the folds of a cross-validation); ``grams``: the texts'
        n-gram rows when already known (what ``fit`` returned)."""
        lowered = [t.lower() for t in texts]
        if grams is None:
            grams = self.ngrams.transform(lowered)
        memo = {} if cue_memo is None else cue_memo
        rows = []
        for t in lowered:
            row = memo.get(t)
            if row is None:
                row = memo[t] = self.cues(t)
            rows.append(row)
        return sparse.hstack([grams, sparse.csr_matrix(np.vstack(rows))], format="csr")

    def _grams(self, lowered: str) -> tuple[np.ndarray, np.ndarray]:
        """One text's tf-idf n-gram entries (sorted columns, values): what ``ngrams.transform`` computes
        (sublinear tf, idf, l2 norm), without its per-call validation and sparse bookkeeping (~2 ms a question)."""
        analyze = getattr(self, "_analyze", None)
        if analyze is None:
            analyze = self._analyze = self.ngrams.build_analyzer()
        vocabulary = self.ngrams.vocabulary_
        columns = np.fromiter((c for g in analyze(lowered) if (c := vocabulary.get(g)) is not None), dtype=np.int64)
        if not columns.size:
            return columns.astype(np.int32), np.zeros(0, dtype=np.float32)
        columns, counts = np.unique(columns, return_counts=True)
        values = (1.0 + np.log(counts)) * self.ngrams.idf_[columns]
        values /= np.sqrt(np.dot(values, values))
        return columns.astype(np.int32), values.astype(np.float32)

    def row(
        self, text: str, vector: np.ndarray, pooled: np.ndarray | None = None, count: int | None | bool = False
    ) -> sparse.csr_matrix:
        """``transform`` for one question at reading time (the same values, built in one step)."""
        lowered = text.lower()
        columns, values = self._grams(lowered)
        dense = [self.cues(lowered, count), np.asarray(vector, dtype=np.float32) * self.config.embedding_weight]
        if self.neighbours is not None:
            dense.append(self.neighbours.features(vector[None, :])[0] * self.config.neighbour_weight)
        if self.sentences is not None:
            if pooled is None:
                raise ValueError("this reader scores sentences: pass their pooled scores")
            dense.append(np.asarray(pooled, dtype=np.float32).ravel() * self.config.sentence_weight)
        tail = np.concatenate(dense).astype(np.float32)
        n_grams = len(self.ngrams.vocabulary_)
        nonzero = np.flatnonzero(tail)
        data = np.concatenate([values, tail[nonzero]])
        indices = np.concatenate([columns, (nonzero + n_grams).astype(np.int32)])
        return sparse.csr_matrix(
            (data, indices, np.array([0, len(data)], dtype=np.int32)), shape=(1, n_grams + len(tail))
        )

    def transform(
        self,
        texts: Sequence[str],
        vectors: np.ndarray,
        groups: Sequence[str] | None = None,
        pooled: np.ndarray | None = None,
        cue_memo: dict[str, np.ndarray] | None = None,
        grams: sparse.csr_matrix | None = None,
        near_raw: np.ndarray | None = None,
    ) -> sparse.csr_matrix:
        """``groups``: the training rows' scenarios (their own scenario is left out of the neighbour features);
        ``pooled``: the rows' pooled sentence scores (SentenceScorer.pool), when the reader has sentence scores;
        ``grams`` and ``near_raw``: the rows' n-grams and raw neighbour features when already computed (what
        ``fit`` and ``Neighbours.build`` return for the training rows)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        blocks = [self.lexical(texts, cue_memo, grams), sparse.csr_matrix(vectors * self.config.embedding_weight)]
        if self.neighbours is not None:
            near = self.neighbours.features(vectors, groups, near_raw) * self.config.neighbour_weight
            blocks.append(sparse.csr_matrix(near.astype(np.float32)))
        if self.sentences is not None:
            if pooled is None:
                raise ValueError("this reader scores sentences: pass their pooled scores")
            blocks.append(sparse.csr_matrix(np.asarray(pooled, dtype=np.float32) * self.config.sentence_weight))
        return sparse.hstack(blocks, format="csr")


def _fit_lr(x, y, c: float, balanced: bool = False, tol: float = 1e-4):
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(
        C=c, solver="newton-cg", max_iter=500, tol=tol, class_weight="balanced" if balanced else None, random_state=0
    )
    return model.fit(x, y)


def distinct_rows(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each distinct row once, in order of first appearance, and the index of every row's distinct row (what
    ``np.unique(axis=0)`` gives up to the order, by hashing rows instead of sorting 384 columns: ~4 s -> ~0.1 s)."""
    first: dict[bytes, int] = {}
    keep: list[int] = []
    inverse = np.empty(len(matrix), dtype=np.int64)
    for i, row in enumerate(matrix):
        index = first.setdefault(row.tobytes(), len(first))
        if index == len(keep):
            keep.append(i)
        inverse[i] = index
    return np.ascontiguousarray(matrix[keep]), inverse


SELF_SIMILARITY = 0.9995  # cosine at which a labelled row is the question itself (left out when reading)


class Neighbours:
    """How close a question is to the labelled ways of stating each reading: for every key ("cond:<id>=yes",
    "intent=decision", "task=<id>") the highest and the mean of the three highest cosine similarities to labelled
    questions and evidence spans with that key (a nearest-labelled-examples vote, as features). Examples of the
    question's own scenario are left out when training rows are featurised, so the feature means the same thing at
    training and at reading time."""

    def __init__(self, keys: list[str], vectors: np.ndarray, key_index: np.ndarray, groups: np.ndarray) -> None:
        self.keys = keys
        # Each distinct vector once (a question is a row for its intent, its task and each condition it states):
        # ``vectors[inverse]`` are the rows.
        self.vectors, self.inverse = distinct_rows(np.asarray(vectors, dtype=np.float32))
        self.columns = [np.flatnonzero(key_index == k) for k in range(len(keys))]
        self.groups = groups
        self.mean = np.zeros(2 * len(keys), dtype=np.float32)
        self.std = np.ones(2 * len(keys), dtype=np.float32)

    @classmethod
    def build(
        cls, examples: Sequence[Example], vectors: np.ndarray, spans: dict[str, np.ndarray]
    ) -> tuple[Neighbours, np.ndarray]:
        """The neighbours of the labelled rows, and the examples' own raw features (their scenario left out), which
        standardise every later read and are ``features``' ``raw`` for the training rows."""
        keys: dict[str, int] = {}
        rows: list[np.ndarray] = []
        index: list[int] = []
        groups: list[str] = []

        def add(key: str, vector: np.ndarray, group: str) -> None:
            rows.append(vector)
            index.append(keys.setdefault(key, len(keys)))
            groups.append(group)

        for example, vector in zip(examples, vectors, strict=True):
            add(f"intent={example.intent}", vector, example.scenario)
            for task in example.tasks[:1]:
                add(f"task={task}", vector, example.scenario)
            for cid, value in example.conditions.items():
                add(f"cond:{cid}={value}", vector, example.scenario)
                phrase = example.evidence.get(cid)
                if phrase and phrase in spans:
                    add(f"cond:{cid}={value}", spans[phrase], example.scenario)
        out = cls(list(keys), np.vstack(rows).astype(np.float32), np.asarray(index), np.asarray(groups))
        scenarios = [e.scenario for e in examples]
        raw = out.raw(vectors, scenarios)
        out.mean, out.std = raw.mean(axis=0), raw.std(axis=0) + 1e-3
        return out, raw

    def _similarities(self, vectors: np.ndarray) -> np.ndarray:
        """Cosine similarity to every row, computed once per distinct vector."""
        return _matmul(np.asarray(vectors, dtype=np.float32), self.vectors.T)[:, self.inverse]

    def _buckets(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The keys grouped by their number of rows rounded up to a power of two: per group, the keys, a (keys,
        width) matrix of their distinct-vector indices padded with an index past the end, and their row counts.
        Reading one question then takes one gather and one partition per group instead of one per key."""
        found = getattr(self, "_bucket_cache", None)
        if found is None:
            sizes = np.array([len(c) for c in self.columns])
            width_of = 1 << np.ceil(np.log2(np.maximum(sizes, 1))).astype(int)
            found = []
            for width in np.unique(width_of):
                keys = np.flatnonzero(width_of == width)
                index = np.full((len(keys), width), len(self.vectors), dtype=np.int64)
                for i, k in enumerate(keys):
                    index[i, : sizes[k]] = self.inverse[self.columns[k]]
                found.append((keys, index, sizes[keys]))
            self._bucket_cache = found
        return found

    def _raw_few(self, vectors: np.ndarray) -> np.ndarray:
        """``raw`` for a few questions (no scenario left out): the same values, by padded groups of keys."""
        sims = _matmul(np.asarray(vectors, dtype=np.float32), self.vectors.T)
        sims[sims >= SELF_SIMILARITY] = -1.0  # a labelled question read again is read as if held out
        sims = np.concatenate([sims, np.full((len(sims), 1), -np.inf, dtype=np.float32)], axis=1)
        out = np.zeros((len(sims), 2 * len(self.keys)), dtype=np.float32)
        for keys, index, sizes in self._buckets():
            block = sims[:, index]  # (questions, keys, width)
            top = np.partition(block, -3, axis=2)[:, :, -3:] if block.shape[2] > 3 else block
            out[:, 2 * keys] = top.max(axis=2)
            out[:, 2 * keys + 1] = np.where(np.isfinite(top), top, 0.0).sum(axis=2) / np.minimum(sizes, 3)
        return out

    def raw(self, vectors: np.ndarray, groups: Sequence[str] | None = None) -> np.ndarray:
        if groups is None and len(vectors) <= FEW_ROWS:
            return self._raw_few(vectors)
        sims = self._similarities(vectors)
        if groups is not None:  # leave the question's own scenario out
            sims[np.asarray(groups)[:, None] == self.groups[None, :]] = -1.0
        else:
            sims[sims >= SELF_SIMILARITY] = -1.0
        out = np.zeros((sims.shape[0], 2 * len(self.keys)), dtype=np.float32)
        for k, cols in enumerate(self.columns):
            block = sims[:, cols]
            top = np.partition(block, -3, axis=1)[:, -3:] if block.shape[1] > 3 else block
            out[:, 2 * k] = top.max(axis=1)
            out[:, 2 * k + 1] = top.sum(axis=1) / top.shape[1]
        return out

    def features(
        self, vectors: np.ndarray, groups: Sequence[str] | None = None, raw: np.ndarray | None = None
    ) -> np.ndarray:
        """Standardised neighbour features; ``raw``: these rows' ``raw`` when already computed."""
        if raw is None:
            raw = self.raw(vectors, groups)
        return (raw - self.mean) / self.std


class SentenceScorer:
    """Per Figure 2 condition, how strongly a single sentence states "yes" and "no" (a sentence's e5 vector and
    the flow's cue indicators for it, one ridge regression for all conditions: closed form, milliseconds). A
    question's score for a condition is the highest over its sentences, so the one sentence of a long story that
    mentions adversarial users counts as much as a one-line question would. Trained on the labelled evidence spans
    and the sentences that contain them (their condition's value) and every other sentence (neither)."""

    def __init__(self, flow: DecisionFlow, coef: np.ndarray, intercept: np.ndarray) -> None:
        self.flow = flow
        self.coef = coef.astype(np.float32)  # (features, conditions * 2): per condition "yes", then "no"
        self.intercept = intercept.astype(np.float32)

    @staticmethod
    def cue_block(flow: DecisionFlow, texts: Sequence[str]) -> np.ndarray:
        rows = []
        for text in texts:
            stemmed = stem_text(text)
            for cond in flow.conditions:
                rows.append(float(any_phrase(text, cond.cues_yes, stemmed)))
                rows.append(float(any_phrase(text, cond.cues_no, stemmed)))
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), 2 * len(flow.conditions))

    @classmethod
    def design(cls, flow: DecisionFlow, texts: Sequence[str], vectors: np.ndarray) -> np.ndarray:
        return np.hstack([np.asarray(vectors, dtype=np.float32), cls.cue_block(flow, texts)])

    def scores(self, texts: Sequence[str], vectors: np.ndarray) -> np.ndarray:
        """(sentences, conditions, 2): each sentence's "yes" and "no" score for each condition."""
        out = _matmul(self.design(self.flow, texts, vectors), self.coef) + self.intercept
        return out.reshape(len(texts), len(self.flow.conditions), 2)

    @staticmethod
    def pool(scores: np.ndarray) -> np.ndarray:
        """Per condition: the highest "yes" and the highest "no" score over the question's sentences."""
        return scores.max(axis=0).ravel()

    @classmethod
    def fit(
        cls, flow: DecisionFlow, x: np.ndarray, labels: Sequence[dict[str, str]], alpha: float, positive_weight: float
    ) -> SentenceScorer:
        """``x``: the rows' ``design`` matrix; rows stating some condition weigh ``positive_weight``."""
        y = np.zeros((x.shape[0], 2 * len(flow.conditions)), dtype=np.float64)
        for r, row in enumerate(labels):
            for j, cond in enumerate(flow.conditions):
                value = row.get(cond.id)
                if value is not None:
                    y[r, 2 * j + (0 if value == "yes" else 1)] = 1.0
        w = np.where(y.any(axis=1), positive_weight, 1.0)[:, None]
        xd = x.astype(np.float64)
        mean_x = (w * xd).sum(axis=0) / w.sum()
        mean_y = (w * y).sum(axis=0) / w.sum()
        xc, yc = (xd - mean_x) * np.sqrt(w), (y - mean_y) * np.sqrt(w)
        coef = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ yc)
        return cls(flow, coef, mean_y - mean_x @ coef)


def sentence_rows(
    examples: Sequence[Example],
    segment_vectors: Sequence[np.ndarray],
) -> tuple[list[str], np.ndarray, list[dict[str, str]], list[int]]:
    """Training rows of the sentence scorer: every sentence of every question, labelled with the conditions whose
    evidence span overlaps it; plus which example each row came from. (Evidence spans embedded on their own are
    not rows: their vectors come from another layer and pass than the sentences'.)"""
    texts: list[str] = []
    vectors: list[np.ndarray] = []
    labels: list[dict[str, str]] = []
    owner: list[int] = []
    for i, (example, seg_vectors) in enumerate(zip(examples, segment_vectors, strict=True)):
        text = part_source(example.text)
        ranges = segments(text)
        found: list[dict[str, str]] = [{} for _ in ranges]
        for cid, value in example.conditions.items():
            phrase = example.evidence.get(cid)
            if not phrase:
                continue
            needle = normalize_question(phrase).lower()
            at = text.find(needle)
            if at >= 0:
                for k, (a, b) in enumerate(ranges):
                    if a < at + len(needle) and at < b:
                        found[k][cid] = value
        for k, (a, b) in enumerate(ranges):
            texts.append(text[a:b])
            vectors.append(seg_vectors[k])
            labels.append(found[k])
            owner.append(i)
    return texts, np.vstack(vectors).astype(np.float32), labels, owner


def part_source(text: str) -> str:
    """The text a (cased) question's sentences are found on: its lower-cased form when that keeps the character
    offsets (so they index the cased text and its token offsets too), else the text itself."""
    lowered = text.lower()
    return lowered if len(lowered) == len(text) else text


def part_ranges(text: str) -> list[tuple[int, int]]:
    """The sentence ranges of a (cased) question."""
    return segments(part_source(text))


def encoding_parts(encoding: QueryEncoding) -> tuple[list[str], np.ndarray]:
    """A question's sentences (lower-cased) and their vectors, pooled from the question's own forward pass."""
    source = part_source(encoding.text)
    ranges = segments(source)
    return [source[a:b].lower() for a, b in ranges], encoding.pool(ranges)


def fit_sentences(
    flow: DecisionFlow,
    examples: Sequence[Example],
    segment_vectors: Sequence[np.ndarray],
    config: ReaderConfig,
) -> tuple[SentenceScorer, np.ndarray]:
    """The sentence scorer on all rows, and every question's pooled sentence scores from a scorer that did not see
    its scenario (k-fold by scenario), so the question models learn how far to trust them on new questions."""
    from sklearn.model_selection import GroupKFold

    texts, vectors, labels, owner = sentence_rows(examples, segment_vectors)
    x = SentenceScorer.design(flow, texts, vectors)
    owner_ = np.asarray(owner)
    knobs = (config.sentence_alpha, config.sentence_positive_weight)
    scorer = SentenceScorer.fit(flow, x, labels, *knobs)
    pooled = np.zeros((len(examples), 2 * len(flow.conditions)), dtype=np.float32)
    groups = [e.scenario for e in examples]
    for train_idx, test_idx in GroupKFold(n_splits=config.sentence_folds).split(pooled, groups=groups):
        rows = np.flatnonzero(np.isin(owner_, train_idx))
        part = SentenceScorer.fit(flow, x[rows], [labels[r] for r in rows], *knobs)
        for i in test_idx:
            own = np.flatnonzero(owner_ == i)  # its sentences
            pooled[i] = SentenceScorer.pool((x[own] @ part.coef + part.intercept).reshape(len(own), -1, 2))
    return scorer, pooled


# ---------------------------------------------------------------------------------------------- the reader
class LearnedReader:
    """Per-condition, intent, task and consideration classifiers over one feature row per question."""

    name = "learned"

    def __init__(
        self,
        flow: DecisionFlow,
        lexicon: Lexicon,
        config: ReaderConfig,
        featurizer: Featurizer,
        models: dict,
        fingerprint: str,
    ) -> None:
        self.flow = flow
        self.lexicon = lexicon
        self.config = config
        self.featurizer = featurizer
        self.models = models  # "intent", "task", "cond:<id>", "cons:<id>" -> fitted LogisticRegression (or None)
        self.fingerprint = fingerprint
        # Reads a follow-up turn on its own ("what if only 40 labels?", "which remark is that from?"): trained on the
        # labelled fragments (followups_*.jsonl), kept apart so they do not change how whole questions are read.
        self.followups: LearnedReader | None = None
        # A question given as a plain vector is encoded again for its sentences' vectors (not saved).
        self.encode_tokens: Callable[[list[str], int], list[QueryEncoding]] | None = None
        self._tasks = {t.id: t for t in flow.tasks}
        self._cons = {c.id: c for c in flow.considerations}
        # sklearn's predict_proba validates its input on every call (~2 ms each, 18 models): keep the weights.
        # All models' weights side by side: one sparse product per question scores every output at once.
        fitted = [(key, m) for key, m in models.items() if m is not None]
        # Row-major (a sparse row times a column-major stack took ~10 ms instead of ~0.02 ms).
        self._coef = (
            np.ascontiguousarray(np.hstack([m.coef_.T for _, m in fitted]), dtype=np.float32) if fitted else None
        )
        self._intercept = np.concatenate([m.intercept_ for _, m in fitted]).astype(np.float32) if fitted else None
        self._slices: dict[str, tuple[slice, list[str]]] = {}
        start = 0
        for key, m in fitted:
            width = m.coef_.shape[0]
            self._slices[key] = (slice(start, start + width), [str(c) for c in m.classes_])
            if m.coef_.dtype == np.float32:  # the model's weights become a view of the stack: held once, not twice
                m.coef_ = self._coef[:, start : start + width].T
            start += width
        self._scored: tuple[object, np.ndarray] | None = None

    def hold_half(self) -> None:
        """Keep the weight stack (and each model's view of it) in float16: a served reader holds half the memory
        (~23 MB less for the question and fragment readers); ``scores`` sums in float32. A trained reader keeps
        float32 until it is saved and loaded."""
        if self._coef is None or self._coef.dtype == np.float16:
            return
        half = self._coef.astype(np.float16)
        for key, (where, _) in self._slices.items():
            self.models[key].coef_ = half[:, where].T
        self._coef = half
        self._scored = None

    def scores(self, x) -> np.ndarray:
        """Every model's raw scores for one feature row (computed once per row)."""
        cached = self._scored  # one read: safe when threads share the reader
        if cached is not None and cached[0] is x:
            return cached[1]
        coef = self._coef
        row = sparse.csr_matrix(x) if coef.dtype == np.float16 else None
        if row is not None and row.shape[0] == 1:  # the row's non-zero features' weights only, summed in float32
            out = row.data.astype(np.float32) @ coef[row.indices].astype(np.float32) + self._intercept
        elif row is not None:
            out = np.asarray(row @ coef.astype(np.float32)).ravel() + self._intercept
        else:
            out = np.asarray(x @ coef).ravel() + self._intercept
        self._scored = (x, out)
        return out

    def proba(self, key: str, x) -> tuple[np.ndarray, list[str]] | None:
        """Class probabilities of one model for one feature row (same as predict_proba), or None."""
        if key not in self._slices:
            return None
        where, classes = self._slices[key]
        scores = self.scores(x)[where]
        if len(classes) == 2:
            p = 1.0 / (1.0 + np.exp(-scores[0]))
            return np.array([1.0 - p, p]), classes
        scores = np.exp(scores - scores.max())
        return scores / scores.sum(), classes

    # -------------------------------------------------------------- training
    @classmethod
    def train(
        cls,
        flow: DecisionFlow,
        examples: Sequence[Example],
        vectors: np.ndarray,
        config: ReaderConfig | None = None,
        lexicon: Lexicon | None = None,
        fingerprint: str = "",
        spans: dict[str, np.ndarray] | None = None,
        parts: Callable[[list[str]], list[np.ndarray]] | None = None,
        cue_memo: dict[str, np.ndarray] | None = None,
    ) -> LearnedReader:
        """``spans``: query embeddings of the labelled evidence phrases (by text), for the neighbour features and
        the sentence scorer; ``parts``: per question, its sentences' vectors pooled from the question's own forward
        pass (cached), for the sentence scorer (without it every sentence gets the question's vector);
        ``cue_memo``: cue rows by text shared with other trainings on the same flow, lexicon and config."""
        config = config or ReaderConfig()
        lexicon = lexicon or load_lexicon()
        texts = [e.text for e in examples]
        featurizer = Featurizer(flow, lexicon, config)
        grams = featurizer.fit(texts)
        near_raw = None
        if config.neighbours:
            featurizer.neighbours, near_raw = Neighbours.build(examples, vectors, spans or {})
        featurizer.dimension = int(vectors.shape[1])
        pooled = None
        if config.sentences:
            segment_vectors = (
                parts(texts)
                if parts is not None
                else [np.repeat(v[None, :], len(part_ranges(t)), axis=0) for t, v in zip(texts, vectors, strict=True)]
            )
            featurizer.sentences, pooled = fit_sentences(flow, examples, segment_vectors, config)
        x = featurizer.transform(texts, vectors, [e.scenario for e in examples], pooled, cue_memo, grams, near_raw)
        # (key, rows, labels, C, balanced): independent fits, run on two threads (scipy's sparse products release
        # the GIL), the largest (task) first; each fit is deterministic, so the result does not depend on the order.
        decision_rows = [i for i, e in enumerate(examples) if e.intent == "decision"]
        everyone = list(range(len(examples)))
        jobs: list[tuple[str, list[int], list, float, bool]] = [
            (
                "task",
                decision_rows,
                [examples[i].tasks[0] if examples[i].tasks else NO_TASK for i in decision_rows],
                config.c_task,
                False,
            ),
            ("intent", everyone, [e.intent for e in examples], config.c_intent, False),
        ]
        for cond in flow.conditions:
            y = [e.conditions.get(cond.id, "unstated") for e in examples]
            jobs.append((f"cond:{cond.id}", everyone, y, config.c_condition, config.balanced_conditions))
        for cons in flow.considerations:
            y = [cons.id in e.considerations for e in examples]
            jobs.append(
                (f"cons:{cons.id}", everyone, y, config.c_consideration, False)
                if sum(y) >= config.min_positives
                else (f"cons:{cons.id}", [], [], 0.0, False)
            )

        def fit(job: tuple[str, list[int], list, float, bool]):
            _, rows, y, c, balanced = job
            if len(set(y)) < 2:
                return None
            return _fit_lr(x[rows] if len(rows) < x.shape[0] else x, y, c, balanced, config.tol)

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=config.threads) as pool:
            fitted = list(pool.map(fit, jobs))
        models: dict = {job[0]: model for job, model in zip(jobs, fitted, strict=True)}
        return cls(flow, lexicon, config, featurizer, models, fingerprint)

    # -------------------------------------------------------------- reading
    def sentence_scores(self, text: str, query: QueryVector) -> tuple[list[str], np.ndarray | None]:
        """The question's sentences and their per-condition scores (None without a sentence scorer)."""
        if self.featurizer.sentences is None:
            return [], None
        layer = self.config.part_layer
        if isinstance(query, QueryEncoding) and query.layer != layer:
            query = query.vector
        if not isinstance(query, QueryEncoding) and self.encode_tokens is not None:
            query = self.encode_tokens([text], layer)[0]  # a second forward pass: callers should pass encodings
        if isinstance(query, QueryEncoding):
            parts, vectors = encoding_parts(query)
        else:
            parts = segment_texts(text)
            vectors = np.repeat(np.asarray(query, dtype=np.float32)[None, :], len(parts), axis=0)
        return parts, self.featurizer.sentences.scores(parts, vectors)

    def features(
        self, text: str, query: QueryVector | None, count: int | None | bool = False
    ) -> tuple[sparse.csr_matrix, list[str], np.ndarray | None]:
        """The question's feature row, its sentences and their per-condition scores. ``query``: the question's
        embedding, best with its token vectors (a ``QueryEncoding``: no second forward pass for the sentences);
        ``count``: its label count when already read."""
        if query is None:
            query = np.zeros(self.featurizer.dimension, dtype=np.float32)
        vector = np.asarray(query.vector if isinstance(query, QueryEncoding) else query, dtype=np.float32)
        parts, scores = self.sentence_scores(text, query)
        pooled = None if scores is None else SentenceScorer.pool(scores)
        return self.featurizer.row(text, vector, pooled, count), parts, scores

    def read(
        self,
        text: str,
        vector: QueryVector | None = None,
        follow_ups: Sequence[str] = (),
        follow_up_vectors: Sequence[QueryVector | None] = (),
    ) -> Reading:
        """``text``: the normalised, lower-cased question (earlier turns joined with ``follow_ups``, the chat's
        follow-up turns in order: what each states itself overrides what came before it)."""
        count = label_count(text, self.lexicon)
        x, parts, sentence_scores = self.features(text, vector, count)
        probs, intents = self.proba("intent", x)
        best = int(np.argmax(probs))
        states = self._states(text, x, count, parts, sentence_scores)
        task, task_p = self._task(x)
        considerations = {cid for cid in self._cons if self._consideration(cid, text, x)}
        fragments = self.followups or self
        task_turn = 0
        vectors = list(follow_up_vectors) + [None] * (len(follow_ups) - len(follow_up_vectors))
        for i, (follow_up, follow_up_vector) in enumerate(zip(follow_ups, vectors, strict=True)):
            own_count = label_count(follow_up, self.lexicon)
            own_x, own_parts, own_probs = fragments.features(follow_up, follow_up_vector, own_count)
            own = fragments._states(follow_up, own_x, own_count, own_parts, own_probs)
            own_task, own_task_p = fragments._task(own_x)
            if self.switches_task(task, own, own_task, own_task_p, states):
                # "not a score: write feedback comments instead": what the task is comes from the follow-up
                # alone; the earlier facts about the user's data (labels, drifting inputs) still hold.
                states.update({c.id: own[c.id] for c in self.flow.conditions if c.about == "task"})
                task, task_p, task_turn = own_task, own_task_p, i + 1
            states.update({cid: st for cid, st in own.items() if st.holds is not None})
            count = own_count if own_count is not None else count
            considerations |= {cid for cid in self._cons if fragments._consideration(cid, follow_up, own_x)}
            if i == len(follow_ups) - 1:  # whether the turn asks what the survey says, or leaves the topic: its own
                own_probs, own_intents = fragments.proba("intent", own_x)
                own_best = int(np.argmax(own_probs))
                bar = {"content": self.config.follow_up_content_p, "offtopic": self.config.follow_up_offtopic_p}
                if own_probs[own_best] >= bar.get(own_intents[own_best], 2.0):
                    probs, intents, best = own_probs, own_intents, own_best
        considerations = [self._cons[cid] for cid in self._cons if cid in considerations]
        return Reading(
            intent=intents[best],
            intent_p=float(probs[best]),
            states=states,
            label_count=count,
            task=task,
            task_score=task_p,
            task_named=task is not None,
            considerations=considerations,
            reader=self.name,
            task_turn=task_turn,
        )

    def switches_task(
        self, task: Task | None, own: dict[str, ConditionState], own_task: Task | None, own_task_p: float,
        before: dict[str, ConditionState] | None = None,
    ) -> bool:
        """Whether a follow-up's own reading changes what the task is, confidently (``follow_up_switch_p``): it
        names another catalog task; says the task is of a kind (a task condition holds: "write feedback comments
        instead" is creative generation); or takes away a kind the task had (``before``: the reading so far;
        "forget the chat, only the moderation filter" after a chatbot, "just the ticket classification" after a
        several-jobs assistant). A condition that only narrows the task ("not the explanation") or a detail of a
        knowledge-intensive task ("we pass the fare tables in") keeps the task; it overrides as any stated fact
        does."""
        least = self.config.follow_up_switch_p
        if own_task is not None and own_task != task and own_task_p >= least:
            return True
        details = {cid for c in self.flow.conditions for cid in c.implies} | {
            c.id for c in self.flow.conditions if c.implies}
        before = before or {}
        for st in own.values():
            if st.condition.about != "task" or st.condition.id in details or (st.p or 0.0) < least:
                continue
            had = before.get(st.condition.id)
            if st.holds is True or (st.holds is False and had is not None and had.holds is True):
                return True
        return False

    def _states(
        self, text: str, x, count: int | None, parts: list[str], sentence_scores: np.ndarray | None
    ) -> dict[str, ConditionState]:
        states: dict[str, ConditionState] = {}
        for j, cond in enumerate(self.flow.conditions):
            found = self.proba(f"cond:{cond.id}", x)
            state = ConditionState(cond, None, "", "", None)
            if found is not None:
                probs, classes = found
                k = self._choose(probs, classes)
                value = classes[k]
                if value != "unstated":
                    holds = value == "yes"
                    evidence = _longest(text, cond.cues_yes if holds else cond.cues_no) or ""
                    if not evidence and sentence_scores is not None and len(parts) > 1:
                        best_part = int(np.argmax(sentence_scores[:, j, 0 if holds else 1]))
                        evidence = parts[best_part][:160]
                    evidence = evidence or self.evidence(text, cond, holds, self.models[f"cond:{cond.id}"], k)
                    state = ConditionState(cond, holds, "learned", evidence, float(probs[k]))
                else:
                    state = ConditionState(cond, None, "", "", float(probs[k]))
            if cond.numeric and count is not None:
                state = numeric_state(cond, count) or state
            states[cond.id] = state
        return states

    def _choose(self, probs: np.ndarray, classes: list[str]) -> int:
        """The value read: "yes" when its probability reaches ``yes_min_p`` (when set), else the likeliest other."""
        k = int(np.argmax(probs))
        if self.config.yes_min_p is None or "yes" not in classes:
            return k
        yes = classes.index("yes")
        if probs[yes] >= self.config.yes_min_p:
            return yes
        if k == yes:
            others = probs.copy()
            others[yes] = -1.0
            return int(np.argmax(others))
        return k

    def _task(self, x):
        found = self.proba("task", x)
        if found is None:
            return None, 0.0
        probs, classes = found
        k = int(np.argmax(probs))
        label = classes[k]
        if label == NO_TASK or probs[k] < self.config.task_min_p:
            return None, float(probs[k]) if label != NO_TASK else 0.0
        return self._tasks.get(label), float(probs[k])

    def fragment_intent(self, text: str, vector: QueryVector | None = None) -> tuple[str, float] | None:
        """A follow-up's intent read on its own words by the fragment reader: ("decision" | "content" |
        "offtopic", p), or None without a fragment reader. ``text``: normalised, lower-cased."""
        if self.followups is None:
            return None
        x, _, _ = self.followups.features(text, vector, label_count(text, self.lexicon))
        probs, intents = self.followups.proba("intent", x)
        best = int(np.argmax(probs))
        return intents[best], float(probs[best])

    def _consideration(self, cid: str, text: str, x) -> bool:
        found = self.proba(f"cons:{cid}", x)
        if found is None:  # too few labelled examples: its cue phrases decide
            return any_phrase(text, self._cons[cid].cues)
        probs, classes = found
        return bool(probs[classes.index("True")] >= self.config.consideration_min_p)

    def evidence(self, text: str, cond, holds: bool, model, k: int) -> str:
        """The words the reading came from: a cue phrase of that polarity, else the sentence whose lexical
        features push hardest towards the predicted value."""
        phrase = _longest(text, cond.cues_yes if holds else cond.cues_no)
        if phrase:
            return phrase
        parts = [p.strip() for p in _SENTENCE.split(text) if p and p.strip()]
        if len(parts) <= 1:
            return text.strip()[:160]
        n_grams = len(self.featurizer.ngrams.vocabulary_)
        coef = model.coef_
        weights = coef[k] if coef.shape[0] > 1 else (coef[0] if k == 1 else -coef[0])
        scores = self.featurizer.ngrams.transform(parts) @ np.asarray(weights[:n_grams], dtype=np.float32)
        return parts[int(np.argmax(scores))][:160]

    # -------------------------------------------------------------- persistence
    def save(self, path: Path) -> None:
        """Atomic: a crash leaves the old model or the new one."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            dump_model(
                {
                    "version": READER_VERSION,
                    "fingerprint": self.fingerprint,
                    "config": self.config,
                    "featurizer": self.featurizer,
                    "models": self.models,
                    "followups": None if self.followups is None
                    else {"featurizer": self.followups.featurizer, "models": self.followups.models},
                },
                tmp,
            )
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @classmethod
    def load(cls, path: Path, flow: DecisionFlow, fingerprint: str) -> LearnedReader | None:
        """The saved model, or None when it is missing, unreadable or trained on other data."""
        try:
            blob = load_model(path)
        except Exception:  # noqa: BLE001 - any unreadable file means: retrain
            return None
        if (
            not isinstance(blob, dict)
            or blob.get("version") != READER_VERSION
            or blob.get("fingerprint") != fingerprint
        ):
            return None
        def build(featurizer: Featurizer, models: dict) -> LearnedReader:
            featurizer.flow = flow
            featurizer.rules = RuleReader(flow, featurizer.lexicon)
            return cls(flow, featurizer.lexicon, blob["config"], featurizer, models, fingerprint)

        reader = build(blob["featurizer"], blob["models"])
        reader.hold_half()
        if blob.get("followups"):
            reader.followups = build(blob["followups"]["featurizer"], blob["followups"]["models"])
            reader.followups.hold_half()
        return reader


# ---------------------------------------------------------------------------------------------- embeddings cache
class EmbeddingCache:
    """Query embeddings of the reading data, keyed by model and text, so retraining does not re-embed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.vectors: dict[str, np.ndarray] = {}
        if path.exists():
            try:
                with np.load(path) as data:
                    self.vectors = dict(zip(data["keys"].tolist(), data["vectors"], strict=True))
            except Exception:  # noqa: BLE001 - a damaged cache is rebuilt
                self.vectors = {}

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha1(text.encode("utf-8")).hexdigest()

    def embed(
        self, texts: Sequence[str], encode: Callable[[list[str]], np.ndarray], progress: bool = False
    ) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if self.key(t) not in self.vectors))
        for batch in self._batches(missing, f"embedding {len(missing)} new questions", progress):
            for text, vec in zip(batch, encode(batch), strict=True):
                self.vectors[self.key(text)] = np.asarray(vec, dtype=np.float32)
        return np.vstack([self.vectors[self.key(t)] for t in texts])

    def _batches(self, missing: list[str], what: str, progress: bool) -> Iterator[list[str]]:
        """``missing`` in batches of 64 (the caller stores each batch's vectors), with progress lines; the cache is
        saved once after the last batch."""
        if not missing:
            return
        if progress:
            print(f"train-reader: {what} …", file=sys.stderr, flush=True)
        for start in range(0, len(missing), 64):
            yield missing[start : start + 64]
            if progress:
                print(f"  {min(start + 64, len(missing))}/{len(missing)}", file=sys.stderr, flush=True)
        self._save()

    def parts(
        self,
        texts: Sequence[str],
        encode_tokens: Callable[[list[str], int], list[QueryEncoding]],
        layer: int,
        progress: bool = False,
    ) -> list[np.ndarray]:
        """Per question, its sentences' vectors pooled from hidden layer ``layer`` of its own forward pass
        (``encoding_parts``); the question's vector is stored on the way."""

        def keys(text: str) -> list[str]:
            return [self.key(f"part {layer} {k}\x1f{text}") for k in range(len(part_ranges(text)))]

        missing = list(dict.fromkeys(t for t in texts if any(k not in self.vectors for k in keys(t))))
        for batch in self._batches(missing, f"encoding {len(missing)} questions' sentences", progress):
            for text, encoding in zip(batch, encode_tokens(batch, layer), strict=True):
                self.vectors[self.key(text)] = encoding.vector
                for key, vector in zip(keys(text), encoding_parts(encoding)[1], strict=True):
                    self.vectors[key] = vector
        return [np.vstack([self.vectors[k] for k in keys(t)]) for t in texts]

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = np.array(list(self.vectors))
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".npz")
        os.close(fd)
        try:
            np.savez(tmp, keys=keys, vectors=np.vstack(list(self.vectors.values())))
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def span_vectors(
    examples: Sequence[Example],
    cache: EmbeddingCache,
    encode: Callable[[list[str]], np.ndarray],
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Query embeddings of every labelled evidence phrase, by its text."""
    phrases = sorted({p for e in examples for p in e.evidence.values() if p and p.strip()})
    if not phrases:
        return {}
    vectors = cache.embed([normalize_question(p) for p in phrases], encode, progress)
    return dict(zip(phrases, vectors, strict=True))


def cache_path(settings, embedder) -> Path:
    name = re.sub(r"[^a-zA-Z0-9]+", "-", str(getattr(embedder, "name", "model")))[:60]
    return Path(settings.model_cache_dir) / "reader" / f"embeddings-{name}.npz"


def model_path(settings) -> Path:
    """Beside the store (not in git): ``<store_path>/../reader/reader.pkl``."""
    return Path(settings.store_path).parent / "reader" / "reader.pkl"


def ensure_reader(settings, embedder, flow: DecisionFlow, progress: bool = False, force: bool = False) -> LearnedReader:
    """The trained reader for the current reading data: loaded when up to date, else trained and saved."""
    fingerprint = data_hash(settings.corpus_dir)
    path = model_path(settings)
    if not force:
        reader = LearnedReader.load(path, flow, fingerprint)
        if reader is not None:
            for part in (reader, reader.followups):
                if part is not None:
                    part.encode_tokens = embedder.encode_query_tokens
            return reader
    examples = load_examples(settings.corpus_dir, flow)
    if not examples:
        raise KnowledgeError(f"{settings.corpus_dir / 'reader'}: no labelled questions (questions_*.jsonl)")
    fragments = load_examples(settings.corpus_dir, flow, FOLLOWUPS)
    if progress:
        print(f"train-reader: {len(examples)} labelled questions, {len(fragments)} follow-up fragments",
              file=sys.stderr, flush=True)
    cache = EmbeddingCache(cache_path(settings, embedder))
    layer = ReaderConfig().part_layer
    cue_memo: dict[str, np.ndarray] = {}  # the fragment reader's sampled questions are the question reader's too

    def train(rows: list[Example]) -> LearnedReader:
        parts = cache.parts([e.text for e in rows], embedder.encode_query_tokens, layer, progress)
        vectors = cache.embed([e.text for e in rows], embedder.encode_queries, progress)
        spans = span_vectors(rows, cache, embedder.encode_queries, progress)
        trained = LearnedReader.train(
            flow, rows, vectors, fingerprint=fingerprint, spans=spans, parts=_lookup(rows, parts), cue_memo=cue_memo
        )
        trained.encode_tokens = embedder.encode_query_tokens
        return trained

    reader = train(examples)
    if fragments:
        reader.followups = train(fragment_rows(fragments, examples, reader.config.fragment_questions))
    reader.save(path)
    return reader


def fragment_rows(fragments: list[Example], questions: Sequence[Example], n_questions: int) -> list[Example]:
    """What the fragment reader learns from: every labelled fragment and a fixed sample of standalone questions."""
    if n_questions >= len(questions):
        return [*fragments, *questions]
    picked = np.random.default_rng(0).choice(len(questions), n_questions, replace=False)
    return [*fragments, *(questions[i] for i in sorted(picked.tolist()))]


def cached_encoding(text: str, vector: np.ndarray, parts: np.ndarray, layer: int) -> QueryEncoding:
    """A question's encoding rebuilt from its cached sentence vectors (``EmbeddingCache.parts``): one "token" per
    sentence, spanning it, so ``encoding_parts`` gives those vectors back without another forward pass."""
    ranges = np.asarray(part_ranges(text), dtype=np.int32).reshape(-1, 2)
    return QueryEncoding(text, vector, np.asarray(parts, dtype=np.float32), ranges, layer)


def _lookup(examples: Sequence[Example], parts: list[np.ndarray]) -> Callable[[list[str]], list[np.ndarray]]:
    """``parts`` of the examples, looked up by question text."""
    found = {e.text: p for e, p in zip(examples, parts, strict=True)}
    return lambda texts: [found[t] for t in texts]


# ---------------------------------------------------------------------------------------------- evaluation
def reading_scores(
    flow: DecisionFlow, examples: Sequence[Example], readings: Sequence[Reading], config: ReaderConfig | None = None
) -> dict:
    """Intent, per-condition (yes/no/unstated confusion), task and verdict accuracy of readings against labels.
    The verdict is walked as the product walks a learned reading (``config``'s knobs, the default ones unless
    given)."""
    from types import SimpleNamespace

    from bot.engine import DecisionEngine

    engine = DecisionEngine(flow, reader=SimpleNamespace(config=config or ReaderConfig()))  # only its knobs are read
    out: dict = {"n": len(examples)}
    out["intent"] = round(float(np.mean([r.intent == e.intent for e, r in zip(examples, readings, strict=True)])), 4)
    decision = [(e, r) for e, r in zip(examples, readings, strict=True) if e.intent == "decision"]
    per_condition = {}
    for cond in flow.conditions:
        confusion: dict[str, dict[str, int]] = {v: dict.fromkeys(VALUES, 0) for v in VALUES}
        for e, r in decision:
            confusion[e.conditions.get(cond.id, "unstated")][r.states[cond.id].value] += 1
        total = sum(sum(row.values()) for row in confusion.values())
        right = sum(confusion[v][v] for v in VALUES)
        per_condition[cond.id] = {"accuracy": round(right / total, 4) if total else None, "confusion": confusion}
    out["conditions"] = per_condition
    with_task = [(e, r) for e, r in decision]
    out["task"] = (
        round(float(np.mean([(r.task.id if r.task else NO_TASK) in (e.tasks or [NO_TASK]) for e, r in with_task])), 4)
        if with_task
        else None
    )
    verdicts = []
    for e, r in decision:
        if e.verdict is None:
            continue
        verdicts.append(engine.decide_reading(replace(r, intent="decision")).verdict == e.verdict)
    out["verdict"] = round(float(np.mean(verdicts)), 4) if verdicts else None
    return out


def cross_validate(
    flow: DecisionFlow,
    examples: Sequence[Example],
    vectors: np.ndarray,
    folds: int = 5,
    config: ReaderConfig | None = None,
    lexicon: Lexicon | None = None,
    spans: dict[str, np.ndarray] | None = None,
    parts: Callable[[list[str]], list[np.ndarray]] | None = None,
    encodings: Sequence[QueryVector] | None = None,
) -> dict:
    """k-fold by scenario (paraphrases of one situation stay in one fold): learned vs rule reader, per language.
    ``encodings``: what a held-out question is read from (default: its plain vector)."""
    from sklearn.model_selection import GroupKFold

    lexicon = lexicon or load_lexicon()
    rules = RuleReader(flow, lexicon)
    learned: list[Reading | None] = [None] * len(examples)
    groups = [e.scenario for e in examples]
    cue_memo: dict[str, np.ndarray] = {}
    for train_idx, test_idx in GroupKFold(n_splits=folds).split(np.zeros(len(examples)), groups=groups):
        reader = LearnedReader.train(
            flow, [examples[i] for i in train_idx], vectors[train_idx], config, lexicon, spans=spans, parts=parts,
            cue_memo=cue_memo,
        )
        for i in test_idx:
            learned[i] = reader.read(examples[i].text.lower(), encodings[i] if encodings else vectors[i])
    rule_readings = [rules.read(e.text.lower()) for e in examples]
    out = {}
    for lang in ("all", "en", "ja"):
        idx = [i for i, e in enumerate(examples) if lang == "all" or e.lang == lang]
        subset = [examples[i] for i in idx]
        out[lang] = {
            "learned": reading_scores(flow, subset, [learned[i] for i in idx]),
            "rules": reading_scores(flow, subset, [rule_readings[i] for i in idx]),
        }
    return out


def cv_table(result: dict) -> str:
    """Markdown table: rules vs learned, per language."""
    first = result["all"]["learned"]
    conds = list(first["conditions"])
    cols = ["intent", "task", "verdict", *conds]
    lines = ["| lang | reader | n | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 3)]
    for lang, pair in result.items():
        for name in ("rules", "learned"):
            s = pair[name]
            cells = [s["intent"], s["task"], s["verdict"], *(s["conditions"][c]["accuracy"] for c in conds)]
            lines.append(
                f"| {lang} | {name} | {s['n']} | "
                + " | ".join("—" if v is None else f"{v * 100:.1f}" for v in cells)
                + " |"
            )
    return "\n".join(lines)


def main(settings, cv: bool = False, folds: int = 5, as_json: bool = False) -> int:
    """``python -m bot train-reader``: train (always, from the cached embeddings), optionally cross-validate."""
    import time

    from bot.knowledge import load_flow
    from ingest.embeddings import load_embedder

    flow = load_flow(settings.corpus_dir / "decision_flow.toml")
    embedder = load_embedder(settings)
    started = time.perf_counter()
    reader = ensure_reader(settings, embedder, flow, progress=True, force=True)
    seconds = time.perf_counter() - started
    examples = load_examples(settings.corpus_dir, flow)
    summary: dict = {
        "examples": len(examples),
        "seconds": round(seconds, 1),
        "model": str(model_path(settings)),
        "fingerprint": reader.fingerprint,
    }
    if cv:
        cache = EmbeddingCache(cache_path(settings, embedder))
        vectors = cache.embed([e.text for e in examples], embedder.encode_queries)
        layer = ReaderConfig().part_layer
        parts = cache.parts([e.text for e in examples], embedder.encode_query_tokens, layer)
        summary["cv"] = cross_validate(
            flow,
            examples,
            vectors,
            folds,
            spans=span_vectors(examples, cache, embedder.encode_queries),
            parts=_lookup(examples, parts),
            encodings=[
                cached_encoding(e.text, v, p, layer) for e, v, p in zip(examples, vectors, parts, strict=True)
            ],
        )
    if as_json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        print(f"train-reader: {len(examples)} questions, trained in {seconds:.1f} s -> {summary['model']}")
        if cv:
            print(cv_table(summary["cv"]))
    return 0
