"""bot.compose content answers: whole sentences, list and definition asks, the chunk choice, and every dev-set
answer through the real service (no sentence cut mid-way, no source reference that looks like a citation)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bot.compose import (
    Citations,
    compose_content,
    content_chunks,
    pieces,
    read_ask,
    split_sentences,
)
from bot.evaluate import answer_body, load_items
from bot.knowledge import load_content_asks, load_sources
from bot.retrieval import Hit
from bot.service import AnswerService, check_citations
from ingest.loaders import load_file
from ingest.store import StoredChunk

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
ASKS = load_content_asks(CORPUS / "content.toml")
SOURCES = load_sources(CORPUS / "sources.toml")
SURVEY = "yang2023harnessing"
CITE_TAIL = re.compile(r"(?:\s*\[\d+\])+\s*$")
SOURCE_REFERENCE = re.compile(r"\[\d+(?:\s*[,–-]\s*\d+)*\]")
SENTENCE_END = re.compile(r"[.!?。！？][\"'”’)）」』\]]*$")


def card(path: str) -> StoredChunk:
    """A real card of the corpus as the store holds it (loaded and normalised by the ingest loader)."""
    doc = load_file(CORPUS / "cards" / path, 10_000_000)
    meta = {"doc_id": doc.doc_id, "title": doc.title, "lang": doc.lang, "section": doc.sections[0].section,
            "source_path": str(CORPUS / "cards" / path), "url": doc.url}
    return StoredChunk(id=path, text="\n\n".join(s.text.strip() for s in doc.sections), metadata=meta)


def test_abbreviations_do_not_end_sentences() -> None:
    """"Sec. 5.1", "e.g. GLUE", "et al. show" and "(Sec. 1)." stay inside their sentence."""
    text = ("The details sit in Sec. 5.1 (efficiency), Sec. 5.2 and Sec. 5.3. In decision terms, point 1 matters, "
            "e.g. GLUE. Yang et al. show it. The survey sorts models (Sec. 1). An LLM is large.")
    assert split_sentences(text, ASKS.abbreviations) == [
        "The details sit in Sec. 5.1 (efficiency), Sec. 5.2 and Sec. 5.3.",
        "In decision terms, point 1 matters, e.g. GLUE.",
        "Yang et al. show it.",
        "The survey sorts models (Sec. 1).",
        "An LLM is large.",
    ]


def test_japanese_sentences_and_list_items() -> None:
    text = "まとめは3点です。\n(1) 推論が得意になる。\n(2) 創発的能力が現れる。\n\n実務では確かめましょう!次へ。"
    found = pieces(text, ASKS.abbreviations)
    assert [p.text for p in found] == ["まとめは3点です。", "推論が得意になる。", "創発的能力が現れる。",
                                       "実務では確かめましょう!", "次へ。"]
    assert [p.item for p in found] == [False, True, True, False, False]


@pytest.mark.parametrize(("question", "kind", "n", "term"), [
    ("What does Remark 5 say?", "list", 0, ""),
    ("Remark 8は何と言っていますか？", "list", 0, ""),
    ("What are the three challenges?", "count", 3, ""),
    ("サーベイが挙げる4つの課題は？", "count", 4, ""),
    ("What is an LLM according to the survey?", "definition", 0, "LLM"),
    ("How does the survey define a fine-tuned model?", "definition", 0, "fine-tuned model"),
    ("創発的能力とは何ですか？", "definition", 0, "創発的能力"),
    ("Does the survey discuss LoRA?", "plain", 0, ""),
])
def test_read_ask(question: str, kind: str, n: int, term: str) -> None:
    ask = read_ask(question, ASKS)
    assert (ask.kind, ask.n, ask.term) == (kind, n, term)


def test_remark_question_lists_every_point() -> None:
    """"What does Remark 5 say" gives its three points, not "in three points. 1." and a stop."""
    chunks = [card("en/yang2023harnessing/4.4-remark5.md"), card("en/yang2023harnessing/4.4.1-reasoning-use.md")]
    answer = compose_content(chunks, "What does Remark 5 say?", "en", Citations(SOURCES), ASKS)
    for n in (1, 2, 3):
        assert re.search(rf"^{n}\. \S", answer, re.MULTILINE), answer
    assert "emergent abilities" in answer and "inverse scaling" in answer


def test_count_ask_gives_that_many_points() -> None:
    chunks = [card("en/yang2023harnessing/6-future-challenges.md")]
    answer = compose_content(chunks, "What are the three challenges?", "en", Citations(SOURCES), ASKS)
    assert re.findall(r"^(\d)\. ", answer, re.MULTILINE) == ["1", "2", "3"]


def test_definition_comes_first() -> None:
    chunks = [card("en/yang2023harnessing/4.6-real-world.md"), card("en/yang2023harnessing/1-definitions.md")]
    answer = compose_content(chunks, "What is an LLM?", "en", Citations(SOURCES), ASKS)
    assert answer.startswith("An LLM, in their usage, is a very large language model"), answer


def test_plain_answer_quotes_complete_sentences_and_only_related_sources() -> None:
    """A card about the asked topic is quoted from its start; a further source that shares only "survey"/"say"
    with the question is left out; list items ending in ";" and heading-like lines are not quoted on their own."""
    chunks = [card("en/yang2023harnessing/5.3-hallucinations.md"),
              card("en/yang2023harnessing/3.2-label-count-rule-of-thumb.md")]
    cites = Citations(SOURCES)
    answer = compose_content(chunks, "What does the survey say about hallucination?", "en", cites, ASKS)
    assert [c.chunk.id for c in cites.items] == [chunks[0].id]
    assert answer.index("nonsensical or untrue") < answer.index("healthcare")  # the topic card, read as written
    labels = compose_content(chunks[1:], "What does the survey say about 1,000 labels?", "en", Citations(SOURCES), ASKS)
    line = next(line for line in labels.splitlines() if "walk continues;" in line)
    assert line.startswith("dotchi therefore applies its own rule of thumb"), line  # an item only with its intro


def _split(chunk: StoredChunk, at: str) -> list[StoredChunk]:
    """The card as the store may hold it: two chunks, the second starting at ``at``."""
    cut = chunk.text.index(at)
    meta = dict(chunk.metadata)
    return [StoredChunk(chunk.id + "#0", chunk.text[:cut].strip(), {**meta, "chunk_index": 0}),
            StoredChunk(chunk.id + "#1", chunk.text[cut:].strip(), {**meta, "chunk_index": 1})]


def test_a_card_is_read_over_all_its_chunks() -> None:
    """Retrieval found the second chunk of the card; the answer still gives the examples in its first chunk, cites
    both chunks, and does so only when it has the card's chunks."""
    first, second = _split(card("en/yang2023harnessing/4.4.3-scaling-no-use.md"), "Why this happens")
    question = "Explain inverse scaling and the U-shaped phenomenon, with example tasks."
    cites = Citations(SOURCES)
    answer = compose_content([second], question, "en", cites, ASKS, cards={second.id: [first, second]})
    assert "Redefine-math" in answer and "Why this happens" in answer
    assert answer.index("Redefine-math") < answer.index("Why this happens")  # in reading order
    assert {c.chunk.id for c in cites.items} == {first.id, second.id}
    assert "Redefine-math" not in compose_content([second], question, "en", Citations(SOURCES), ASKS)


def test_the_card_named_by_the_question_leads() -> None:
    """The card whose title shares the question's specific words comes first, whatever retrieval ranked higher;
    words every question here uses ("LLMs", "fine-tuned models") do not count."""
    chunks = [card("en/yang2023harnessing/3.2-abundant-annotated.md"),
              card("en/yang2023harnessing/4.2.1-summarization-translation-use.md")]
    cites = Citations(SOURCES)
    compose_content(chunks, "On summarization, do LLMs actually beat fine-tuned models?", "en", cites, ASKS)
    assert cites.items[0].chunk.id == chunks[1].id


def test_a_list_ask_takes_the_list_of_the_named_card_only() -> None:
    """"What does Remark 2 say" reads the Remark 2 card (which has no list), not another card's list."""
    chunks = [card("ja/yang2023harnessing/3.2-label-count-rule-of-thumb.md"),
              card("ja/yang2023harnessing/4.1-remark2.md")]
    cites = Citations(SOURCES)
    answer = compose_content(chunks, "Remark 2 は何と言っていますか？", "ja", cites, ASKS)
    assert cites.items[0].chunk.id == chunks[1].id
    assert not re.search(r"^1\. ", answer, re.MULTILINE), answer


def test_a_list_item_defines_its_opening_term() -> None:
    """「LLM：膨大なデータで…」 is a definition by its form (no defining word needed)."""
    chunks = [card("ja/yang2023harnessing/4.1.2-nlu-use.md"), card("ja/yang2023harnessing/1-definitions.md")]
    answer = compose_content(chunks, "LLMとは何ですか？", "ja", Citations(SOURCES), ASKS)
    assert answer.startswith("LLM:膨大なデータで事前学習され"), answer


def test_content_chunks_prefer_language_survey_and_one_chunk_per_card() -> None:
    """Same-language chunks first; among near-equal hits the survey's own card first; a card's EN and JA versions
    count once."""
    survey_en, survey_ja = card("en/yang2023harnessing/5.1-cost.md"), card("ja/yang2023harnessing/5.1-cost.md")
    other = card("en/msgenai18/when-to-fine-tune.md")
    hits = [Hit(other, 0.032), Hit(survey_ja, 0.031), Hit(survey_en, 0.030)]
    assert [c.id for c in content_chunks(hits, "en", SURVEY)] == [survey_en.id, other.id]
    assert [c.id for c in content_chunks(hits, "ja", SURVEY)] == [survey_ja.id, other.id]


# ------------------------------------------------------------------------------ every dev-set answer, real service
def _lines_quoting_sources(answer: str) -> list[str]:
    """The answer's lines that carry a citation marker, without the markers, bullets and bold headings."""
    out = []
    for line in answer_body(answer).splitlines():
        if not CITE_TAIL.search(line):
            continue
        text = CITE_TAIL.sub("", line).strip()
        if re.fullmatch(r"\*\*[^*]+\*\*", text):
            continue  # a heading line: "**Remark 5: ...** [1]"
        text = re.sub(r"^(?:-\s+)?(?:\*\*[^*]+\*\*:\s*)?", "", text)
        out.append(text)
    return out


@pytest.fixture(scope="module")
def dev_answers(bot_service: AnswerService) -> list[tuple[dict, object]]:
    items = load_items(CORPUS / "dev_set.jsonl") + load_items(CORPUS / "content_dev.jsonl")
    return [(item, bot_service.ask(item["question"])) for item in items]


def test_no_answer_sentence_is_cut(dev_answers) -> None:
    """Every line that quotes a source ends a sentence, starts like one, and does not end in an abbreviation."""
    abbreviation_end = re.compile(r"(?:^|\s|\()(?:" + "|".join(re.escape(a) for a in ASKS.abbreviations) + r")$",
                                  re.IGNORECASE)
    cut = []
    for item, answer in dev_answers:
        for text in _lines_quoting_sources(answer.answer):
            if (not SENTENCE_END.search(text) or abbreviation_end.search(text)
                    or re.match(r"[a-z,;:)、。]|\d+(?:\.\d+)*\s*[(),]", text) and not text.startswith("dotchi")):
                cut.append((item["id"], text[:120]))
    assert not cut, cut


def test_no_source_reference_looks_like_a_citation(dev_answers, bot_store_ids: set[str]) -> None:
    """[n] appears only as a citation marker at the end of a line, every cited text is free of [16]-style
    references, and there are 0 invalid citations over the dev set."""
    problems = []
    for item, answer in dev_answers:
        problems += [(item["id"], p) for p in check_citations(answer, bot_store_ids)]
        for line in answer_body(answer.answer).splitlines():
            if SOURCE_REFERENCE.search(CITE_TAIL.sub("", line)):
                problems.append((item["id"], line[:120]))
        problems += [(item["id"], c["text"][:80]) for c in answer.citations if SOURCE_REFERENCE.search(c["text"])]
    assert not problems, problems
