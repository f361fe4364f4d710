"""Shared fixtures: one real embedding model per session, tmp-path stores, a real `chroma run` server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ingest.config import Settings, get_settings
from ingest.embeddings import Embedder, load_embedder
from ingest.pipeline import IngestReport, run_ingest

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCES_DIR = Path(__file__).parents[2] / "shared" / "sources"
# Two small real sources (a handful of chunks each) keep the embedding cost of every ingest low.
SMALL_SOURCES = (
    "anyscale_fine_tuning_is_for_form_not_facts_NOTES.md",
    "jingfengyang_blog_gpt3_reproduction_and_gpt35_usage_NOTES.md",
)
CHROMA_BIN = Path(sys.executable).parent / "chroma"


def default_model_cache_dir() -> Path:
    """The cache dir a plain ``Settings()`` uses, so the one-time e5 conversion is shared with `make run`."""
    return Settings.model_fields["model_cache_dir"].get_default(call_default_factory=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(proc: subprocess.Popen) -> None:
    """Terminate a server started by a fixture; kill it if it does not exit within 15 s."""
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No DOTCHI_* variable from the caller's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith("DOTCHI_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ANONYMIZED_TELEMETRY", "False")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def unused_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on."""
    return free_port()


@pytest.fixture(scope="session")
def model_cache_dir() -> Path:
    return default_model_cache_dir()


@pytest.fixture(scope="session")
def embedder(model_cache_dir: Path) -> Embedder:
    """The real packaged multilingual-e5-small, loaded once per session."""
    return load_embedder(Settings(_env_file=None, model_cache_dir=model_cache_dir), progress=False)


@pytest.fixture
def make_settings(tmp_path: Path, model_cache_dir: Path) -> Callable[..., Settings]:
    """Settings with the store in tmp_path; keyword arguments override."""

    def make(**overrides) -> Settings:
        values = {"store_path": tmp_path / "store", "collection": "testdocs", "model_cache_dir": model_cache_dir,
                  "corpus_dir": tmp_path / "corpus"}
        values.update(overrides)
        return Settings(_env_file=None, **values)

    return make


@pytest.fixture
def ingest(embedder: Embedder) -> Callable[..., IngestReport]:
    """run_ingest with the session embedder and no progress output."""

    def run(settings: Settings, paths: list[Path] | None, **kwargs) -> IngestReport:
        return run_ingest(settings, paths, embedder=embedder, quiet=True, **kwargs)

    return run


@pytest.fixture(scope="session")
def sources_dir() -> Path:
    if not SOURCES_DIR.is_dir():
        pytest.skip(f"real source texts not available: {SOURCES_DIR} is absent")
    return SOURCES_DIR


@pytest.fixture
def real_docs(tmp_path: Path, sources_dir: Path) -> Path:
    """A writable folder with copies of two small real sources."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in SMALL_SOURCES:
        shutil.copyfile(sources_dir / name, docs / name)
    return docs


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A real `chroma run` on 127.0.0.1 with its data in a tmp dir; stopped at teardown."""
    if not CHROMA_BIN.exists():
        pytest.skip(f"chroma CLI not found at {CHROMA_BIN}")
    root = tmp_path_factory.mktemp("chroma-server")
    port = free_port()
    log = (root / "server.log").open("wb")
    proc = subprocess.Popen([str(CHROMA_BIN), "run", "--path", str(root / "data"), "--host", "127.0.0.1",
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"chroma run exited with {proc.returncode}: {(root / 'server.log').read_text()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"chroma run did not answer on port {port}")
            time.sleep(0.2)
        yield "127.0.0.1", port
    finally:
        stop_process(proc)
        log.close()


# ---------------------------------------------------------------------------------------------- bot fixtures
BOT_COLLECTION = "bottest"


@pytest.fixture(scope="session")
def bot_settings(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder, model_cache_dir: Path) -> Settings:
    """corpus/cards ingested once per session into a tmp on-disk Chroma store (collection 'bottest')."""
    settings = Settings(_env_file=None, store_path=tmp_path_factory.mktemp("bot-store") / "chroma",
                        collection=BOT_COLLECTION, chroma_host=None, corpus_dir=REPO_ROOT / "corpus",
                        model_cache_dir=model_cache_dir)
    report = run_ingest(settings, [REPO_ROOT / "corpus" / "cards"], embedder=embedder, quiet=True)
    assert report.failed_files == 0, report.errors
    assert report.chunks_total > 0
    return settings


@pytest.fixture(scope="session")
def bot_service(bot_settings: Settings, embedder: Embedder):
    """The real AnswerService over the session corpus store."""
    from bot.service import AnswerService

    return AnswerService(bot_settings, embedder=embedder)


@pytest.fixture(scope="session")
def bot_store_ids(bot_service) -> set[str]:
    """Ids of every live chunk in the session corpus store."""
    return {chunk.id for chunk in bot_service.store.iter_chunks(live_only=True)}
