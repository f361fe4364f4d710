"""The learned reader (real e5 model, real reading data): training, retraining on changed data, unseen
paraphrases of each Figure 2 condition, the `reading` field of the answer, follow-ups that add a fact."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from bot.engine import ConditionState
from bot.knowledge import load_flow
from bot.reader import MAX_SEGMENTS, LearnedReader, data_hash, ensure_reader, model_path, segment_texts
from bot.text import normalize_question

REPO_CORPUS = Path(__file__).resolve().parents[1] / "corpus"

# Written for this test only: in neither the reading data nor any eval set. Each states one condition (yes) in
# words the flow's cue lists do not contain.
PARAPHRASES = {
    "mimic_human": [
        "Visitors to our museum app should be able to chat back and forth with a guide persona about the exhibits.",
        "高齢者の話し相手になって、毎日その日の出来事を聞いてあげるアプリを作りたい。",
        "The thing has to keep up a friendly back-and-forth with shoppers, "
        "remembering what they said two messages ago.",
    ],
    "needs_scaling": [
        "It has to work out multi-step physics homework answers, carrying intermediate results from line to line.",
        "パズルゲームのヒント機能で、何手も先まで論理的に考えて解き方を導く必要があります。",
        "Students paste olympiad-style puzzles and expect the tool to reason its way to a justified answer.",
    ],
    "multi_task": [
        "Right now five separate little models do tagging, routing, redaction, scoring and summarising; we want one.",
        "翻訳、要約、分類、返信文の作成を、一つの仕組みで全部まかないたいと考えています。",
        "One service must handle whatever the analysts throw at it: "
        "sometimes extraction, sometimes rewriting, sometimes Q&A.",
    ],
    "far_from_lm": [
        "From sensor readings and the maintenance log we want to output the expected hours until the pump fails.",
        "過去の気温と来店数から、明日の来店人数を数字で見積もりたい。",
        "The model gets photos of damaged car bumpers and has to output a repair cost estimate in euros.",
    ],
    "few_labels": [
        "Honestly we have maybe twenty tagged tickets and nobody has time to tag more.",
        "正解付きのデータは、手作業で作った30件ほどしかありません。",
        "There is no annotated set at all yet; we'd be starting from scratch.",
    ],
    "ood_data": [
        "Next quarter the system goes live in three new countries whose customers phrase things nothing like ours.",
        "去年のデータで作ったけど、今年から取引先が変わって文面の癖がまるで違う。",
        "Spammers keep tweaking their wording on purpose so that the filter no longer recognises it.",
    ],
    "creative_generation": [
        "It should come up with fresh bedtime tales for kids, a different plot every night.",
        "商品ごとに魅力が伝わる紹介文を、毎回違う言い回しで書き起こしてほしい。",
        "We need it to produce whole Python modules from a short spec written by a product manager.",
    ],
    "context_sufficient": [
        "Every answer is somewhere in the contract text we hand over together with the question.",
        "質問と一緒に該当する規程の全文を渡すので、答えは必ずその中に書いてあります。",
        "We always paste the relevant manual page into the request, so nothing outside it is needed.",
    ],
    "knowledge_conflicts": [
        "In our board game's universe, water flows uphill and the sun rises in the west; answers must follow that.",
        "社内では「緑」を停止、「赤」を進行の意味で使うので、その前提で答えてもらう必要がある。",
        "The quiz is set in an invented kingdom where 2 + 2 is defined to be 5, and the bot must stick to that.",
    ],
}


@pytest.fixture(scope="module")
def reader(bot_service) -> LearnedReader:
    assert bot_service.engine.reader.name == "learned"
    return bot_service.engine.reader


def read(service, question: str):
    text = normalize_question(question)
    return service.engine.reader.read(text.lower(), service.retriever.encode_query(text))


def test_unseen_paraphrases_of_each_condition_are_read(bot_service, reader) -> None:
    misses = []
    total = 0
    for cid, questions in PARAPHRASES.items():
        right = 0
        for question in questions:
            state = read(bot_service, question).states[cid]
            total += 1
            if state.holds is True:
                right += 1
                assert state.evidence, (cid, question)
            else:
                misses.append((cid, question))
        assert right >= 2, (cid, misses)  # at least two of the three wordings of every condition
    assert len(misses) <= total * 0.15, misses


def test_a_question_is_read_from_its_one_forward_pass(bot_service, reader) -> None:
    """With the query's encoding (what the service passes), the sentences' vectors are pooled from it: the reader
    never encodes again. A plain vector makes it encode the question once more for its sentences."""
    question = normalize_question(
        "We route support tickets. There are only about forty labelled ones. Customers also write very differently "
        "since the merger. What would you pick?"
    )
    encoding = bot_service.retriever.encode_query(question)
    assert encoding.layer == reader.config.part_layer
    calls: list[list[str]] = []
    encode_tokens = reader.encode_tokens
    try:
        reader.encode_tokens = lambda texts, layer: calls.append(texts) or encode_tokens(texts, layer)
        from_encoding = reader.read(question.lower(), encoding)
        assert calls == []
        reader.read(question.lower(), encoding.vector)
        assert len(calls) == 1
    finally:
        reader.encode_tokens = encode_tokens
    assert from_encoding.states["few_labels"].holds is True


def test_one_question_row_equals_the_batch_transform(bot_service, reader) -> None:
    """The reading-time feature row (built in one step) has the same values as the training transform."""
    from bot.reader import SentenceScorer

    questions = ["感情分析をしたい。ラベルは3万件。", "Chatbot for museums?", "ok, and 20 labels, adversarial"]
    for question in questions:
        text = normalize_question(question)
        encoding = bot_service.retriever.encode_query(text)
        _, scores = reader.sentence_scores(text.lower(), encoding)
        pooled = SentenceScorer.pool(scores)
        row = reader.featurizer.row(text.lower(), encoding.vector, pooled).toarray()
        batch = reader.featurizer.transform([text.lower()], encoding.vector[None, :], pooled=pooled[None, :]).toarray()
        assert row.shape == batch.shape
        assert np.allclose(row, batch, atol=1e-6)


def test_segments_are_sentences_and_long_clauses_at_most_a_cap() -> None:
    assert segment_texts("we sort tickets. about 40 labels!  which model?") == [
        "we sort tickets.",
        "about 40 labels!",
        "which model?",
    ]
    ja = "ブログ記事を分類したいです。推論は不要で、内容から判断できる単純な分類、出力はカテゴリ名だけ。"
    # a comma splits only when a long stretch follows (short lists stay whole)
    assert segment_texts(ja) == [
        "ブログ記事を分類したいです。",
        "推論は不要で、",
        "内容から判断できる単純な分類、出力はカテゴリ名だけ。",
    ]
    story = " ".join(f"sentence {i}." for i in range(40))
    parts = segment_texts(story)
    assert len(parts) == MAX_SEGMENTS and " ".join(parts) == story  # neighbours merged, nothing dropped
    assert segment_texts("one line") == ["one line"]


def test_a_condition_in_one_sentence_of_a_long_story_is_read_from_that_sentence(bot_service) -> None:
    story = (
        "We are a regional insurer with about 300 staff and an IT team of six. The claims department moved to a new "
        "building last spring and most of our tooling is older than the interns. Budgets were approved last week. "
        "In the end, policyholders will type to it in a chat window and expect it to answer the way one of our "
        "agents would. Management wants a recommendation by Friday. What should we go with?"
    )
    reading = read(bot_service, story)
    state = reading.states["mimic_human"]
    assert state.holds is True, state
    assert "chat window" in state.evidence and "budgets" not in state.evidence


def test_reading_field_explains_each_condition(bot_service) -> None:
    answer = bot_service.ask(
        "We have about 40 labelled support emails and want them sorted into six queues overnight. Which model?"
    )
    ids = [r["id"] for r in answer.reading]
    assert ids == [c.id for c in bot_service.flow.conditions]
    few = next(r for r in answer.reading if r["id"] == "few_labels")
    assert few["value"] == "yes" and few["p"] == 1.0 and few["evidence"] == "40"
    assert all(r["value"] in ("yes", "no", "unstated") for r in answer.reading)
    assert answer.to_json()["reading"] == answer.reading
    assert answer.verdict == "llm"


def test_a_follow_up_that_adds_a_fact_flips_the_verdict(bot_service) -> None:
    first = "We classify product reviews as positive or negative and have 80,000 labelled reviews. LLM or fine-tune?"
    answer = bot_service.ask(first)
    assert answer.verdict == "fine_tuned"
    history = [{"role": "user", "content": first}, {"role": "assistant", "content": answer.answer}]
    follow = bot_service.ask("Sorry, I misread: we only have 25 labelled reviews.", history=history)
    assert follow.verdict == "llm"
    few = next(r for r in follow.reading if r["id"] == "few_labels")
    assert few["value"] == "yes"


def test_a_follow_up_that_changes_the_task_replaces_the_task_conditions(bot_service) -> None:
    """"Not the price: write the descriptions" keeps nothing of the earlier task (a number to predict, step 4) but
    would keep the earlier facts about the data; the unit check shows which conditions a switch replaces."""
    first = ("We want to predict each apartment's rent in yen from its listing text. "
             "We have 60,000 past listings with their rents. LLM or fine-tune?")
    answer = bot_service.ask(first)
    assert answer.verdict == "fine_tuned"
    far = next(r for r in answer.reading if r["id"] == "far_from_lm")
    assert far["value"] == "yes"
    history = [{"role": "user", "content": first}, {"role": "assistant", "content": answer.answer}]
    follow = bot_service.ask("Actually not the rent: we want it to write attractive listing descriptions instead.",
                             history=history)
    assert follow.follow_up and follow.verdict == "llm"
    reading = {r["id"]: r["value"] for r in follow.reading}
    assert reading["far_from_lm"] != "yes" and reading["creative_generation"] == "yes"
    reader = bot_service.engine.reader
    flow = bot_service.flow
    own = {c.id: ConditionState(c, None, "", "", 0.9) for c in flow.conditions}
    assert not reader.switches_task(None, own, None, 0.0)
    own["few_labels"] = ConditionState(flow.condition("few_labels"), True, "learned", "50", 0.99)
    assert not reader.switches_task(None, own, None, 0.0)  # a fact about the data is not a new task
    own["creative_generation"] = ConditionState(flow.condition("creative_generation"), True, "learned", "write", 0.9)
    assert reader.switches_task(None, own, None, 0.0)
    # Taking away a kind the task had ("forget the chat, only the moderation filter") changes the task too; saying
    # "no" to a kind it never had ("not the explanation") or to a knowledge detail does not.
    no_chat = dict(own, creative_generation=ConditionState(flow.condition("creative_generation"), None, "", "", 0.9),
                   mimic_human=ConditionState(flow.condition("mimic_human"), False, "learned", "forget the chat", 0.9))
    chatbot = {"mimic_human": ConditionState(flow.condition("mimic_human"), True, "learned", "chat", 0.99)}
    assert reader.switches_task(None, no_chat, None, 0.0, chatbot)
    assert not reader.switches_task(None, no_chat, None, 0.0, {})
    not_given = ConditionState(flow.condition("context_sufficient"), False, "learned", "", 0.9)
    no_context = dict(own, creative_generation=no_chat["creative_generation"], context_sufficient=not_given)
    given = {"context_sufficient": ConditionState(flow.condition("context_sufficient"), True, "learned", "", 0.99)}
    assert not reader.switches_task(None, no_context, None, 0.0, given)
    assert [c.id for c in flow.conditions if c.about == "situation"] == ["few_labels", "ood_data"]


def test_a_follow_up_is_read_on_its_own_by_the_fragment_reader(bot_service) -> None:
    """The fragment reader (trained on followups_*.jsonl, saved with the question reader) reads a follow-up's own
    words: a question about the evidence is answered as content, "why?" keeps the verdict, a new label count
    flips it."""
    assert bot_service.engine.reader.followups is not None
    first = "We classify product reviews as positive or negative and have 80,000 labelled reviews. LLM or fine-tune?"
    answer = bot_service.ask(first)
    assert answer.verdict == "fine_tuned"
    history = [{"role": "user", "content": first}, {"role": "assistant", "content": answer.answer}]
    evidence = bot_service.ask("どの実験がその根拠になっていますか？", history=history)
    assert evidence.follow_up and evidence.verdict is None and not evidence.abstained
    why = bot_service.ask("Why, though?", history=history)
    assert why.follow_up and why.verdict == "fine_tuned"
    fewer = bot_service.ask("and if we only had 30 labelled reviews?", history=history)
    assert fewer.follow_up and fewer.verdict == "llm"


def test_a_follow_up_read_as_off_topic_is_refused_whatever_the_turn_reader_said(bot_service) -> None:
    """A turn the turn reader takes for a follow-up but whose own words leave the topic (a trip, lunch) is read
    off-topic by the fragment reader and refused; a bare pushback ("are you sure?") keeps the decision."""
    first = "We classify product reviews as positive or negative and have 80,000 labelled reviews. LLM or fine-tune?"
    encode = bot_service.retriever.encode_query
    for own, intent in (("週末の京都、混んでるかな？", "offtopic"), ("any good sushi place near Shibuya?", "offtopic"),
                        ("are you sure?", "decision"), ("ほんとに？", "decision")):
        own = normalize_question(own)
        decision = bot_service.engine.decide(first.lower(), encode(first), [own.lower()], [encode(own)])
        assert decision.reading.intent == intent, (own, decision.reading.intent)
    history = [{"role": "user", "content": first}, {"role": "assistant", "content": "…"}]
    assert bot_service.ask("週末の京都、混んでるかな？", history=history).abstained


def test_offtopic_near_miss_is_refused(bot_service) -> None:
    answer = bot_service.ask("How do I fine-tune the action on my acoustic guitar so the strings don't buzz?")
    assert answer.abstained and answer.verdict is None


def test_retrains_only_when_the_reading_data_changes(tmp_path: Path, make_settings, embedder) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(REPO_CORPUS, corpus, ignore=shutil.ignore_patterns("cards"))
    settings = make_settings(corpus_dir=corpus)
    flow = load_flow(corpus / "decision_flow.toml")
    first = ensure_reader(settings, embedder, flow)
    path = model_path(settings)
    stamp = path.stat().st_mtime_ns
    again = ensure_reader(settings, embedder, flow)
    assert path.stat().st_mtime_ns == stamp and again.fingerprint == first.fingerprint  # loaded, not retrained
    extra = corpus / "reader" / "questions_zz_user.jsonl"
    extra.write_text(
        '{"id": "zz-1", "scenario": "zz", "lang": "en", "question": "Our bonsai club wants a quiz bot.", '
        '"intent": "decision", "conditions": {"mimic_human": "yes"}, "evidence": {"mimic_human": "quiz bot"}, '
        '"tasks": [], "considerations": [], "verdict": "llm", "label_count": null}\n',
        encoding="utf-8",
    )
    assert data_hash(corpus) != first.fingerprint
    retrained = ensure_reader(settings, embedder, flow)
    assert retrained.fingerprint == data_hash(corpus) and path.stat().st_mtime_ns != stamp


SAMPLE_QUESTIONS = [
    "We want a chatbot for our hotel guests; which model should we use?",
    "社内の問い合わせを8カテゴリに分類したい。ラベル付きは3万件あります。どっちがいい？",
    "What does the survey say about hallucination?",
    "おすすめのラーメン屋は？",
]


def test_a_damaged_model_file_is_retrained(tmp_path: Path, make_settings, embedder) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(REPO_CORPUS, corpus, ignore=shutil.ignore_patterns("cards"))
    settings = make_settings(corpus_dir=corpus)
    flow = load_flow(corpus / "decision_flow.toml")
    path = model_path(settings)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a model")
    reader = ensure_reader(settings, embedder, flow)
    assert reader.fingerprint == data_hash(corpus)
    loaded = LearnedReader.load(path, flow, reader.fingerprint)
    assert loaded is not None
    # The stacked weights are row-major after a save and load (a column-major stack made every read ~10 ms slower),
    # and each model's weights are a view of that one stack, not a second copy.
    assert loaded._coef.flags["C_CONTIGUOUS"]
    assert all(np.shares_memory(m.coef_, loaded._coef) for m in loaded.models.values() if m is not None)
    # A loaded reader holds the stack in float16 and reads as the float32 one it was trained as: same
    # readings on questions of every intent, probabilities within 2e-2 (float16 rounding of ~10^5 weights moves a
    # logit by a few hundredths: 2.5e-3 was seen on the stop-19 data, 9.2e-3 on stop 20's), one product for the
    # whole stack either way.
    assert loaded._coef.dtype == np.float16 and reader._coef.dtype == np.float32
    assert np.allclose(loaded._coef.astype(np.float32), reader._coef, atol=2e-3, rtol=2e-3)
    loaded.encode_tokens = embedder.encode_query_tokens
    for question in SAMPLE_QUESTIONS:
        text = question.lower()
        half, full = loaded.read(text), reader.read(text)
        assert (half.intent, half.task) == (full.intent, full.task), question
        assert abs(half.intent_p - full.intent_p) < 2e-2 and abs(half.task_score - full.task_score) < 2e-2
        for cid, state in full.states.items():
            assert half.states[cid].holds == state.holds, (question, cid)
            assert abs((half.states[cid].p or 0.0) - (state.p or 0.0)) < 2e-2, (question, cid)


def test_deciding_reason_first_and_the_other_side_labelled(bot_service) -> None:
    """Under an LLM verdict from few labels, the sentiment finding (measured with full training sets) is a caveat
    and comes after the deciding reason, labelled as the other side."""
    answer = bot_service.ask("Sentiment analysis of hotel reviews, but we only have 20 labelled reviews. Which model?")
    assert answer.verdict == "llm"
    why = answer.answer.split("**Why**", 1)[1].split("\n\n", 1)[0]
    bullets = [line for line in why.splitlines() if line.startswith("- ")]
    assert "Step 5" in bullets[0]
    other = [b for b in bullets if "sentiment" in b.lower()]
    assert other and all(b.startswith("- On the other hand") for b in other)


def test_neighbour_features_for_a_few_questions_equal_the_per_key_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reading-time path (keys grouped by padded size: one gather and partition per group) gives the values of
    the per-key loop used at training, for keys with 1, 2, 3 and many rows and a vector shared by several keys."""
    import bot.reader as reader_module
    from bot.reader import Neighbours

    rng = np.random.default_rng(0)
    sizes = [1, 2, 3, 4, 7, 40, 300]
    key_index = np.concatenate([np.full(n, k) for k, n in enumerate(sizes)])
    vectors = rng.normal(size=(len(key_index), 16)).astype(np.float32)
    vectors[1] = vectors[0]  # one question is a row of two keys
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    near = Neighbours([f"k{k}" for k in range(len(sizes))], vectors, key_index, np.array(["g"] * len(key_index)))
    questions = rng.normal(size=(3, 16)).astype(np.float32)
    few = near.raw(questions)
    monkeypatch.setattr(reader_module, "FEW_ROWS", 0)
    loop = near.raw(questions)
    assert few.shape == loop.shape == (3, 2 * len(sizes))
    assert np.allclose(few, loop, atol=1e-6)


def test_distinct_rows_give_every_row_back_once_each() -> None:
    from bot.reader import distinct_rows

    rng = np.random.default_rng(1)
    base = rng.normal(size=(30, 8)).astype(np.float32)
    matrix = base[rng.integers(0, 30, size=200)]
    rows, inverse = distinct_rows(matrix)
    assert len(rows) == len(np.unique(matrix, axis=0))
    assert np.array_equal(rows[inverse], matrix)


def test_fragment_reader_learns_from_every_fragment_and_a_fixed_sample_of_questions() -> None:
    from bot.reader import Example, fragment_rows

    def example(i: int, kind: str) -> Example:
        return Example(f"{kind}-{i}", f"s{i}", "en", f"{kind} {i}", "decision", {}, None, [], [], "llm")

    fragments = [example(i, "fragment") for i in range(5)]
    questions = [example(i, "question") for i in range(50)]
    rows = fragment_rows(fragments, questions, 10)
    assert rows[:5] == fragments and len(rows) == 15 and len({e.id for e in rows}) == 15
    assert [e.id for e in rows] == [e.id for e in fragment_rows(fragments, questions, 10)]  # deterministic
    assert fragment_rows(fragments, questions, 100) == [*fragments, *questions]


def test_training_shortcuts_give_the_features_computed_afresh() -> None:
    """At training, the n-grams of ``fit`` and the neighbour features of ``build`` are reused for the training rows
    and cue rows come from a memo: the values equal a fresh computation."""
    from bot.lexicon import load_lexicon
    from bot.reader import Example, Featurizer, Neighbours, ReaderConfig

    flow = load_flow(REPO_CORPUS / "decision_flow.toml")
    texts = ["sentiment with 30 labels", "チャットボットを作りたい", "predict delivery minutes", "NER, 40k labels"]
    examples = [
        Example(f"x{i}", f"s{i % 2}", "en", t, "decision", {"few_labels": "yes"} if i % 2 else {}, None, [], [], None)
        for i, t in enumerate(texts)
    ]
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(len(texts), 16)).astype(np.float32)
    groups = [e.scenario for e in examples]
    memo: dict[str, np.ndarray] = {}
    featurizer = Featurizer(flow, load_lexicon(), ReaderConfig())
    grams = featurizer.fit(texts)
    featurizer.neighbours, near_raw = Neighbours.build(examples, vectors, {})
    reused = featurizer.transform(texts, vectors, groups, cue_memo=memo, grams=grams, near_raw=near_raw).toarray()
    assert set(memo) == {t.lower() for t in texts}
    afresh = featurizer.transform(texts, vectors, groups).toarray()  # nothing passed in: computed again
    assert np.allclose(reused, afresh, atol=1e-6)
    assert not np.allclose(afresh, featurizer.transform(texts, vectors).toarray(), atol=1e-6)  # groups matter


def test_a_labelled_question_read_again_is_read_as_if_held_out() -> None:
    """A question whose vector is a labelled row's gets the neighbour features it would get with that row left out
    (as training rows are featurised): no similarity of 1.0 the models never saw in training."""
    from bot.reader import Neighbours

    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(12, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    key_index = np.array([0] * 6 + [1] * 6)
    keys = ["k0", "k1"]
    near = Neighbours(keys, vectors, key_index, np.array(["g"] * 12))
    without = Neighbours(keys, np.delete(vectors, 3, axis=0), np.delete(key_index, 3), np.array(["g"] * 11))
    again = near.raw(vectors[3:4])
    assert again[0, 0] < 0.9995  # the row itself is not its own nearest neighbour
    assert np.allclose(again, without.raw(vectors[3:4]), atol=1e-6)
