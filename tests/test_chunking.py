"""Chunking: sentence/word boundaries, weighted sizes, overlap, sections, char offsets."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.chunking import Chunk, chunk_section, chunk_sections, weighted_len
from ingest.loaders import Section, decode_text, load_file, normalize

JA_SENTENCES = [
    "大規模言語モデルは多くのタスクで高い性能を示します。",
    "しかし、感情分析ではファインチューニングしたモデルが強いです！",
    "なぜでしょうか？",
    "学習データが豊富な場合、小さなモデルでも十分に対応できます。",
    "一方で、知識集約型の質問応答では大規模言語モデルが優れています。",
    "推論のコストも考える必要があります。",
    "レイテンシが重要な場面では軽量なモデルが選ばれます！",
    "結局、タスクとデータ次第です。",
    "ドメイン外のデータに対しては汎化性能が問われます。",
    "評価指標の選び方も結果に影響します？",
]
EN_SENTENCES = [
    "Large language models do well on many tasks.",
    "Fine-tuned models still win on sentiment analysis benchmarks!",
    "Why is that so?",
    "With plenty of labelled data a small model is often enough.",
    "Knowledge-intensive question answering favours large models.",
    "Inference cost matters as well.",
    "When latency is critical, lightweight models are chosen.",
    "In the end it depends on the task and the data.",
]


def boundaries(parts: list[str], sep: str = "") -> set[int]:
    """Offsets where each part starts and ends in sep.join(parts)."""
    out, pos = set(), 0
    for part in parts:
        out.add(pos)
        pos += len(part)
        out.add(pos)
        pos += len(sep)
    return out


def check_offsets(chunks: list[Chunk], document: str) -> None:
    for chunk in chunks:
        assert document[chunk.char_start : chunk.char_end] == chunk.text


def test_weighted_len_counts_cjk_double() -> None:
    assert weighted_len("abc") == 3
    assert weighted_len("日本語") == 6
    assert weighted_len("カナかな") == 8
    assert weighted_len("GPT-4は強い。") == 5 + 2 * 4


def test_japanese_splits_only_at_sentence_ends() -> None:
    """A paragraph longer than a chunk splits at 。！？, never inside a sentence."""
    text = "".join(JA_SENTENCES)
    chunks = chunk_section(Section(text=text, start=0), chunk_size=120, overlap=0)
    assert len(chunks) >= 4
    allowed = boundaries(JA_SENTENCES)
    for chunk in chunks:
        assert chunk.char_start in allowed and chunk.char_end in allowed, chunk.text
        assert chunk.text[-1] in "。！？"
        assert weighted_len(chunk.text) <= 120
    assert "".join(c.text for c in chunks) == text  # nothing lost, nothing repeated without overlap


def test_japanese_after_nfkc_normalisation() -> None:
    """Loaded text is NFKC-normalised (！？ → !?), and still splits at sentence ends."""
    text = normalize("".join(JA_SENTENCES))
    sentences = [normalize(s) for s in JA_SENTENCES]
    chunks = chunk_section(Section(text=text, start=0), chunk_size=120, overlap=0)
    allowed = boundaries(sentences)
    assert len(chunks) >= 4
    assert all(c.char_start in allowed and c.char_end in allowed for c in chunks)


def test_english_splits_at_sentences_and_never_mid_word() -> None:
    text = " ".join(EN_SENTENCES)
    chunks = chunk_section(Section(text=text, start=0), chunk_size=130, overlap=0)
    assert len(chunks) >= 3
    allowed = boundaries(EN_SENTENCES, " ")
    for chunk in chunks:
        assert chunk.char_start in allowed and chunk.char_end in allowed, chunk.text
        assert len(chunk.text) <= 130


def test_overlong_english_sentence_breaks_between_words() -> None:
    """A sentence longer than a chunk is cut at spaces: every chunk consists of whole words."""
    words = [f"token{i:03d}x" for i in range(120)]
    text = " ".join(words)  # one 1300-char "sentence" without punctuation
    chunks = chunk_section(Section(text=text, start=0), chunk_size=100, overlap=0)
    assert len(chunks) == 12  # 10 words of 10 chars per chunk
    for chunk in chunks:
        assert len(chunk.text) <= 100
        assert all(word in words for word in chunk.text.split(" ")), chunk.text
    assert " ".join(c.text for c in chunks) == text


def test_overlong_japanese_sentence_is_cut_by_characters_within_size() -> None:
    text = "あ" * 300 + "。"
    chunks = chunk_section(Section(text=text, start=0), chunk_size=100, overlap=0)
    assert [weighted_len(c.text) for c in chunks[:-1]] == [100] * (len(chunks) - 1)
    assert "".join(c.text for c in chunks) == text


def test_overlap_carries_the_tail_sentence() -> None:
    """With overlap, the next chunk starts with the last sentence of the previous one."""
    text = " ".join(EN_SENTENCES)
    chunks = chunk_section(Section(text=text, start=0), chunk_size=130, overlap=70)
    assert len(chunks) >= 3
    for prev, nxt in zip(chunks, chunks[1:], strict=False):
        tail = next(s for s in EN_SENTENCES if prev.text.endswith(s))
        assert nxt.text.startswith(tail + " "), (prev.text, nxt.text)
        assert nxt.char_start == prev.char_end - len(tail)
        assert nxt.char_end > prev.char_end, "every chunk must add new text"
    check_offsets(chunks, text)


def test_japanese_overlap_is_whole_sentences_within_weighted_budget() -> None:
    text = "".join(JA_SENTENCES)
    chunks = chunk_section(Section(text=text, start=0), chunk_size=140, overlap=60)
    allowed = boundaries(JA_SENTENCES)
    carried = 0
    for prev, nxt in zip(chunks, chunks[1:], strict=False):
        assert nxt.char_start in allowed
        shared = text[nxt.char_start : prev.char_end] if nxt.char_start < prev.char_end else ""
        assert weighted_len(shared) <= 60
        carried += bool(shared)
    assert carried >= 1


def test_no_chunk_is_only_overlap() -> None:
    """Tail units that would not leave room for new text are not carried (no redundant chunk)."""
    a, b, c, d = "a" * 49 + ".", "b" * 29 + ".", "c" * 29 + ".", "d" * 94 + "."
    text = " ".join([a, b, c, d])
    chunks = chunk_section(Section(text=text, start=0), chunk_size=100, overlap=60)
    for prev, nxt in zip(chunks, chunks[1:], strict=False):
        assert not (nxt.char_start >= prev.char_start and nxt.char_end <= prev.char_end), [x.text for x in chunks]
    assert [x.text for x in chunks] == [f"{a} {b}", f"{b} {c}", d]


def test_paragraphs_are_kept_whole_when_they_fit() -> None:
    paras = ["First paragraph. It has two sentences.", "Second one.", "Third paragraph is here."]
    text = "\n\n".join(paras)
    chunks = chunk_section(Section(text=text, start=0), chunk_size=60, overlap=0)
    assert [c.text for c in chunks] == ["First paragraph. It has two sentences.\n\nSecond one.", paras[2]]


def test_chunks_never_span_sections() -> None:
    """Two short sections that would fit together still give separate chunks, each with its own section."""
    first = Section(text="Fine-tuned models win on NLU.\n", start=10, section="4.1", heading=["4.1 NLU"])
    second = Section(text="LLMs win on generation.\n", start=60, section="4.2", heading=["4.2 NLG"], page=3)
    chunks = chunk_sections([first, second], chunk_size=1000, overlap=100)
    assert [(c.text, c.section, c.heading, c.page) for c in chunks] == [
        ("Fine-tuned models win on NLU.", "4.1", ("4.1 NLU",), None),
        ("LLMs win on generation.", "4.2", ("4.2 NLG",), 3),
    ]
    assert (chunks[0].char_start, chunks[1].char_start) == (10, 60)


def test_offsets_point_into_the_normalised_document(tmp_path: Path) -> None:
    """char_start/char_end index the NFKC text of the whole file, front matter included."""
    body_ja = "".join(JA_SENTENCES)
    text = ("---\ntitle: Ｏｆｆｓｅｔｓ\nlang: ja\n---\n# 1 概要\n\n" + body_ja + "\n\n## 1.1 English\n\n"
            + " ".join(EN_SENTENCES) + "\n\n## 2 最後\n\n短い段落です。\n")
    path = tmp_path / "offsets.md"
    path.write_text(text, encoding="utf-8")
    doc = load_file(path, 10_000_000)
    chunks = chunk_sections(doc.sections, chunk_size=150, overlap=30)
    document = normalize(decode_text(path.read_bytes()))
    check_offsets(chunks, document)
    assert {c.section for c in chunks} == {"1", "1.1", "2"}
    for chunk in chunks:
        owner = next(s for s in doc.sections if s.section == chunk.section)
        assert owner.start <= chunk.char_start and chunk.char_end <= owner.start + len(owner.text)
        assert weighted_len(chunk.text) <= 150


def test_real_sources_respect_size_and_offsets(sources_dir: Path) -> None:
    """Every real source chunks within the weighted size with exact offsets (no embedding needed)."""
    checked = 0
    for path in sorted(sources_dir.glob("*.md")):
        doc = load_file(path, 50_000_000)
        chunks = chunk_sections(doc.sections, chunk_size=1200, overlap=150)
        document = normalize(decode_text(path.read_bytes()))
        assert chunks, path.name
        check_offsets(chunks, document)
        assert max(weighted_len(c.text) for c in chunks) <= 1200, path.name
        checked += 1
    assert checked >= 5


_ALPHABET = st.sampled_from(list("abcdefghij") + list("あいう漢字") + [" ", " ", ".", "。", "!", "\n", "\n\n"])


@settings(max_examples=150, deadline=None)
@given(pieces=st.lists(_ALPHABET, min_size=1, max_size=600), size=st.integers(100, 260),
       overlap_ratio=st.floats(0, 0.9))
def test_chunking_invariants(pieces: list[str], size: int, overlap_ratio: float) -> None:
    """For any text: sizes hold, offsets are exact, every chunk adds text, no non-space char is lost."""
    text = "".join(pieces)
    overlap = int(size * overlap_ratio)
    chunks = chunk_section(Section(text=text, start=5), chunk_size=size, overlap=overlap)
    document = "x" * 5 + text
    check_offsets(chunks, document)
    covered = set()
    for chunk in chunks:
        assert weighted_len(chunk.text) <= size
        assert chunk.text == chunk.text.strip() and chunk.text
        covered.update(range(chunk.char_start, chunk.char_end))
    for prev, nxt in zip(chunks, chunks[1:], strict=False):
        assert nxt.char_start > prev.char_start and nxt.char_end > prev.char_end
    missing = [i for i, ch in enumerate(document) if i >= 5 and not ch.isspace() and i not in covered]
    assert not missing


@pytest.mark.parametrize("size, overlap", [(100, 0), (1200, 150), (4000, 999)])
def test_blank_section_gives_no_chunks(size: int, overlap: int) -> None:
    assert chunk_section(Section(text=" \n\n \t", start=0), size, overlap) == []
    [only] = chunk_section(Section(text="\n  word  \n", start=7), size, overlap)
    assert (only.text, only.char_start, only.char_end) == ("word", 10, 14)
