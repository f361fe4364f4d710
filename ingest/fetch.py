"""``python -m ingest --fetch``: download the originals listed in ``corpus/sources.toml``.

Each source with a ``fetch_url`` is saved as ``<data_dir>/sources/<doc_id><suffix>`` (suffix from the PDF
magic, the content type or the URL) and written atomically, so a broken download never leaves half a file.
The pipeline then ingests that folder and derives titles, pages and sections from the files themselves.
"""

from __future__ import annotations

import http.client
import os
import re
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from ingest.config import Settings
from ingest.sources import Source, SourcesError, load_sources

USER_AGENT = "dotchi/0.1"
_CONTENT_TYPES = {"application/pdf": ".pdf", "text/html": ".html", "application/xhtml+xml": ".html",
                  "text/markdown": ".md", "text/x-markdown": ".md"}
_URL_SUFFIXES = {".pdf": ".pdf", ".html": ".html", ".htm": ".html", ".md": ".md", ".markdown": ".md",
                 ".txt": ".txt"}
_SAVED_SUFFIXES = {".pdf", ".html", ".md", ".txt"}
_SAFE_DOC_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,120}")


class FetchError(RuntimeError):
    """Nothing could be fetched (or the source list is unusable); the message says what happened."""


def read_sources(path: Path) -> list[Source]:
    """The sources of ``path`` that have a ``fetch_url`` (read by the one sources.toml reader)."""
    try:
        return [s for s in load_sources(path).values() if s.fetch_url]
    except SourcesError as exc:
        raise FetchError(f"{exc}; it lists the originals to download") from exc


def choose_suffix(url: str, content_type: str, data: bytes) -> str | None:
    """``.pdf``/``.html``/``.md``/``.txt`` for a download, or None when it is none of those."""
    if data.startswith(b"%PDF-"):
        return ".pdf"
    ctype = content_type.split(";")[0].strip().lower()
    if ctype in _CONTENT_TYPES:
        return _CONTENT_TYPES[ctype]
    url_suffix = _URL_SUFFIXES.get(PurePosixPath(urlparse(url).path).suffix.lower())
    if url_suffix:
        return url_suffix  # e.g. a README.md served as text/plain
    if ctype.startswith("text/") or (not ctype and b"\x00" not in data[:4096]):
        return ".txt"
    return None


def _download(url: str, timeout: float, max_bytes: int) -> tuple[bytes, str]:
    """Return (content, suffix); raise ``OSError``/``ValueError``/``HTTPException`` with a readable reason."""
    if urlparse(url).scheme not in ("http", "https"):
        raise ValueError("only http(s) URLs are fetched")
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        data = response.read(max_bytes + 1)
        final_url, content_type = response.geturl(), response.headers.get("Content-Type", "")
    if len(data) > max_bytes:
        raise ValueError(f"larger than {max_bytes / 1e6:g} MB (raise DOTCHI_MAX_FILE_MB to allow it)")
    if not data.strip():
        raise ValueError("empty response")
    suffix = choose_suffix(final_url, content_type, data)
    if suffix is None:
        raise ValueError(f"unsupported content type '{content_type or 'unknown'}'")
    return data, suffix


def _write_atomic(target: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


def fetch_sources(settings: Settings, quiet: bool = False, timeout: float = 20.0) -> Path:
    """Download every source with a ``fetch_url``; return the folder holding the downloads."""
    toml_path = settings.corpus_dir / "sources.toml"
    sources = read_sources(toml_path)
    if not sources:
        raise FetchError(f"no source in {toml_path} has a fetch_url; nothing to download")
    folder = settings.data_dir / "sources"
    max_bytes = int(settings.max_file_mb * 1_000_000)
    failures: list[tuple[Source, str]] = []
    for number, source in enumerate(sources, start=1):
        prefix = f"fetch [{number}/{len(sources)}] {source.doc_id}"
        try:
            if not _SAFE_DOC_ID.fullmatch(source.doc_id):
                raise ValueError("doc_id is not a safe file name (letters, digits, '_', '-', '.')")
            data, suffix = _download(source.fetch_url, timeout, max_bytes)
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"{source.doc_id}{suffix}"
            _write_atomic(target, data)
            for old in folder.glob(f"{source.doc_id}.*"):  # an earlier download of another type
                if old != target and old.suffix in _SAVED_SUFFIXES and old.stem == source.doc_id:
                    old.unlink()
        except (OSError, ValueError, http.client.HTTPException) as exc:
            failures.append((source, _reason(exc)))
            if not quiet:
                print(f"{prefix}: FAILED ({_reason(exc)})", file=sys.stderr)
            continue
        if not quiet:
            print(f"{prefix}: {target} ({len(data) / 1e3:.0f} kB)", file=sys.stderr)

    if len(failures) == len(sources):
        first, reason = failures[0]
        tried = ", ".join(s.doc_id for s in sources)
        raise FetchError(
            f"could not download any of the {len(sources)} originals listed in {toml_path} ({tried}); "
            f"first error: {first.doc_id} <{first.fetch_url}>: {reason}. Are you offline? "
            "Nothing was ingested and the store was not touched. dotchi works without the originals: "
            "its own cards are ingested by `make ingest`.")
    if failures:
        print(f"ingest --fetch: {len(failures)} of {len(sources)} downloads failed (ingesting the rest):",
              file=sys.stderr)
        for source, reason in failures:
            print(f"  {source.doc_id} <{source.fetch_url}>: {reason}", file=sys.stderr)
    return folder
