"""Load Markdown (with front matter), plain text, HTML and PDF files into sections with metadata.

Text is NFKC-normalised on load (and a source's own "[16]" references rewritten, see ``rewrite_references``);
char offsets in chunk metadata refer to that normalised text.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ingest.text import CJK, detect_language

SUPPORTED_SUFFIXES = {".md", ".markdown", ".txt", ".html", ".htm", ".pdf"}
# "4.1", "4.1.1", "5", "Sec. 1.2" at the start of a heading; the number becomes the chunk's section.
_SECTION_NUMBER = re.compile(r"^(?:sec(?:tion)?\.?\s*)?(\d{1,2}(?:\.\d{1,2}){0,3})\.?(?:\s|$)", re.IGNORECASE)
_MD_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


class LoadError(ValueError):
    """A file could not be turned into text; the message names the reason (the caller adds the file name)."""


@dataclass
class Section:
    """A run of text under one heading (never split across sections when chunking)."""

    text: str
    start: int  # char offset of ``text`` in the normalised document
    section: str = ""
    heading: list[str] = field(default_factory=list)
    page: int | None = None


@dataclass
class LoadedDoc:
    path: Path
    doc_id: str
    title: str
    url: str
    lang: str
    sections: list[Section]


def section_number(heading: str) -> str | None:
    match = _SECTION_NUMBER.match(heading.strip())
    return match.group(1) if match else None


def _slug(text: str) -> str:
    slug = re.sub(r"[^0-9a-zA-Z]+", "-", text).strip("-").lower()
    return slug or "doc"


# ---------------------------------------------------------------------------------------------- bytes -> text


def decode_text(data: bytes) -> str:
    """Decode bytes as UTF-8 / UTF-16 (BOM) / a detected legacy encoding such as Shift_JIS; reject binary."""
    if not data.strip():
        raise LoadError("empty file")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if b"\x00" in data[:8192]:
        # UTF-16 without BOM shows as NULs every other byte in ASCII-heavy text.
        for enc in ("utf-16-le", "utf-16-be"):
            try:
                text = data.decode(enc)
            except UnicodeDecodeError:
                continue
            if _mostly_printable(text):
                return text
        raise LoadError("binary file (not text)")
    from charset_normalizer import from_bytes

    best = from_bytes(data[:200_000]).best()
    if best is None or best.encoding is None:
        raise LoadError("unknown text encoding; save the file as UTF-8")
    text = data.decode(best.encoding, errors="strict") if _decodes(data, best.encoding) else None
    if text is None or not _mostly_printable(text):
        raise LoadError("unknown text encoding; save the file as UTF-8")
    return text


def _decodes(data: bytes, encoding: str) -> bool:
    try:
        data.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        return False
    return True


def _mostly_printable(text: str) -> bool:
    sample = text[:20_000]
    if not sample:
        return False
    bad = sum(1 for c in sample if unicodedata.category(c) in ("Cc", "Co", "Cn") and c not in "\n\r\t\f")
    return bad / len(sample) < 0.01


# A source's own numbered reference ("[16]", "[48, 44]", "[3-5]"), not a Markdown link ("[1](url)", "[1]: url")
# nor an index in code ("a[0]").
_SOURCE_REFERENCE = re.compile(r"(?<![A-Za-z0-9_\]])\[(\d{1,3}(?:\s*[,–-]\s*\d{1,3})*)\](?![(:\[])")


def _reference(match: re.Match[str]) -> str:
    numbers = re.sub(r"\s*,\s*", ", ", match.group(1))
    before = match.string[: match.start()].rstrip()[-1:]
    if before and (CJK.match(before) or before in "。、"):
        return f"(文献{numbers})"
    return f"(ref{'s' if re.search(r'[,–-]', numbers) else ''}. {numbers})"


def rewrite_references(text: str) -> str:
    """A source's numbered references become "(ref. 16)" / "(refs. 48, 44)" (「(文献16)」 after Japanese text), so
    only the answer's citation markers look like ``[n]``. Done here, at load time, rather than when composing: the
    stored chunk text is what every writer quotes (the built-in composer, an LLM's numbered sources, the sources
    panel, BM25), and char offsets keep pointing into the one normalised text."""
    return _SOURCE_REFERENCE.sub(_reference, text)


def normalize(text: str) -> str:
    """NFKC, Unix newlines, no control characters, and a source's own ``[16]``-style references rewritten."""
    text = unicodedata.normalize("NFKC", text).replace("\r\n", "\n").replace("\r", "\n")
    return rewrite_references("".join(c for c in text if c in "\n\t" or unicodedata.category(c) != "Cc"))


# ---------------------------------------------------------------------------------------------- markdown / text


def _split_front_matter(text: str) -> tuple[dict, str, int]:
    """Return (front matter dict, body, body offset)."""
    if not text.startswith("---\n"):
        return {}, text, 0
    end = text.find("\n---", 4)
    if end == -1:
        return {}, text, 0
    block = text[4:end]
    body_start = text.find("\n", end + 1)
    body_start = len(text) if body_start == -1 else body_start + 1
    try:
        meta = yaml.safe_load(block) or {}
    except yaml.YAMLError as exc:
        meta = _simple_header(block)
        if meta is None:
            raise LoadError(f"front matter is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(meta, dict):
        raise LoadError("front matter must be a mapping of key: value lines")
    return meta, text[body_start:], body_start


def _simple_header(block: str) -> dict | None:
    """Lenient 'key: free text' header lines (not strict YAML), as in many hand-written headers."""
    meta = {}
    for line in block.splitlines():
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep or not re.fullmatch(r"[A-Za-z_][\w-]*", key.strip()):
            return None
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]  # only a matching pair: '"A" (blog)' keeps its quotes
        meta[key.strip()] = value
    return meta


def _markdown_sections(body: str, offset: int, base_section: str) -> list[Section]:
    """Split at headings; each heading starts a new section whose number comes from the heading or its parents."""
    sections: list[Section] = []
    stack: list[tuple[int, str, str | None]] = []  # (level, heading text, number)
    in_code = False
    buf_start = 0
    pos = 0

    def current_section() -> str:
        for _, _, number in reversed(stack):
            if number:
                return number
        return base_section

    def flush(until: int) -> None:
        text = body[buf_start:until]
        if text.strip():
            sections.append(
                Section(
                    text=text, start=offset + buf_start, section=current_section(), heading=[h for _, h, _ in stack]
                )
            )

    for line in body.splitlines(keepends=True):
        stripped = line.strip()
        if stripped.startswith("```"):
            in_code = not in_code
        match = None if in_code else _MD_HEADING.match(stripped)
        if match:
            flush(pos)
            level, title = len(match.group(1)), match.group(2).strip()
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, title, section_number(title)))
            buf_start = pos + len(line)
        pos += len(line)
    flush(len(body))
    return sections


def _load_markdown(path: Path, text: str) -> LoadedDoc:
    meta, body, offset = _split_front_matter(text)
    title = str(meta.get("title") or _first_heading(body) or path.stem)
    lang = str(meta.get("lang") or meta.get("language") or "").split()[0:1]
    lang_code = lang[0].lower()[:2] if lang else detect_language(body)
    if lang_code not in ("ja", "en"):
        lang_code = detect_language(body)
    sections = _markdown_sections(body, offset, str(meta.get("section", "") or ""))
    return LoadedDoc(
        path=path,
        doc_id=str(meta.get("doc_id") or _slug(path.stem)),
        title=title,
        url=str(meta.get("url") or meta.get("original_url") or "").split(" ")[0],
        lang=lang_code,
        sections=sections,
    )


def _first_heading(body: str) -> str | None:
    for line in body.splitlines():
        match = _MD_HEADING.match(line.strip())
        if match:
            return match.group(2).strip()
    return None


def _load_plain_text(path: Path, text: str) -> LoadedDoc:
    first_line = next((line.strip() for line in text.splitlines() if line.strip()), path.stem)
    return LoadedDoc(
        path=path,
        doc_id=_slug(path.stem),
        title=first_line[:120],
        url="",
        lang=detect_language(text),
        sections=[Section(text=text, start=0)],
    )


# ---------------------------------------------------------------------------------------------- html


_BLOCK_TAGS = ["p", "li", "pre", "blockquote", "td", "th", "dd", "dt", "figcaption", "caption"]


def _load_html(path: Path, text: str) -> LoadedDoc:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(text, "lxml")
    for tag in soup(["script", "style", "noscript", "nav", "footer", "header", "form", "svg", "template"]):
        tag.decompose()
    title = (soup.title.get_text(" ", strip=True) if soup.title else "") or path.stem
    canonical = soup.find("link", rel="canonical")
    html_tag = soup.find("html")
    declared = (html_tag.get("lang") or "") if html_tag else ""
    # Rebuild as Markdown-ish text so headings drive sections exactly as for Markdown files.
    lines: list[str] = []
    root = soup.body or soup
    for el in root.find_all(["h1", "h2", "h3", "h4", "h5", "h6", *_BLOCK_TAGS]):
        if el.name not in ("h1", "h2", "h3", "h4", "h5", "h6") and el.find_parent(_BLOCK_TAGS):
            continue  # nested block: its text is already in the parent's
        content = normalize(el.get_text(" ", strip=True))
        if not content:
            continue
        lines.append(f"{'#' * int(el.name[1])} {content}" if el.name[0] == "h" else content)
        lines.append("")
    body = "\n".join(lines)
    if not body.strip():
        raise LoadError("HTML page has no readable text (only scripts, styles or markup)")
    lang = declared[:2].lower() if declared[:2].lower() in ("ja", "en") else detect_language(body)
    return LoadedDoc(
        path=path,
        doc_id=_slug(path.stem),
        title=normalize(title)[:200],
        url=canonical.get("href", "") if canonical else "",
        lang=lang,
        sections=_markdown_sections(body, 0, ""),
    )


# ---------------------------------------------------------------------------------------------- pdf


def _load_pdf(path: Path) -> LoadedDoc:
    from pypdf import PdfReader

    try:
        reader = PdfReader(str(path), strict=False)
        pages = [normalize(page.extract_text() or "") for page in reader.pages]
        info_title = (reader.metadata.title if reader.metadata else None) or ""
    except Exception as exc:  # noqa: BLE001 - pypdf raises many types (NotImplementedError, ...) on corrupt input
        raise LoadError(f"cannot read PDF ({type(exc).__name__}: {exc}); the file may be corrupt or truncated") from exc
    if not any(p.strip() for p in pages):
        raise LoadError("PDF has no extractable text (scanned images?); OCR it first")
    sections: list[Section] = []
    current = ""
    offset = 0
    for number, page_text in enumerate(pages, start=1):
        start = 0
        for match in re.finditer(r"(?m)^(\d{1,2}(?:\.\d{1,2}){0,2})\.?\s+[A-Z][^\n]{2,80}$", page_text):
            if match.start() > start and page_text[start : match.start()].strip():
                sections.append(
                    Section(text=page_text[start : match.start()], start=offset + start, section=current, page=number)
                )
            current, start = match.group(1), match.start()
        if page_text[start:].strip():
            sections.append(Section(text=page_text[start:], start=offset + start, section=current, page=number))
        offset += len(page_text) + 1
    body = "\n".join(pages)
    return LoadedDoc(
        path=path,
        doc_id=_slug(path.stem),
        title=normalize(info_title) or path.stem,
        url="",
        lang=detect_language(body[:20_000]),
        sections=sections,
    )


# ---------------------------------------------------------------------------------------------- entry point


def load_file(path: Path, max_bytes: int) -> LoadedDoc:
    """Load one file; raise ``LoadError`` (or ``OSError``) with a reason a user can act on."""
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise LoadError(f"unsupported file type '{suffix}' (supported: {', '.join(sorted(SUPPORTED_SUFFIXES))})")
    size = path.stat().st_size
    if size > max_bytes:
        raise LoadError(
            f"file too large ({size / 1e6:g} MB > {max_bytes / 1e6:g} MB limit; raise DOTCHI_MAX_FILE_MB to allow it)"
        )
    if size == 0:
        raise LoadError("empty file")
    if suffix == ".pdf":
        doc = _load_pdf(path)
    else:
        text = normalize(decode_text(path.read_bytes()))
        if not text.strip():
            raise LoadError("empty file (no text after decoding)")
        if suffix in (".html", ".htm"):
            doc = _load_html(path, text)
        elif suffix == ".txt":
            doc = _load_plain_text(path, text)
        else:
            doc = _load_markdown(path, text)
    if not any(s.text.strip() for s in doc.sections):
        raise LoadError("no text to index (only headings or front matter)")
    return doc
