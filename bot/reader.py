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
import re
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy import sparse

from bot.engine import (
    ConditionState,
    Reading,
    RuleReader,
    _longest,
    any_phrase,
    label_count,
    numeric_state,
    stem_text,
)
from bot.knowledge import DecisionFlow, KnowledgeError, read_jsonl
from bot.lexicon import Lexicon, load_lexicon
from bot.text import normalize_question

READER_VERSION = 2
VALUES = ("no", "unstated", "yes")
INTENTS = ("content", "decision", "offtopic")
NO_TASK = "-"
_SENTENCE = re.compile(r"(?<=[。！？!?\n])|(?<=[.;])\s+|(?<=[、,])(?=.{25,})")


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
    task_min_p: float = 0.35  # below: no task is taken
    consideration_min_p: float = 0.5
    min_positives: int = 4  # a consideration with fewer labelled examples falls back to its cue phrases
    yes_min_p: float | None = None  # None: the likeliest value wins
    neighbours: bool = True  # similarity to labelled questions/evidence spans per reading (see Neighbours)
    neighbour_weight: float = 0.3
    balanced_conditions: bool = True  # 5-fold CV by scenario: verdict 80.0 % balanced vs 67.7 % unweighted


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

    @property
    def text(self) -> str:
        return normalize_question(self.question)


# ---------------------------------------------------------------------------------------------- data
def reading_files(corpus_dir: Path) -> list[Path]:
    return sorted((corpus_dir / "reader").glob("questions_*.jsonl"))


def load_examples(corpus_dir: Path, flow: DecisionFlow) -> list[Example]:
    """Every labelled question under ``corpus/reader/``; a malformed line raises KnowledgeError naming the file,
    the line and the field."""
    cond_ids = {c.id for c in flow.conditions}
    task_ids = {t.id for t in flow.tasks}
    cons_ids = {c.id for c in flow.considerations}
    out: list[Example] = []
    seen: set[str] = set()
    for path in reading_files(corpus_dir):
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
    paths = [*reading_files(corpus_dir), corpus_dir / "decision_flow.toml", lexicon_path or load_lexicon_path()]
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
        self.dimension = 0
        self.ngrams = TfidfVectorizer(
            analyzer="char_wb",
            ngram_range=config.ngram_range,
            min_df=config.min_df,
            sublinear_tf=True,
            dtype=np.float32,
        )

    @property
    def n_lexical(self) -> int:
        return len(self.ngrams.vocabulary_) + self.n_cues

    @property
    def n_cues(self) -> int:
        return 2 * len(self.flow.conditions) + 3 + len(self.flow.tasks) + 4 + len(self.flow.considerations)

    def cues(self, text: str) -> np.ndarray:
        """Indicator features a hand-written reader would have used as rules."""
        stemmed = stem_text(text)
        row: list[float] = []
        for cond in self.flow.conditions:
            row.append(float(any_phrase(text, cond.cues_yes, stemmed)))
            row.append(float(any_phrase(text, cond.cues_no, stemmed)))
        plain = re.sub(r"[,、]", "", text)
        row.append(float(any(c in plain for c in self.lexicon.decision_cues)))
        row.append(float(any(c in text for c in self.lexicon.content_cues)))
        row.append(float(any(c in text for c in self.lexicon.survey_words)))
        for task in self.flow.tasks:
            row.append(float(any_phrase(text, task.all_names, stemmed)))
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

    def fit(self, texts: Sequence[str]) -> Featurizer:
        self.ngrams.fit([t.lower() for t in texts])
        return self

    def lexical(self, texts: Sequence[str]) -> sparse.csr_matrix:
        lowered = [t.lower() for t in texts]
        grams = self.ngrams.transform(lowered)
        cues = sparse.csr_matrix(np.vstack([self.cues(t) for t in lowered]))
        return sparse.hstack([grams, cues], format="csr")

    def transform(
        self, texts: Sequence[str], vectors: np.ndarray, groups: Sequence[str] | None = None
    ) -> sparse.csr_matrix:
        """``groups``: the training rows' scenarios (their own scenario is left out of the neighbour features)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        blocks = [self.lexical(texts), sparse.csr_matrix(vectors * self.config.embedding_weight)]
        if self.neighbours is not None:
            near = self.neighbours.features(vectors, groups) * self.config.neighbour_weight
            blocks.append(sparse.csr_matrix(near.astype(np.float32)))
        return sparse.hstack(blocks, format="csr")


def _fit_lr(x, y, c: float, balanced: bool = False):
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(
        C=c, solver="newton-cg", max_iter=500, class_weight="balanced" if balanced else None, random_state=0
    )
    return model.fit(x, y)


class Neighbours:
    """How close a question is to the labelled ways of stating each reading: for every key ("cond:<id>=yes",
    "intent=decision", "task=<id>") the highest and the mean of the three highest cosine similarities to labelled
    questions and evidence spans with that key (a nearest-labelled-examples vote, as features). Examples of the
    question's own scenario are left out when training rows are featurised, so the feature means the same thing at
    training and at reading time."""

    def __init__(self, keys: list[str], vectors: np.ndarray, key_index: np.ndarray, groups: np.ndarray) -> None:
        self.keys = keys
        self.vectors = vectors
        self.columns = [np.flatnonzero(key_index == k) for k in range(len(keys))]
        self.groups = groups
        self.mean = np.zeros(2 * len(keys), dtype=np.float32)
        self.std = np.ones(2 * len(keys), dtype=np.float32)

    @classmethod
    def build(cls, examples: Sequence[Example], vectors: np.ndarray, spans: dict[str, np.ndarray]) -> Neighbours:
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
        raw = out.raw(vectors, [e.scenario for e in examples])
        out.mean, out.std = raw.mean(axis=0), raw.std(axis=0) + 1e-3
        return out

    def raw(self, vectors: np.ndarray, groups: Sequence[str] | None = None) -> np.ndarray:
        sims = np.asarray(vectors, dtype=np.float32) @ self.vectors.T
        if groups is not None:  # leave the question's own scenario out
            sims[np.asarray(groups)[:, None] == self.groups[None, :]] = -1.0
        out = np.zeros((sims.shape[0], 2 * len(self.keys)), dtype=np.float32)
        for k, cols in enumerate(self.columns):
            block = sims[:, cols]
            top = -np.sort(-block, axis=1)[:, :3] if block.shape[1] > 3 else block
            out[:, 2 * k] = block.max(axis=1)
            out[:, 2 * k + 1] = top.mean(axis=1)
        return out

    def features(self, vectors: np.ndarray, groups: Sequence[str] | None = None) -> np.ndarray:
        return (self.raw(vectors, groups) - self.mean) / self.std


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
        self._tasks = {t.id: t for t in flow.tasks}
        self._cons = {c.id: c for c in flow.considerations}
        # sklearn's predict_proba validates its input on every call (~2 ms each, 18 models): keep the weights.
        self._linear = {
            key: (m.coef_.T.astype(np.float32), m.intercept_.astype(np.float32), [str(c) for c in m.classes_])
            for key, m in models.items()
            if m is not None
        }

    def proba(self, key: str, x) -> tuple[np.ndarray, list[str]] | None:
        """Class probabilities of one model for one feature row (same as predict_proba), or None."""
        if key not in self._linear:
            return None
        coef, intercept, classes = self._linear[key]
        scores = np.asarray(x @ coef).ravel() + intercept
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
    ) -> LearnedReader:
        """``spans``: query embeddings of the labelled evidence phrases (by text), for the neighbour features."""
        config = config or ReaderConfig()
        lexicon = lexicon or load_lexicon()
        texts = [e.text for e in examples]
        featurizer = Featurizer(flow, lexicon, config).fit(texts)
        featurizer.neighbours = Neighbours.build(examples, vectors, spans or {}) if config.neighbours else None
        featurizer.dimension = int(vectors.shape[1])
        x = featurizer.transform(texts, vectors, [e.scenario for e in examples])
        models: dict = {"intent": _fit_lr(x, [e.intent for e in examples], config.c_intent)}
        decision_rows = [i for i, e in enumerate(examples) if e.intent == "decision"]
        for cond in flow.conditions:
            y = [e.conditions.get(cond.id, "unstated") for e in examples]
            models[f"cond:{cond.id}"] = (
                _fit_lr(x, y, config.c_condition, config.balanced_conditions) if len(set(y)) > 1 else None
            )
        task_y = [examples[i].tasks[0] if examples[i].tasks else NO_TASK for i in decision_rows]
        models["task"] = _fit_lr(x[decision_rows], task_y, config.c_task) if len(set(task_y)) > 1 else None
        for cons in flow.considerations:
            y = [cons.id in e.considerations for e in examples]
            enough = sum(y) >= config.min_positives
            models[f"cons:{cons.id}"] = _fit_lr(x, y, config.c_consideration) if enough else None
        return cls(flow, lexicon, config, featurizer, models, fingerprint)

    # -------------------------------------------------------------- reading
    def features(self, text: str, vector: np.ndarray | None) -> sparse.csr_matrix:
        if vector is None:
            vector = np.zeros(self.featurizer.dimension, dtype=np.float32)
        return self.featurizer.transform([text], np.asarray(vector, dtype=np.float32)[None, :])

    def read(
        self,
        text: str,
        vector: np.ndarray | None = None,
        follow_up: str | None = None,
        follow_up_vector: np.ndarray | None = None,
    ) -> Reading:
        """``text``: the normalised, lower-cased question (an earlier question joined with a ``follow_up``: what
        the follow-up itself states overrides the earlier facts)."""
        x = self.features(text, vector)
        probs, intents = self.proba("intent", x)
        best = int(np.argmax(probs))
        count = label_count(text, self.lexicon)
        states = self._states(text, x, count)
        if follow_up:
            own_count = label_count(follow_up, self.lexicon)
            own = self._states(follow_up, self.features(follow_up, follow_up_vector), own_count)
            states.update({cid: st for cid, st in own.items() if st.holds is not None})
            count = own_count if own_count is not None else count
        task, task_p = self._task(x)
        considerations = [self._cons[cid] for cid in self._cons if self._consideration(cid, text, x)]
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
        )

    def _states(self, text: str, x, count: int | None) -> dict[str, ConditionState]:
        states: dict[str, ConditionState] = {}
        for cond in self.flow.conditions:
            found = self.proba(f"cond:{cond.id}", x)
            state = ConditionState(cond, None, "", "", None)
            if found is not None:
                probs, classes = found
                k = self._choose(probs, classes)
                value = classes[k]
                if value != "unstated":
                    holds = value == "yes"
                    evidence = self.evidence(text, cond, holds, self.models[f"cond:{cond.id}"], k)
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
        scores = self.featurizer.ngrams.transform(parts) @ weights[:n_grams]
        return parts[int(np.argmax(scores))][:160]

    # -------------------------------------------------------------- persistence
    def save(self, path: Path) -> None:
        """Atomic: a crash leaves the old model or the new one."""
        import joblib

        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            joblib.dump(
                {
                    "version": READER_VERSION,
                    "fingerprint": self.fingerprint,
                    "config": self.config,
                    "featurizer": self.featurizer,
                    "models": self.models,
                },
                tmp,
                compress=3,
            )
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @classmethod
    def load(cls, path: Path, flow: DecisionFlow, fingerprint: str) -> LearnedReader | None:
        """The saved model, or None when it is missing, unreadable or trained on other data."""
        import joblib

        try:
            blob = joblib.load(path)
        except Exception:  # noqa: BLE001 - any unreadable file means: retrain
            return None
        if (
            not isinstance(blob, dict)
            or blob.get("version") != READER_VERSION
            or blob.get("fingerprint") != fingerprint
        ):
            return None
        featurizer = blob["featurizer"]
        featurizer.flow = flow
        featurizer.rules = RuleReader(flow, featurizer.lexicon)
        return cls(flow, featurizer.lexicon, blob["config"], featurizer, blob["models"], fingerprint)


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
        if missing:
            if progress:
                print(f"train-reader: embedding {len(missing)} new questions …", file=sys.stderr, flush=True)
            for start in range(0, len(missing), 64):
                batch = missing[start : start + 64]
                for text, vec in zip(batch, encode(batch), strict=True):
                    self.vectors[self.key(text)] = np.asarray(vec, dtype=np.float32)
                if progress:
                    print(f"  {min(start + 64, len(missing))}/{len(missing)}", file=sys.stderr, flush=True)
            self._save()
        return np.vstack([self.vectors[self.key(t)] for t in texts])

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
    """Beside the store (not in git): ``<store_path>/../reader/reader.joblib``."""
    return Path(settings.store_path).parent / "reader" / "reader.joblib"


def ensure_reader(settings, embedder, flow: DecisionFlow, progress: bool = False, force: bool = False) -> LearnedReader:
    """The trained reader for the current reading data: loaded when up to date, else trained and saved."""
    fingerprint = data_hash(settings.corpus_dir)
    path = model_path(settings)
    if not force:
        reader = LearnedReader.load(path, flow, fingerprint)
        if reader is not None:
            return reader
    examples = load_examples(settings.corpus_dir, flow)
    if not examples:
        raise KnowledgeError(f"{settings.corpus_dir / 'reader'}: no labelled questions (questions_*.jsonl)")
    if progress:
        print(f"train-reader: {len(examples)} labelled questions", file=sys.stderr, flush=True)
    cache = EmbeddingCache(cache_path(settings, embedder))
    vectors = cache.embed([e.text for e in examples], embedder.encode_queries, progress)
    spans = span_vectors(examples, cache, embedder.encode_queries, progress)
    reader = LearnedReader.train(flow, examples, vectors, fingerprint=fingerprint, spans=spans)
    reader.save(path)
    return reader


# ---------------------------------------------------------------------------------------------- evaluation
def reading_scores(flow: DecisionFlow, examples: Sequence[Example], readings: Sequence[Reading]) -> dict:
    """Intent, per-condition (yes/no/unstated confusion), task and verdict accuracy of readings against labels."""
    from bot.engine import DecisionEngine

    engine = DecisionEngine(flow, reader=object())
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
) -> dict:
    """k-fold by scenario (paraphrases of one situation stay in one fold): learned vs rule reader, per language."""
    from sklearn.model_selection import GroupKFold

    lexicon = lexicon or load_lexicon()
    rules = RuleReader(flow, lexicon)
    learned: list[Reading | None] = [None] * len(examples)
    groups = [e.scenario for e in examples]
    for train_idx, test_idx in GroupKFold(n_splits=folds).split(np.zeros(len(examples)), groups=groups):
        reader = LearnedReader.train(
            flow, [examples[i] for i in train_idx], vectors[train_idx], config, lexicon, spans=spans
        )
        for i in test_idx:
            learned[i] = reader.read(examples[i].text.lower(), vectors[i])
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
        summary["cv"] = cross_validate(
            flow, examples, vectors, folds, spans=span_vectors(examples, cache, embedder.encode_queries)
        )
    if as_json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        print(f"train-reader: {len(examples)} questions, trained in {seconds:.1f} s -> {summary['model']}")
        if cv:
            print(cv_table(summary["cv"]))
    return 0
