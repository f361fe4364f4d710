"""The learned follow-up decision (real e5 model, real turn pairs): cross-validated accuracy, unseen hand-written
pairs, retraining when the turn data changes, and data errors that name file, line and field."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from bot.knowledge import KnowledgeError
from bot.text import normalize_question
from bot.turns import (
    TurnReader,
    cross_validate_turns,
    embed_pairs,
    ensure_turn_reader,
    load_turn_lexicon,
    load_turn_pairs,
    turn_lexicon_path,
    turns_hash,
    turns_model_path,
)
from ingest.config import Settings

REPO_CORPUS = Path(__file__).resolve().parents[1] / "corpus"

# Written for this test only (in no turns_*.jsonl): (previous turn, next turn, is the next turn a follow-up).
HAND_WRITTEN = [
    (
        "We want to sort incoming insurance claims into 7 types; we have 25,000 labelled claims. LLM or fine-tune?",
        "and if we only had twenty labelled claims?",
        True,
    ),
    (
        "議事録から決定事項を抜き出したいです。正解データは3千件あります。LLMとファインチューニング、どちらが向いていますか？",
        "どうして？",
        True,
    ),
    (
        "We're building a chatbot that answers tenants' questions about their lease.",
        "actually nobody chats with it — it just tags maintenance requests in a nightly batch",
        True,
    ),
    (
        "口コミの感情分析をファインチューニングでやろうと思います。ラベルは40件です。",
        "やっぱり、数え直したらラベルは4万件ありました。",
        True,
    ),
    (
        "Should we fine-tune a small model to flag fraudulent expense reports? We have 90k labelled reports.",
        "why not just use GPT-4o?",
        True,
    ),
    (
        "病院の問診票から診療科を振り分けたいです。ラベル付きは1万件です。",
        "じゃあ、来年から外国語の問診票も来るとしたら？",
        True,
    ),
    (
        "Ticket routing for our helpdesk, 15k labelled tickets: LLM or fine-tuned?",
        "Different question: we want an assistant that drafts wedding speeches from a few bullet points. "
        "Which would you use?",
        False,
    ),
    (
        "請求書の金額抽出、ラベル5千件でファインチューニングしていいですか？",
        "別の相談です。社内の新人研修で、質問にロールプレイで答えてくれる会話ボットを作りたいんですが、どちらがいいですか？",
        False,
    ),
    (
        "Should our recipe app use an LLM to tag dishes by cuisine? We have 300 tagged recipes.",
        "any good sushi place near Shibuya for lunch?",
        False,
    ),
    ("顧客レビューの要約にはLLMを使うべきですか？", "ところで、今日のお昼ごはんは何がいいと思う？", False),
    (
        "問い合わせメールの分類、ラベル2万件あります。LLMとファインチューニングどっち？",
        "What does the survey say about machine translation for low-resource languages?",
        False,
    ),
    (
        "Should we use an LLM for extracting drug names from clinical notes? 8k annotated notes.",
        "論文では推論（reasoning）タスクについてどう書かれていますか？",
        False,
    ),
]

GOOD_LINE = {
    "id": "zz-t1",
    "lang": "en",
    "previous": "Should our bonsai club's quiz bot use an LLM?",
    "question": "and if it only had to grade answers overnight?",
    "follow_up": True,
    "kind": "ellipsis",
}


@pytest.fixture(scope="module")
def repo_settings(tmp_path_factory: pytest.TempPathFactory, model_cache_dir: Path) -> Settings:
    """The repo's corpus, the model files in a tmp dir."""
    return Settings(
        _env_file=None,
        store_path=tmp_path_factory.mktemp("turns") / "store",
        corpus_dir=REPO_CORPUS,
        model_cache_dir=model_cache_dir,
    )


@pytest.fixture(scope="module")
def repo_pairs(repo_settings: Settings, embedder):
    pairs = load_turn_pairs(REPO_CORPUS)
    prev, questions = embed_pairs(repo_settings, embedder, pairs)
    return pairs, prev, questions


def test_cross_validated_accuracy(repo_pairs) -> None:
    """5-fold stratified CV (identical question texts share a fold). Measured: 96.9 % overall, 96.9 % en, 96.9 % ja,
    follow-up precision 98.4 %, recall 95.4 %; the bar is the brief's 0.85."""
    pairs, prev, questions = repo_pairs
    assert len(pairs) >= 250 and {p.lang for p in pairs} == {"en", "ja"}
    result = cross_validate_turns(
        pairs, prev, questions, folds=5, lexicon=load_turn_lexicon(turn_lexicon_path(REPO_CORPUS))
    )
    assert result["all"]["accuracy"] >= 0.85, result
    for lang in ("en", "ja"):
        assert result[lang]["accuracy"] >= 0.85, (lang, result[lang])
    assert result["all"]["precision"] >= 0.85 and result["all"]["recall"] >= 0.85, result["all"]
    assert set(result["by_kind"]) == {
        "ellipsis",
        "why",
        "correction",
        "added_fact",
        "next_item",
        "new_task",
        "content",
        "offtopic",
    }


def test_hand_written_pairs_are_classified(repo_settings: Settings, embedder) -> None:
    def key(previous: str, question: str) -> tuple[str, str]:
        return normalize_question(previous).lower(), normalize_question(question).lower()

    known = {key(p.previous, p.question) for p in load_turn_pairs(REPO_CORPUS)}
    assert not [
        q for p, q, _ in HAND_WRITTEN if key(p, q) in known
    ]  # no pair is in the data (a bare 「どうして？」 is)
    reader = ensure_turn_reader(repo_settings, embedder)
    prev = embedder.encode_queries([normalize_question(p) for p, _, _ in HAND_WRITTEN])
    questions = embedder.encode_queries([normalize_question(q) for _, q, _ in HAND_WRITTEN])
    wrong = []
    for i, (previous, question, expected) in enumerate(HAND_WRITTEN):
        follow, p = reader.follow_up(previous, question, prev[i], questions[i])
        assert 0.0 <= p <= 1.0 and follow == (p >= reader.config.threshold)
        if follow != expected:
            wrong.append((question, expected, round(p, 3)))
    assert len(wrong) <= 2, wrong  # at least 10 of 12 (measured: 12 of 12)


def test_no_previous_turn_is_never_a_follow_up(repo_settings: Settings, embedder) -> None:
    reader = ensure_turn_reader(repo_settings, embedder)
    assert reader.follow_up("", "why?") == (False, 0.0)
    follow, p = reader.follow_up("Should our shop's chat widget use an LLM?", "why?")  # no vectors: still read
    assert follow and p > 0.5


def test_training_is_deterministic(repo_pairs) -> None:
    pairs, prev, questions = repo_pairs
    first = TurnReader.train(pairs, prev, questions)
    second = TurnReader.train(pairs, prev, questions)
    assert np.array_equal(first.model.coef_, second.model.coef_)


def _copy_reader_data(tmp_path: Path) -> Path:
    corpus = tmp_path / "corpus"
    shutil.copytree(REPO_CORPUS / "reader", corpus / "reader")
    return corpus


def test_retrains_only_when_the_turn_data_changes(tmp_path: Path, make_settings, embedder) -> None:
    corpus = _copy_reader_data(tmp_path)
    settings = make_settings(corpus_dir=corpus)
    first = ensure_turn_reader(settings, embedder)
    path = turns_model_path(settings)
    assert path == Path(settings.store_path).parent / "reader" / "turns.pkl"
    stamp = path.stat().st_mtime_ns
    again = ensure_turn_reader(settings, embedder)
    assert path.stat().st_mtime_ns == stamp and again.fingerprint == first.fingerprint  # loaded, not retrained

    (corpus / "reader" / "questions_b1.jsonl").write_text("", encoding="utf-8")  # not turn data
    assert turns_hash(corpus) == first.fingerprint

    with (corpus / "reader" / "turns_zz_user.jsonl").open("w", encoding="utf-8") as fh:
        fh.write(json.dumps(GOOD_LINE, ensure_ascii=False) + "\n")
    assert turns_hash(corpus) != first.fingerprint
    retrained = ensure_turn_reader(settings, embedder)
    assert retrained.fingerprint == turns_hash(corpus) and path.stat().st_mtime_ns != stamp
    assert retrained.n_pairs == first.n_pairs + 1

    lexicon = corpus / "reader" / "lexicon.toml"
    text = lexicon.read_text(encoding="utf-8")
    assert '"hmm", ' in text
    lexicon.write_text(text.replace('"hmm", ', ""), encoding="utf-8")
    assert turns_hash(corpus) != retrained.fingerprint  # the [turns] word lists are turn data too


def test_a_damaged_model_file_is_retrained(tmp_path: Path, make_settings, embedder) -> None:
    corpus = _copy_reader_data(tmp_path)
    settings = make_settings(corpus_dir=corpus)
    path = turns_model_path(settings)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a model")
    assert TurnReader.load(path, turns_hash(corpus)) is None
    reader = ensure_turn_reader(settings, embedder)
    assert reader.fingerprint == turns_hash(corpus)
    assert TurnReader.load(path, reader.fingerprint) is not None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"question": ""}, "question"),
        ({"previous": None}, "previous"),
        ({"follow_up": "yes"}, "follow_up"),
        ({"kind": "smalltalk"}, "kind"),
        ({"kind": "offtopic"}, "follow_up"),  # kind and label disagree
        ({"lang": "fr"}, "lang"),
    ],
)
def test_a_malformed_line_names_file_line_and_field(tmp_path: Path, change: dict, field: str) -> None:
    reader_dir = tmp_path / "corpus" / "reader"
    reader_dir.mkdir(parents=True)
    bad = {**GOOD_LINE, "id": "zz-t2", **change}
    path = reader_dir / "turns_zz.jsonl"
    path.write_text(json.dumps(GOOD_LINE) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(KnowledgeError) as err:
        load_turn_pairs(tmp_path / "corpus")
    message = str(err.value)
    assert f"{path}:2" in message and f"'{field}'" in message, message


def test_invalid_json_and_duplicate_ids_are_named(tmp_path: Path) -> None:
    reader_dir = tmp_path / "corpus" / "reader"
    reader_dir.mkdir(parents=True)
    path = reader_dir / "turns_zz.jsonl"
    path.write_text(json.dumps(GOOD_LINE) + "\n\n{not json\n", encoding="utf-8")
    with pytest.raises(KnowledgeError, match=re.escape(f"{path}:3: not valid JSON")):
        load_turn_pairs(tmp_path / "corpus")
    path.write_text(json.dumps(GOOD_LINE) + "\n" + json.dumps(GOOD_LINE) + "\n", encoding="utf-8")
    with pytest.raises(KnowledgeError, match=re.escape(f"{path}:2: field 'id' repeats")):
        load_turn_pairs(tmp_path / "corpus")
