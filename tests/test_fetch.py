"""`python -m ingest --fetch`: offline path (store untouched); download + ingest from a local server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ingest.config import Settings
from ingest.embeddings import Embedder, load_embedder
from ingest.fetch import FetchError, choose_suffix, fetch_sources
from ingest.pipeline import run_ingest
from ingest.store import ChunkStore

REPO = Path(__file__).resolve().parents[1]

HTML_PAGE = """<!doctype html><html lang="en"><head><title>Practical guide</title></head><body>
<h1>Practical guide</h1>
<h2>3.1 Pretraining data</h2><p>Pretraining data shapes what a large model knows about the world.</p>
<h2>3.2 Finetuning data</h2><p>With plenty of labelled data, a fine-tuned small model can beat an LLM.</p>
</body></html>"""

README_MD = "# Guide\n\n## 4.1 Traditional NLU tasks\n\nFine-tuned models usually win on classic NLU.\n"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_sources(folder: Path, entries: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    blocks = [f'[[sources]]\ndoc_id = "{doc_id}"\ntitle = "{doc_id}"\nurl = "{url}"\nfetch_url = "{url}"\n'
              f'lang = "en"\n' for doc_id, url in entries.items()]
    blocks.append('[[sources]]\ndoc_id = "nofetch"\ntitle = "no fetch_url"\nurl = "https://example.org"\n'
                  'lang = "en"\n')
    (folder / "sources.toml").write_text("\n".join(blocks), encoding="utf-8")
    return folder


def _make_pdf() -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    pages = [("1 Introduction", "Large language models are strong zero-shot learners. " * 8),
             ("2 Practical Guide for Models", "Encoder-only models suit classification. " * 8)]
    for heading, body in pages:
        pdf.add_page()
        pdf.multi_cell(0, 8, heading, new_x="LMARGIN", new_y="NEXT")
        pdf.multi_cell(0, 8, body, new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    return load_embedder(Settings(data_dir=tmp_path_factory.mktemp("data")), progress=False)


@pytest.fixture()
def server() -> Iterator[str]:
    # "/paper" has no suffix (type from the header); README.md comes as text/plain like raw.githubusercontent.
    routes = {"/paper": ("application/pdf", _make_pdf()),
              "/guide": ("text/html; charset=utf-8", HTML_PAGE.encode()),
              "/raw/README.md": ("text/plain; charset=utf-8", README_MD.encode())}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path not in routes:
                self.send_error(404)
                return
            ctype, body = routes[self.path]
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def test_choose_suffix() -> None:
    assert choose_suffix("https://arxiv.org/pdf/2304.13712", "application/pdf", b"%PDF-1.7") == ".pdf"
    assert choose_suffix("https://x.org/a", "application/octet-stream", b"%PDF-1.4 ...") == ".pdf"
    assert choose_suffix("https://x.org/page", "text/html; charset=utf-8", b"<html>") == ".html"
    assert choose_suffix("https://raw.x.org/README.md", "text/plain; charset=utf-8", b"# hi") == ".md"
    assert choose_suffix("https://x.org/notes", "text/plain", b"hi") == ".txt"
    assert choose_suffix("https://x.org/img", "image/png", b"\x89PNG") is None


def test_offline_raises_fetch_error(tmp_path: Path) -> None:
    port = _closed_port()
    corpus = _write_sources(tmp_path / "corpus", {"paper": f"http://127.0.0.1:{port}/paper",
                                                  "guide": f"http://127.0.0.1:{port}/guide"})
    settings = Settings(corpus_dir=corpus, data_dir=tmp_path / "data", store_path=tmp_path / "store")
    with pytest.raises(FetchError) as info:
        fetch_sources(settings, quiet=True, timeout=5)
    message = str(info.value)
    assert "paper" in message and "guide" in message and "nofetch" not in message
    assert "store was not touched" in message and "make ingest" in message
    assert not (tmp_path / "data" / "sources").exists()


def test_missing_sources_toml(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="sources.toml"):
        fetch_sources(Settings(corpus_dir=tmp_path, data_dir=tmp_path / "data"), quiet=True)


@pytest.mark.parametrize("store_exists", [False, True])
def test_cli_offline_exits_3_without_touching_store(tmp_path: Path, store_exists: bool) -> None:
    port = _closed_port()
    corpus = _write_sources(tmp_path / "corpus", {"paper": f"http://127.0.0.1:{port}/paper"})
    store = tmp_path / "store"
    if store_exists:
        store.mkdir()
        (store / "marker.bin").write_bytes(b"keep me")
    def snapshot() -> list[tuple[Path, int]]:
        return sorted((p.relative_to(store), p.stat().st_mtime_ns) for p in store.rglob("*"))

    before = snapshot() if store_exists else None
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOTCHI_")}
    env.update(DOTCHI_CORPUS_DIR=str(corpus), DOTCHI_STORE_PATH=str(store),
               DOTCHI_DATA_DIR=str(tmp_path / "data"), PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "ingest", "--fetch"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert "ingest --fetch: could not download any of the 1 originals" in proc.stderr
    assert "store was not touched" in proc.stderr
    if store_exists:
        assert snapshot() == before
    else:
        assert not store.exists()


def test_fetch_then_ingest(tmp_path: Path, server: str, embedder: Embedder,
                           capsys: pytest.CaptureFixture[str]) -> None:
    corpus = _write_sources(tmp_path / "corpus", {"paper": f"{server}/paper", "guide": f"{server}/guide",
                                                  "readme": f"{server}/raw/README.md",
                                                  "gone": f"{server}/missing"})
    settings = Settings(corpus_dir=corpus, data_dir=tmp_path / "data", store_path=tmp_path / "store")
    folder = fetch_sources(settings, timeout=5)
    assert folder == tmp_path / "data" / "sources"
    assert sorted(p.name for p in folder.iterdir()) == ["guide.html", "paper.pdf", "readme.md"]
    assert (folder / "paper.pdf").read_bytes().startswith(b"%PDF-")
    err = capsys.readouterr().err
    assert "1 of 4 downloads failed" in err and "gone" in err and "HTTP 404" in err

    report = run_ingest(settings, [folder], embedder=embedder, quiet=True)
    assert report.failed_files == 0 and report.added_files == 3, report.errors
    chunks = list(ChunkStore(settings).iter_chunks())
    by_doc: dict[str, list[dict]] = {}
    for chunk in chunks:
        by_doc.setdefault(chunk.metadata["doc_id"], []).append(chunk.metadata)
    assert set(by_doc) == {"paper", "guide", "readme"}
    assert {m["page"] for m in by_doc["paper"]} == {1, 2}
    assert {m["section"] for m in by_doc["paper"]} == {"1", "2"}
    assert {m["section"] for m in by_doc["guide"]} == {"3.1", "3.2"}
    assert all("page" not in m for m in by_doc["guide"])
    assert {m["section"] for m in by_doc["readme"]} == {"4.1"}

    # A second fetch replaces the files in place (no duplicates, no leftover temp files).
    fetch_sources(settings, quiet=True, timeout=5)
    assert sorted(p.name for p in folder.iterdir()) == ["guide.html", "paper.pdf", "readme.md"]
