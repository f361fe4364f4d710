"""Loaders: Markdown/text/HTML/PDF → sections with metadata; decoding; every failure is a LoadError."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from fpdf import FPDF

from ingest.loaders import (
    SUPPORTED_SUFFIXES,
    LoadError,
    decode_text,
    load_file,
    normalize,
    section_number,
)

MB = 10_000_000
JA_TEXT = ("ファインチューニングしたモデルは感情分析のような従来のタスクに向いています。"
           "一方で、大規模言語モデルは知識が必要な質問応答で強みを発揮します！本当でしょうか？")


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def make_pdf(path: Path, pages: list[str], title: str = "Two page report") -> Path:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    pdf.set_title(title)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 8, text)
    pdf.output(str(path))
    return path


def doc_text(path: Path) -> str:
    """The normalised text that char offsets refer to."""
    return normalize(decode_text(path.read_bytes()))


# ---------------------------------------------------------------------------------------------- markdown


CARD = """---
doc_id: yang2023harnessing
section: "4.1.1"
title: "Traditional NLU tasks: where fine-tuned models win"
lang: en
url: https://arxiv.org/abs/2304.13712
---
Fine-tuned models still beat LLMs on most traditional NLU benchmarks such as GLUE.
"""


def test_front_matter_sets_metadata(tmp_path: Path) -> None:
    doc = load_file(write(tmp_path / "card.md", CARD), MB)
    assert doc.doc_id == "yang2023harnessing"
    assert doc.title == "Traditional NLU tasks: where fine-tuned models win"
    assert doc.lang == "en"
    assert doc.url == "https://arxiv.org/abs/2304.13712"
    assert len(doc.sections) == 1
    section = doc.sections[0]
    assert section.section == "4.1.1"
    assert "GLUE" in section.text and "doc_id" not in section.text
    assert doc_text(tmp_path / "card.md")[section.start : section.start + len(section.text)] == section.text


def test_japanese_card_front_matter(tmp_path: Path) -> None:
    path = write(tmp_path / "ja.md", f'---\ndoc_id: ja1\nsection: "5.1"\ntitle: 効率\nlang: ja\n---\n{JA_TEXT}\n')
    doc = load_file(path, MB)
    assert (doc.doc_id, doc.title, doc.lang, doc.sections[0].section) == ("ja1", "効率", "ja", "5.1")


def test_numbered_headings_become_sections(tmp_path: Path) -> None:
    """'## 4.1 …' → 4.1, nested '### 4.1.1 …' → 4.1.1, an unnumbered child inherits, a sibling resets."""
    text = ("# Survey\n\nIntro text.\n\n## 4 Usage\n\nUsage overview.\n\n## 4.1 Traditional NLU\n\nNLU text.\n\n"
            "### 4.1.1 Where fine-tuning wins\n\nWins text.\n\n#### Remark 2\n\nRemark text.\n\n"
            "### Unnumbered note\n\nNote text.\n\n## Sec. 5.2 Trust\n\nTrust text.\n\n"
            "```\n# not a heading inside code\n```\n")
    path = write(tmp_path / "survey.md", text)
    doc = load_file(path, MB)
    by_text = {s.text.strip().split("\n")[0]: s for s in doc.sections}
    assert by_text["Intro text."].section == ""
    assert by_text["Usage overview."].section == "4"
    assert by_text["NLU text."].section == "4.1"
    assert by_text["Wins text."].section == "4.1.1"
    assert by_text["Remark text."].section == "4.1.1"
    assert by_text["Remark text."].heading == ["Survey", "4.1 Traditional NLU", "4.1.1 Where fine-tuning wins",
                                                "Remark 2"]
    assert by_text["Note text."].section == "4.1", "an unnumbered ### under 4.1 inherits 4.1, not 4.1.1"
    assert by_text["Trust text."].section == "5.2"
    assert "# not a heading inside code" in by_text["Trust text."].text
    assert doc.title == "Survey"
    assert doc.doc_id == "survey" and doc.url == ""
    full = doc_text(path)
    for s in doc.sections:
        assert full[s.start : s.start + len(s.text)] == s.text


@pytest.mark.parametrize("heading, number", [("4.1 Traditional NLU", "4.1"), ("4.1.1 Wins", "4.1.1"),
                                             ("5. Efficiency", "5"), ("Sec. 1.2 Footnote", "1.2"),
                                             ("Section 3 Data", "3"), ("2023 results", None),
                                             ("Remark 2", None), ("GPT-3.5 usage", None)])
def test_section_number(heading: str, number: str | None) -> None:
    assert section_number(heading) == number


def test_lenient_key_value_header(tmp_path: Path) -> None:
    """A hand-written header that is not valid YAML is read line by line; quotes are kept unless they wrap."""
    text = ('---\ntitle: "Fine tuning is for form, not facts" (Anyscale blog) - NOTES ONLY\n'
            'authors: Waleed Kadous (byline on the page: "By Waleed Kadous")\n'
            'original_url: https://www.anyscale.com/blog/fine-tuning-is-for-form-not-facts (blog post)\n'
            'language: en (+ one quoted line)\nsection: "2"\n---\n\n# Notes\n\nFine-tuning teaches form.\n')
    doc = load_file(write(tmp_path / "anyscale_NOTES.md", text), MB)
    assert doc.title == '"Fine tuning is for form, not facts" (Anyscale blog) - NOTES ONLY'
    assert doc.url == "https://www.anyscale.com/blog/fine-tuning-is-for-form-not-facts"
    assert doc.lang == "en"
    assert doc.doc_id == "anyscale-notes"
    assert [s.section for s in doc.sections] == ["2"]


def test_broken_front_matter_is_a_load_error(tmp_path: Path) -> None:
    text = "---\ntitle: [unclosed\n  - what\n---\nBody.\n"
    with pytest.raises(LoadError, match="front matter"):
        load_file(write(tmp_path / "bad.md", text), MB)


def test_front_matter_only_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match="no text to index"):
        load_file(write(tmp_path / "meta.md", "---\ntitle: x\n---\n# Heading only\n"), MB)


def test_language_detection_without_metadata(tmp_path: Path) -> None:
    assert load_file(write(tmp_path / "ja.md", JA_TEXT), MB).lang == "ja"
    assert load_file(write(tmp_path / "en.md", "Plain English text about models."), MB).lang == "en"


# ---------------------------------------------------------------------------------------------- plain text


def test_plain_text_is_one_section(tmp_path: Path) -> None:
    path = write(tmp_path / "Meeting Notes.txt", "\n\nMeeting notes\nWe compared GPT-4 and a fine-tuned BERT.\n")
    doc = load_file(path, MB)
    assert doc.title == "Meeting notes"
    assert doc.doc_id == "meeting-notes"
    assert doc.lang == "en"
    assert len(doc.sections) == 1 and doc.sections[0].start == 0
    assert "fine-tuned BERT" in doc.sections[0].text


def test_text_is_nfkc_normalised(tmp_path: Path) -> None:
    """Full-width ASCII and half-width kana are folded; CRLF becomes LF."""
    path = write(tmp_path / "w.txt", "ＧＰＴ－４ ｶﾀｶﾅ\r\nnext line\r\n")
    text = load_file(path, MB).sections[0].text
    assert "GPT-4 カタカナ\nnext line" in text and "\r" not in text


# ---------------------------------------------------------------------------------------------- html


HTML = """<!doctype html><html lang="ja"><head><title>ファインチューニング入門</title>
<link rel="canonical" href="https://example.org/ft">
<style>p { color: red } .secret { display: none }</style>
<script>var tracking = "SCRIPT_TEXT";</script></head>
<body><nav>Menu Home About</nav>
<h1>概要</h1><p>大規模言語モデルと小さなモデルの比較です。</p>
<h2>4.1 従来のタスク</h2><p>感情分析では<b>ファインチューニング</b>が有利です。</p>
<ul><li>GLUE<p>nested paragraph</p></li></ul>
<script>document.write("MORE_SCRIPT")</script><footer>Copyright footer</footer></body></html>"""


def test_html_headings_become_sections_without_scripts(tmp_path: Path) -> None:
    path = tmp_path / "intro.html"
    path.write_text(HTML, encoding="utf-8")
    doc = load_file(path, MB)
    assert doc.title == "ファインチューニング入門"
    assert doc.url == "https://example.org/ft"
    assert doc.lang == "ja"
    everything = "\n".join(s.text for s in doc.sections)
    for hidden in ("SCRIPT_TEXT", "MORE_SCRIPT", "color: red", "Menu Home", "Copyright footer"):
        assert hidden not in everything
    assert [s.section for s in doc.sections] == ["", "4.1"]
    assert doc.sections[0].heading == ["概要"]
    assert "比較です" in doc.sections[0].text
    assert "ファインチューニング が有利です" in doc.sections[1].text
    assert everything.count("nested paragraph") == 1


def test_html_with_only_scripts_is_a_load_error(tmp_path: Path) -> None:
    path = tmp_path / "app.html"
    path.write_text("<html><head><script>init()</script><style>b{}</style></head>"
                    "<body><script>render()</script></body></html>", encoding="utf-8")
    with pytest.raises(LoadError, match="no readable text"):
        load_file(path, MB)


# ---------------------------------------------------------------------------------------------- pdf


def test_pdf_pages_and_numbered_sections(tmp_path: Path) -> None:
    path = make_pdf(tmp_path / "report.pdf", [
        "1 Introduction\nLarge language models are general purpose tools.",
        "2.1 Fine-tuning\nSmall fine-tuned models win on sentiment analysis.",
    ])
    doc = load_file(path, MB)
    assert doc.title == "Two page report"
    assert doc.lang == "en" and doc.doc_id == "report"
    assert [(s.page, s.section) for s in doc.sections] == [(1, "1"), (2, "2.1")]
    assert "general purpose" in doc.sections[0].text
    assert "sentiment analysis" in doc.sections[1].text


@pytest.mark.parametrize("variant", ["truncated", "garbage", "unsupported-filter", "pdf-header-only"])
def test_broken_pdf_is_a_load_error(tmp_path: Path, variant: str) -> None:
    """Truncated, garbage or structurally odd PDFs never raise anything but LoadError."""
    raw = make_pdf(tmp_path / "good.pdf", ["1 Introduction\nSome text here.", "Page two text."]).read_bytes()
    data = {
        "truncated": raw[: len(raw) // 2],
        "garbage": b"%PDF-1.4\nthis is not really a pdf\n%%EOF\n",
        "unsupported-filter": raw.replace(b"/FlateDecode", b"/FlateDecodX"),
        "pdf-header-only": b"%PDF-1.7\n",
    }[variant]
    bad = tmp_path / f"{variant}.pdf"
    bad.write_bytes(data)
    with pytest.raises(LoadError, match="PDF"):
        load_file(bad, MB)


def test_pdf_without_text_is_a_load_error(tmp_path: Path) -> None:
    pdf = FPDF()
    pdf.add_page()
    pdf.rect(10, 10, 50, 50)
    pdf.output(str(tmp_path / "scan.pdf"))
    with pytest.raises(LoadError, match="no extractable text"):
        load_file(tmp_path / "scan.pdf", MB)


# ---------------------------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("encoding", ["shift_jis", "cp932", "euc-jp", "utf-16", "utf-16-le", "utf-16-be",
                                      "utf-8-sig"])
def test_japanese_in_legacy_and_utf16_encodings(encoding: str) -> None:
    data = JA_TEXT.encode(encoding)
    if encoding == "utf-16-le":  # BOM-less UTF-16 with some ASCII in it
        data = ("# 見出し\n\n" + JA_TEXT).encode(encoding)
    assert JA_TEXT in decode_text(data)


def test_shift_jis_markdown_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "sjis.md"
    path.write_bytes(f"# 概要\n\n{JA_TEXT}\n".encode("shift_jis"))
    doc = load_file(path, MB)
    assert doc.lang == "ja" and doc.title == "概要"
    assert JA_TEXT.replace("！", "!").replace("？", "?") in doc.sections[0].text


def test_empty_file_is_a_load_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.md"
    path.write_bytes(b"")
    with pytest.raises(LoadError, match="empty"):
        load_file(path, MB)
    path.write_bytes(b"  \n\t\n")
    with pytest.raises(LoadError, match="empty"):
        load_file(path, MB)


@pytest.mark.parametrize("kind", ["random", "gzip-like", "png-like"])
def test_binary_renamed_md_is_a_load_error(tmp_path: Path, kind: str) -> None:
    rng = random.Random(7)
    data = {"random": rng.randbytes(4096),
            "gzip-like": b"\x1f\x8b\x08\x00\x00\x00\x00\x00" + rng.randbytes(2000),
            "png-like": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + rng.randbytes(2000)}[kind]
    path = tmp_path / "photo.md"
    path.write_bytes(data)
    with pytest.raises(LoadError, match="binary|encoding"):
        load_file(path, MB)


def test_undecodable_bytes_without_nul_are_a_load_error() -> None:
    rng = random.Random(3)
    data = bytes(rng.randrange(1, 256) for _ in range(4096))
    with pytest.raises(LoadError):
        decode_text(data)


def test_oversized_file_names_the_limit(tmp_path: Path) -> None:
    path = write(tmp_path / "big.md", "word " * 100)
    with pytest.raises(LoadError, match=r"too large .*0\.0001 MB limit") as info:
        load_file(path, max_bytes=100)
    assert "DOTCHI_MAX_FILE_MB" in str(info.value)
    assert load_file(path, max_bytes=500).sections  # exactly at the limit is fine


@pytest.mark.parametrize("name", ["slides.docx", "notes", "data.csv"])
def test_unsupported_suffix(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, "some text")
    with pytest.raises(LoadError, match="unsupported file type") as info:
        load_file(path, MB)
    assert ".md" in str(info.value)


def test_supported_suffixes_are_case_insensitive(tmp_path: Path) -> None:
    assert {".md", ".txt", ".html", ".pdf"} <= SUPPORTED_SUFFIXES
    doc = load_file(write(tmp_path / "UPPER.MD", "# 1 Title\n\nBody text."), MB)
    assert doc.sections[0].section == "1"


@pytest.mark.parametrize(("raw", "expected"), [
    ("LLMs [16] are big [48, 44].", "LLMs (ref. 16) are big (refs. 48, 44)."),
    ("文献では[16]とされる。", "文献では(文献16)とされる。"),
    ("models [3–5] and [７]", "models (refs. 3–5) and (ref. 7)"),  # NFKC first: full-width digits
    ("see [1](http://x), [1]: http://y and a[0]", "see [1](http://x), [1]: http://y and a[0]"),  # links, code
])
def test_source_references_are_rewritten_on_load(raw: str, expected: str) -> None:
    """A source's own numbered references never look like an answer's [n] citation markers."""
    assert normalize(raw) == expected


def test_rewritten_references_reach_the_sections(tmp_path: Path) -> None:
    doc = load_file(write(tmp_path / "paper.txt", "Scaling helps reasoning [16].\n\nBut not always [48, 44].\n"), MB)
    text = " ".join(s.text for s in doc.sections)
    assert "(ref. 16)" in text and "(refs. 48, 44)" in text and "[" not in text
