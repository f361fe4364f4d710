"""bot.grounding + bot.writers + bot.pipeline on the real session store: the grounding fetches every chunk the
template writer cites, writing never touches retrieval, and the stream's events add up to the final answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.answer import check_citations, to_messages
from bot.compose import support_sentence
from bot.grounding import Evidence, MissingEvidence
from bot.pipeline import Pipeline
from bot.service import AnswerService
from ingest.terms import chunk_sentences, content_terms, parse_sentence_terms

REPO = Path(__file__).resolve().parents[1]
DEV = [json.loads(line) for line in (REPO / "corpus" / "dev_set.jsonl").read_text(encoding="utf-8").splitlines()]


class NoRetrieval:
    """Stands in for the retriever while writers run: any call is a test failure."""

    def __getattr__(self, name: str):
        raise AssertionError(f"a writer called retrieval ({name})")


def test_evidence_lookup_is_exact() -> None:
    evidence = Evidence({(("4.1.1", "4.1"), False, None): None})
    assert evidence.best(["4.1.1", "4.1"]) is None
    with pytest.raises(MissingEvidence):
        evidence.best(["4.1"])
    with pytest.raises(MissingEvidence):
        evidence.best(["4.1.1", "4.1"], exact=True)
    with pytest.raises(MissingEvidence):
        evidence.best(["4.1.1", "4.1"], about="ner")


def test_writers_never_call_retrieval_and_events_add_up(bot_service: AnswerService, bot_store_ids: set[str]) -> None:
    """For every dev-set question: ground, then take the retriever away and write. The template writer finds all
    the evidence it cites in the grounding; the deltas concatenate to the final answer; citations are valid; the
    answer's facts are the grounding's."""
    pipeline = Pipeline(bot_service)
    writer = pipeline.writers["template"]
    kinds = set()
    for item in DEV:
        grounding = bot_service.ground(item["question"])
        kinds.add(grounding.kind)
        retriever, bot_service.retriever = bot_service.retriever, NoRetrieval()
        try:
            events = list(writer.stream(grounding))
        finally:
            bot_service.retriever = retriever
        assert [e.kind for e in events[:-1]] == ["delta"] * (len(events) - 1) and events[-1].kind == "done"
        answer = events[-1].answer
        assert "".join(e.text for e in events[:-1]) == answer.answer, item["id"]
        assert check_citations(answer, bot_store_ids) == [], item["id"]
        assert answer.verdict == grounding.verdict and answer.abstained == grounding.abstained
        cited = {c["chunk_id"] for c in answer.citations}
        assert cited <= {c.id for c in grounding.sources}, item["id"]  # the template cites only grounded chunks
    assert kinds >= {"decision", "content", "abstain"}


def test_stream_starts_with_the_grounding(bot_service: AnswerService) -> None:
    events = list(Pipeline(bot_service).stream("Sentiment analysis with 200k labelled reviews: LLM or fine-tuning?"))
    assert events[0].kind == "grounded" and events[0].grounding.verdict == "fine_tuned"
    assert events[0].grounding.sources  # the evidence is there before any text
    assert events[-1].answer.verdict == "fine_tuned" and events[-1].answer.writer == "template"


def test_history_has_one_format() -> None:
    """Chat dicts (Gradio), (user, assistant) pairs and messages all become the same LangChain messages."""
    as_dicts = to_messages([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
    assert to_messages([("q", "a")]) == as_dicts == to_messages(as_dicts)
    assert [m.type for m in as_dicts] == ["human", "ai"]
    with pytest.raises(TypeError, match="history"):
        to_messages([42])


def test_answers_equal_through_every_history_shape(bot_service: AnswerService) -> None:
    first = "Sentiment analysis with 200k labelled reviews: LLM or fine-tuning?"
    follow = "And with only 20 labelled examples?"
    prior = bot_service.ask(first).answer
    pipeline = Pipeline(bot_service)
    answers = [
        pipeline.ask(follow, history).to_json()
        for history in ([(first, prior)], [{"role": "user", "content": first}, {"role": "assistant", "content": prior}],
                        to_messages([(first, prior)]))
    ]
    assert answers[0] == answers[1] == answers[2]
    assert answers[0]["follow_up"] is True


def test_task_claim_cites_a_chunk_naming_the_task_and_marks_its_support(bot_service: AnswerService) -> None:
    """NER with plenty of labels: the line about the task cites a chunk that names NER (not the sentiment card,
    which only contains "ner" inside "general"), and every citation carries its supporting sentence. The rule
    reader reads the task here (its alias match is deterministic; the learned reader's task choice is tested in
    test_reader)."""
    learned, bot_service.engine.reader = bot_service.engine.reader, bot_service.engine.rules
    try:
        answer = bot_service.ask("Named entity recognition with 50k labelled sentences: LLM or fine-tune?")
    finally:
        bot_service.engine.reader = learned
    assert answer.task == "ner"
    task_line = next(line for line in answer.answer.split("\n") if "**named entity recognition**" in line)
    (n,) = {int(m) for m in __import__("re").findall(r"\[(\d+)\]", task_line)}
    cited = answer.citations[n - 1]
    assert "ner" in cited["text"].lower().replace("general", "") or "named entit" in cited["text"].lower()
    assert "CoNLL" in cited["support"]  # the sentence that carries the claim's finding
    for citation in answer.citations:
        assert citation["support"] and citation["support"] in citation["text"]


def test_supporting_sentences_come_from_terms_stored_at_ingest(bot_service: AnswerService) -> None:
    """Ingest writes each chunk's sentence terms (one line per sentence) into its metadata; the supporting sentence
    picked from them is the one picked by tokenising the chunk now, so answers do not change."""
    answer = bot_service.ask("Sentiment analysis with 200k labelled reviews: LLM or fine-tune?")
    assert answer.citations
    chunks = {c.id: c for c in bot_service.store.get_chunks([c["chunk_id"] for c in answer.citations])}
    for citation in answer.citations:
        chunk = chunks[citation["chunk_id"]]
        stored = chunk.metadata["sentence_terms"]
        sentences = chunk_sentences(chunk.text)
        assert len(stored.split("\n")) == len(sentences) >= 1
        assert parse_sentence_terms(stored, sentences) == [content_terms(s) for s in sentences]
        for claim in (answer.answer, "LLMs underperform fine-tuned models on sentiment analysis"):
            assert support_sentence(chunk.text, claim, stored) == support_sentence(chunk.text, claim, None)
