"""Follow-up or new question: whether a chat turn needs the previous user turn to make sense (an ellipsis, "why?",
a correction or an added fact about the same situation) or stands alone (a new task, a content or an off-topic
question), learned by logistic regression from the labelled pairs in ``corpus/reader/turns_*.jsonl``.

Features of a (previous, question) pair: the question's e5 query embedding (the service computes it anyway), character
n-grams of the question, the cosine similarity of the two turns' embeddings, the question's length (log characters),
whether the question switches language, and one indicator per word list of the ``[turns]`` table of
``corpus/reader/lexicon.toml`` (openers, why, corrections, added facts, anaphora, ellipsis endings, going back,
new-topic markers).
Cross-validation of each feature block: ``python -m bot train-reader`` (``main``) prints the table.

The model is saved beside the reader's (``<store_path>/../reader/turns.pkl``) and retrained when the turn data,
the ``[turns]`` table or ``TURNS_VERSION`` change (their hash is in the model).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
from scipy import sparse

from bot.knowledge import KnowledgeError, _read_toml, read_jsonl
from bot.reader import EmbeddingCache, cache_path, dump_model, load_model, model_path
from bot.text import detect_language, normalize_question

TURNS_VERSION = 1
LANGS = ("en", "ja")
# kind -> the follow_up value it implies (corpus/README.md, "reader/turns_*.jsonl")
KINDS = {
    "ellipsis": True,
    "why": True,
    "correction": True,
    "added_fact": True,
    "next_item": True,
    "new_task": False,
    "content": False,
    "offtopic": False,
}
CUE_GROUPS = ("openers", "why", "corrections", "added_facts", "anaphora", "endings", "returns", "new_topic")
FEATURE_BLOCKS = ("embedding", "ngrams", "cosine", "length", "language_switch", "cues")


@dataclass(frozen=True)
class TurnConfig:
    """Knobs of the turn reader (chosen by cross-validation on the turn pairs; see ``main``)."""

    ngram_range: tuple[int, int] = (1, 4)  # char_wb n-grams of the lower-cased question
    min_df: int = 2
    embedding_weight: float = 1.0  # scale of the e5 vector next to the l2-normalised n-gram vector
    dense_weight: float = 0.5  # scale of the standardised cosine/length and the 0/1 language-switch and cue features
    c: float = 8.0  # inverse regularisation of the logistic regression
    threshold: float = 0.5  # p(follow-up) at or above: a follow-up
    embedding: bool = True
    ngrams: bool = True
    cosine: bool = True
    length: bool = True
    language_switch: bool = True
    cues: bool = True


@dataclass(frozen=True)
class TurnPair:
    id: str
    lang: str
    previous: str
    question: str
    follow_up: bool
    kind: str


# ---------------------------------------------------------------------------------------------- data
def turn_files(corpus_dir: Path) -> list[Path]:
    return sorted((Path(corpus_dir) / "reader").glob("turns_*.jsonl"))


def load_turn_pairs(corpus_dir: Path) -> list[TurnPair]:
    """Every labelled turn pair under ``corpus/reader/``; a malformed line raises KnowledgeError naming the file,
    the line and the field."""
    out: list[TurnPair] = []
    seen: set[str] = set()
    for path in turn_files(corpus_dir):
        for where, row in read_jsonl(path, ("id", "lang", "previous", "question", "kind")):
            if row["lang"] not in LANGS:
                raise KnowledgeError(f"{where}: field 'lang' must be one of {LANGS}, not {row['lang']!r}")
            if row["kind"] not in KINDS:
                raise KnowledgeError(f"{where}: field 'kind' must be one of {tuple(KINDS)}, not {row['kind']!r}")
            if not isinstance(row.get("follow_up"), bool):
                raise KnowledgeError(f"{where}: field 'follow_up' must be true or false, not {row.get('follow_up')!r}")
            if row["follow_up"] != KINDS[row["kind"]]:
                raise KnowledgeError(
                    f"{where}: field 'follow_up' is {str(row['follow_up']).lower()} but kind {row['kind']!r} "
                    f"implies {str(KINDS[row['kind']]).lower()}"
                )
            if row["id"] in seen:
                raise KnowledgeError(f"{where}: field 'id' repeats {row['id']!r}")
            seen.add(row["id"])
            out.append(
                TurnPair(row["id"], row["lang"], row["previous"], row["question"], row["follow_up"], row["kind"])
            )
    return out


def turn_lexicon_path(corpus_dir: Path) -> Path:
    return Path(corpus_dir) / "reader" / "lexicon.toml"


@dataclass(frozen=True)
class TurnLexicon:
    """The ``[turns]`` table: group name -> phrases (normalised, lower-cased)."""

    groups: dict[str, tuple[str, ...]]

    def as_data(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.groups.items()}


def load_turn_lexicon(path: Path) -> TurnLexicon:
    table = _read_toml(path).get("turns")
    if not isinstance(table, dict):
        raise KnowledgeError(f"{path}: table [turns] is missing")
    groups = {}
    for name in CUE_GROUPS:
        values = table.get(name)
        if not isinstance(values, list) or not all(isinstance(v, str) and v.strip() for v in values):
            raise KnowledgeError(f"{path}: turns.{name} must be a list of non-empty strings")
        groups[name] = tuple(normalize_question(v).lower() for v in values)
    return TurnLexicon(groups)


def turns_hash(corpus_dir: Path) -> str:
    """Changes whenever the turn pairs, the lexicon's ``[turns]`` table or the code version change."""
    digest = hashlib.sha256(f"turns-v{TURNS_VERSION}".encode())
    for path in turn_files(corpus_dir):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    lexicon = turn_lexicon_path(corpus_dir)
    table = _read_toml(lexicon).get("turns") if lexicon.exists() else None
    digest.update(json.dumps(table, sort_keys=True, ensure_ascii=False).encode())
    return digest.hexdigest()[:16]


def turns_model_path(settings) -> Path:
    """Beside the reader's model: ``<store_path>/../reader/turns.pkl``."""
    return model_path(settings).with_name("turns.pkl")


# ---------------------------------------------------------------------------------------------- features
def _phrase_pattern(phrases: Sequence[str], anchored: bool = False, at_end: bool = False) -> re.Pattern[str] | None:
    """One regex for a word list: English words match whole words; Japanese anywhere (or at the start/end)."""
    parts = []
    for p in sorted(set(phrases), key=len, reverse=True):
        left = r"(?<![a-z0-9])" if p[0].isascii() and p[0].isalnum() else ""
        right = r"(?![a-z0-9])" if p[-1].isascii() and p[-1].isalnum() else ""
        parts.append(f"{left}{re.escape(p)}{right}")
    if not parts:
        return None
    body = "|".join(parts)
    if anchored:
        return re.compile(rf"^[\W_]*(?:{body})")
    if at_end:
        return re.compile(rf"(?:{body})\s*$")
    return re.compile(body)


class TurnFeaturizer:
    """[char n-grams | e5 embedding | cosine, log length, language switch, cue groups] as one sparse row per pair."""

    def __init__(self, lexicon: TurnLexicon, config: TurnConfig) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.lexicon = lexicon
        self.config = config
        self.ngrams = TfidfVectorizer(
            analyzer="char_wb",
            ngram_range=config.ngram_range,
            min_df=config.min_df,
            sublinear_tf=True,
            dtype=np.float32,
        )
        self.patterns = {
            name: _phrase_pattern(lexicon.groups[name], anchored=name == "openers", at_end=name == "endings")
            for name in CUE_GROUPS
        }
        self.scale: dict[str, tuple[float, float]] = {"cosine": (0.0, 1.0), "length": (0.0, 1.0)}
        self.dimension = 0

    def fit(self, questions: Sequence[str], cosines: np.ndarray, dimension: int) -> TurnFeaturizer:
        if self.config.ngrams:
            self.ngrams.fit(questions)
        lengths = self._log_lengths(questions)
        self.scale = {
            "cosine": (float(np.mean(cosines)), float(np.std(cosines)) or 1.0),
            "length": (float(np.mean(lengths)), float(np.std(lengths)) or 1.0),
        }
        self.dimension = dimension
        return self

    @staticmethod
    def _log_lengths(questions: Sequence[str]) -> np.ndarray:
        return np.log1p(np.array([len(q) for q in questions], dtype=np.float64))

    def cues(self, question: str) -> list[float]:
        return [float(p is not None and p.search(question) is not None) for p in self.patterns.values()]

    def dense(self, previous: Sequence[str], questions: Sequence[str], cosines: np.ndarray) -> np.ndarray:
        cfg = self.config
        cols: list[np.ndarray] = []
        if cfg.cosine:
            mean, std = self.scale["cosine"]
            cols.append((np.asarray(cosines, dtype=np.float64) - mean) / std)
        if cfg.length:
            mean, std = self.scale["length"]
            cols.append((self._log_lengths(questions) - mean) / std)
        if cfg.language_switch:
            cols.append(
                np.array(
                    [detect_language(p) != detect_language(q) for p, q in zip(previous, questions, strict=True)], float
                )
            )
        if cfg.cues:
            cols.extend(np.array([self.cues(q) for q in questions], dtype=np.float64).T)
        if not cols:
            return np.zeros((len(questions), 0), dtype=np.float32)
        return (np.vstack(cols).T * cfg.dense_weight).astype(np.float32)

    def transform(
        self, previous: Sequence[str], questions: Sequence[str], question_vectors: np.ndarray, cosines: np.ndarray
    ) -> sparse.csr_matrix:
        """``previous``/``questions``: normalised, lower-cased texts."""
        blocks = []
        if self.config.ngrams:
            blocks.append(self.ngrams.transform(questions))
        if self.config.embedding:
            blocks.append(sparse.csr_matrix(np.asarray(question_vectors, np.float32) * self.config.embedding_weight))
        blocks.append(sparse.csr_matrix(self.dense(previous, questions, cosines)))
        return sparse.hstack(blocks, format="csr")


def _texts(values: Sequence[str]) -> list[str]:
    return [normalize_question(v).lower() for v in values]


def _cosines(prev_vectors: np.ndarray, question_vectors: np.ndarray) -> np.ndarray:
    a = np.asarray(prev_vectors, dtype=np.float32)
    b = np.asarray(question_vectors, dtype=np.float32)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(norms > 0, np.sum(a * b, axis=1) / np.where(norms > 0, norms, 1.0), 0.0)


# ---------------------------------------------------------------------------------------------- the reader
class TurnReader:
    """p(follow-up | previous turn, question) by one logistic regression."""

    name = "turns"

    def __init__(self, config: TurnConfig, featurizer: TurnFeaturizer, model, fingerprint: str, n_pairs: int) -> None:
        self.config = config
        self.featurizer = featurizer
        self.model = model
        self.fingerprint = fingerprint
        self.n_pairs = n_pairs
        # predict_proba validates its input on every call: keep the weights for the one-row case.
        self._coef = np.asarray(model.coef_[0], dtype=np.float32)
        self._intercept = float(model.intercept_[0])
        self._positive = list(model.classes_).index(True)

    @classmethod
    def train(
        cls,
        pairs: Sequence[TurnPair],
        prev_vectors: np.ndarray,
        question_vectors: np.ndarray,
        config: TurnConfig | None = None,
        lexicon: TurnLexicon | None = None,
        fingerprint: str = "",
    ) -> TurnReader:
        """Deterministic (lbfgs from zeros, no sampling). ``*_vectors``: e5 query embeddings of the normalised
        ``previous`` and ``question`` texts, row for row."""
        from sklearn.linear_model import LogisticRegression

        config = config or TurnConfig()
        if lexicon is None:
            from bot.lexicon import DEFAULT_PATH

            lexicon = load_turn_lexicon(DEFAULT_PATH)
        labels = [p.follow_up for p in pairs]
        if len(set(labels)) < 2:
            raise KnowledgeError("turn pairs: both follow-ups and standalone turns are needed to learn the decision")
        previous, questions = _texts([p.previous for p in pairs]), _texts([p.question for p in pairs])
        cosines = _cosines(prev_vectors, question_vectors)
        featurizer = TurnFeaturizer(lexicon, config).fit(questions, cosines, int(np.asarray(question_vectors).shape[1]))
        x = featurizer.transform(previous, questions, question_vectors, cosines)
        model = LogisticRegression(C=config.c, max_iter=5000, random_state=0).fit(x, labels)
        return cls(config, featurizer, model, fingerprint, len(pairs))

    # -------------------------------------------------------------- reading
    def probabilities(
        self,
        previous: Sequence[str],
        questions: Sequence[str],
        prev_vectors: np.ndarray | None,
        question_vectors: np.ndarray | None,
    ) -> np.ndarray:
        """p(follow-up) for each (previous, question) pair. Missing vectors: the embedding block is zero and the
        cosine its training mean (a weaker reading)."""
        prev_texts, texts = _texts(previous), _texts(questions)
        n, dim = len(texts), self.featurizer.dimension
        qv = np.zeros((n, dim), np.float32) if question_vectors is None else np.asarray(question_vectors, np.float32)
        if prev_vectors is None or question_vectors is None:
            cosines = np.full(n, self.featurizer.scale["cosine"][0])
        else:
            cosines = _cosines(np.asarray(prev_vectors, np.float32).reshape(n, -1), qv.reshape(n, -1))
        x = self.featurizer.transform(prev_texts, texts, qv.reshape(n, -1), cosines)
        scores = np.asarray(x @ self._coef).ravel() + self._intercept
        p_true = 1.0 / (1.0 + np.exp(-scores))
        return p_true if self._positive == 1 else 1.0 - p_true

    def follow_up(
        self,
        previous: str,
        question: str,
        previous_vector: np.ndarray | None = None,
        question_vector: np.ndarray | None = None,
    ) -> tuple[bool, float]:
        """(is ``question`` a follow-up of ``previous``, its probability). Texts as typed (normalised here);
        vectors: e5 query embeddings of ``normalize_question(previous)`` and ``normalize_question(question)``.
        No previous turn: (False, 0.0)."""
        if not normalize_question(previous or "") or not normalize_question(question or ""):
            return False, 0.0
        pv = None if previous_vector is None else np.asarray(previous_vector, np.float32)[None, :]
        qv = None if question_vector is None else np.asarray(question_vector, np.float32)[None, :]
        p = float(self.probabilities([previous], [question], pv, qv)[0])
        return p >= self.config.threshold, p

    def returns(self, question: str) -> bool:
        """Whether a turn says it goes back to an earlier question ("back to the rewrite engine: …", 「要約の件に
        戻りますが」): the lexicon's ``returns`` group."""
        pattern = self.featurizer.patterns.get("returns")
        return bool(pattern and pattern.search(normalize_question(question).lower()))

    def weights(self) -> dict[str, float]:
        """The learned weight of each dense feature (cosine, length, language switch, cue groups): for reports."""
        cfg = self.config
        names = [
            *(["cosine"] if cfg.cosine else []),
            *(["log_length"] if cfg.length else []),
            *(["language_switch"] if cfg.language_switch else []),
            *([f"cue:{g}" for g in CUE_GROUPS] if cfg.cues else []),
        ]
        tail = self._coef[len(self._coef) - len(names) :] if names else []
        return {n: round(float(w) * cfg.dense_weight, 3) for n, w in zip(names, tail, strict=True)}

    # -------------------------------------------------------------- persistence
    def save(self, path: Path) -> None:
        """Atomic: a crash leaves the old model or the new one."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            blob = {
                "version": TURNS_VERSION,
                "fingerprint": self.fingerprint,
                "config": asdict(self.config),
                "featurizer": self.featurizer,
                "model": self.model,
                "n_pairs": self.n_pairs,
            }
            dump_model(blob, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @classmethod
    def load(cls, path: Path, fingerprint: str) -> TurnReader | None:
        """The saved model, or None when it is missing, unreadable or trained on other data."""
        try:
            blob = load_model(path)
            if (
                not isinstance(blob, dict)
                or blob.get("version") != TURNS_VERSION
                or blob.get("fingerprint") != fingerprint
            ):
                return None
            known = {f.name for f in fields(TurnConfig)}
            config = replace(TurnConfig(), **{k: v for k, v in blob["config"].items() if k in known})
            if isinstance(config.ngram_range, list):
                config = replace(config, ngram_range=tuple(config.ngram_range))
            featurizer = blob["featurizer"]
            if not isinstance(featurizer, TurnFeaturizer):
                return None
            return cls(config, featurizer, blob["model"], fingerprint, int(blob.get("n_pairs", 0)))
        except Exception:  # noqa: BLE001 - any unreadable or damaged file means: retrain
            return None


def embed_pairs(settings, embedder, pairs: Sequence[TurnPair], progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """e5 query embeddings of the normalised previous turns and questions (the reader's embedding cache)."""
    cache = EmbeddingCache(cache_path(settings, embedder))
    prev = cache.embed([normalize_question(p.previous) for p in pairs], embedder.encode_queries, progress)
    questions = cache.embed([normalize_question(p.question) for p in pairs], embedder.encode_queries, progress)
    return prev, questions


def ensure_turn_reader(settings, embedder, progress: bool = False, force: bool = False) -> TurnReader:
    """The trained turn reader for the current turn data: loaded when up to date, else trained and saved."""
    corpus_dir = Path(settings.corpus_dir)
    fingerprint = turns_hash(corpus_dir)
    path = turns_model_path(settings)
    if not force:
        reader = TurnReader.load(path, fingerprint)
        if reader is not None:
            return reader
    pairs = load_turn_pairs(corpus_dir)
    if not pairs:
        raise KnowledgeError(f"{corpus_dir / 'reader'}: no labelled turn pairs (turns_*.jsonl)")
    if progress:
        print(f"train-turns: {len(pairs)} labelled turn pairs", file=sys.stderr, flush=True)
    prev, questions = embed_pairs(settings, embedder, pairs, progress)
    lexicon = load_turn_lexicon(turn_lexicon_path(corpus_dir))
    reader = TurnReader.train(pairs, prev, questions, lexicon=lexicon, fingerprint=fingerprint)
    reader.save(path)
    return reader


# ---------------------------------------------------------------------------------------------- evaluation
def turn_scores(pairs: Sequence[TurnPair], predicted: Sequence[bool]) -> dict:
    """Accuracy, and precision/recall of follow_up=True."""
    y = np.array([p.follow_up for p in pairs], bool)
    got = np.array(predicted, bool)
    tp = int(np.sum(y & got))
    return {
        "n": len(pairs),
        "accuracy": round(float(np.mean(y == got)), 4) if len(pairs) else None,
        "precision": round(tp / int(got.sum()), 4) if got.any() else None,
        "recall": round(tp / int(y.sum()), 4) if y.any() else None,
    }


def cross_validate_turns(
    pairs: Sequence[TurnPair],
    prev_vectors: np.ndarray,
    question_vectors: np.ndarray,
    folds: int = 5,
    config: TurnConfig | None = None,
    lexicon: TurnLexicon | None = None,
) -> dict:
    """Stratified k-fold (shuffled, seed 0); identical question texts ("and the next remark?") share a fold so a
    repeated turn is never scored by a model that saw it. Returns {"all"|"en"|"ja": scores, "by_kind": accuracy,
    "errors": [ids]}."""
    from sklearn.model_selection import StratifiedGroupKFold

    y = np.array([p.follow_up for p in pairs], bool)
    groups = [normalize_question(p.question).lower() for p in pairs]
    predicted = np.zeros(len(pairs), bool)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=0)
    for train_idx, test_idx in splitter.split(np.zeros(len(pairs)), y, groups):
        reader = TurnReader.train(
            [pairs[i] for i in train_idx], prev_vectors[train_idx], question_vectors[train_idx], config, lexicon
        )
        test = [pairs[i] for i in test_idx]
        p = reader.probabilities(
            [t.previous for t in test], [t.question for t in test], prev_vectors[test_idx], question_vectors[test_idx]
        )
        predicted[test_idx] = p >= reader.config.threshold
    out: dict = {}
    for lang in ("all", *LANGS):
        idx = [i for i, p in enumerate(pairs) if lang == "all" or p.lang == lang]
        out[lang] = turn_scores([pairs[i] for i in idx], predicted[idx])
    out["by_kind"] = {
        kind: round(float(np.mean([predicted[i] == y[i] for i, p in enumerate(pairs) if p.kind == kind])), 4)
        for kind in KINDS
        if any(p.kind == kind for p in pairs)
    }
    out["errors"] = [pairs[i].id for i in range(len(pairs)) if predicted[i] != y[i]]
    return out


def ablations(config: TurnConfig | None = None) -> dict[str, TurnConfig]:
    """The full model and the model without each feature block."""
    config = config or TurnConfig()
    out = {"all features": config}
    for block in FEATURE_BLOCKS:
        out[f"without {block}"] = replace(config, **{block: False})
    return out


def cv_table(results: dict[str, dict]) -> str:
    """Markdown table: one row per feature set, accuracy overall and per language, precision/recall of follow-up."""
    lines = [
        "| features | n | accuracy | en | ja | precision (follow-up) | recall (follow-up) |",
        "|---|---|---|---|---|---|---|",
    ]

    def pct(v) -> str:
        return "—" if v is None else f"{v * 100:.1f}"

    for name, r in results.items():
        a = r["all"]
        lines.append(
            f"| {name} | {a['n']} | {pct(a['accuracy'])} | {pct(r['en']['accuracy'])} | {pct(r['ja']['accuracy'])} "
            f"| {pct(a['precision'])} | {pct(a['recall'])} |"
        )
    return "\n".join(lines)


def main(settings, as_json: bool = False, folds: int = 5, ablate: bool = True) -> int:
    """For ``python -m bot train-reader``: train the turn reader (always) and print its cross-validation (the full
    model, and without each feature block when ``ablate``)."""
    import time

    from ingest.embeddings import load_embedder

    embedder = load_embedder(settings)
    started = time.perf_counter()
    reader = ensure_turn_reader(settings, embedder, progress=True, force=True)
    seconds = time.perf_counter() - started
    corpus_dir = Path(settings.corpus_dir)
    pairs = load_turn_pairs(corpus_dir)
    prev, questions = embed_pairs(settings, embedder, pairs)
    lexicon = load_turn_lexicon(turn_lexicon_path(corpus_dir))
    configs = ablations(reader.config) if ablate else {"all features": reader.config}
    cv = {name: cross_validate_turns(pairs, prev, questions, folds, cfg, lexicon) for name, cfg in configs.items()}
    summary = {
        "pairs": len(pairs),
        "seconds": round(seconds, 1),
        "model": str(turns_model_path(settings)),
        "fingerprint": reader.fingerprint,
        "weights": reader.weights(),
        "cv": cv,
    }
    if as_json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        print(f"train-turns: {len(pairs)} turn pairs, trained in {seconds:.1f} s -> {summary['model']}")
        print(cv_table(cv))
        full = cv["all features"]
        print("by kind: " + ", ".join(f"{k} {v * 100:.0f}%" for k, v in full["by_kind"].items()))
        if full["errors"]:
            print("misread: " + ", ".join(full["errors"]))
    return 0
