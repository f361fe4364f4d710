"""Settings: defaults, DOTCHI_ env prefix, .env, validation, immutability."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from ingest.config import PACKAGED_E5, Settings, get_settings


def test_defaults_are_local_disk_store() -> None:
    """Without env, the store is on disk and the packaged e5 model is used."""
    s = Settings(_env_file=None)
    assert s.store_path == Path(".dotchi/chroma")
    assert s.collection == "dotchi"
    assert (s.chunk_size, s.chunk_overlap) == (1200, 150)
    assert s.embedding_model == PACKAGED_E5
    assert s.chroma_host is None and not s.uses_server
    assert "on disk" in s.describe_store() and str(s.store_path) in s.describe_store()


def test_env_prefix_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """DOTCHI_* variables are read and typed."""
    monkeypatch.setenv("DOTCHI_STORE_PATH", str(tmp_path / "st"))
    monkeypatch.setenv("DOTCHI_COLLECTION", "envcoll")
    monkeypatch.setenv("DOTCHI_CHUNK_SIZE", "800")
    monkeypatch.setenv("DOTCHI_CHROMA_HOST", "127.0.0.1")
    monkeypatch.setenv("DOTCHI_CHROMA_PORT", "9123")
    monkeypatch.setenv("CHUNK_SIZE", "300")  # no prefix: ignored
    s = Settings(_env_file=None)
    assert s.store_path == tmp_path / "st"
    assert s.collection == "envcoll"
    assert s.chunk_size == 800
    assert s.uses_server and s.chroma_port == 9123
    assert "http://127.0.0.1:9123" in s.describe_store() and "envcoll" in s.describe_store()


def test_empty_chroma_host_means_local(monkeypatch: pytest.MonkeyPatch) -> None:
    """DOTCHI_CHROMA_HOST= (empty) is the same as unset."""
    monkeypatch.setenv("DOTCHI_CHROMA_HOST", "")
    s = Settings(_env_file=None)
    assert s.chroma_host is None and not s.uses_server


def test_dotenv_file_is_read_and_env_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A .env in the working dir is read; a real env variable takes precedence."""
    (tmp_path / ".env").write_text("DOTCHI_COLLECTION=fromdotenv\nDOTCHI_RETRIEVAL_K=9\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert Settings().collection == "fromdotenv"
    assert Settings().retrieval_k == 9
    monkeypatch.setenv("DOTCHI_RETRIEVAL_K", "3")
    assert Settings().retrieval_k == 3


def test_settings_are_frozen() -> None:
    s = Settings(_env_file=None)
    with pytest.raises(ValidationError):
        s.chunk_size = 500  # type: ignore[misc]
    assert s.chunk_size == 1200


def test_overlap_must_be_below_size() -> None:
    with pytest.raises(ValidationError, match="DOTCHI_CHUNK_OVERLAP"):
        Settings(_env_file=None, chunk_size=200, chunk_overlap=200)
    assert Settings(_env_file=None, chunk_size=200, chunk_overlap=199).chunk_overlap == 199


@pytest.mark.parametrize("field, value", [("chunk_size", 99), ("chunk_size", 4001), ("collection", "ab"),
                                          ("max_file_mb", 0), ("embed_batch_size", 0), ("port", 70000)])
def test_out_of_range_values_rejected(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(_env_file=None, **{field: value})


def test_bad_env_value_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOTCHI_CHUNK_SIZE", "lots")
    with pytest.raises(ValidationError, match="chunk_size"):
        Settings(_env_file=None)


def test_get_settings_is_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    """get_settings reads the env once; cache_clear picks up changes."""
    monkeypatch.setenv("DOTCHI_COLLECTION", "first")
    first = get_settings()
    monkeypatch.setenv("DOTCHI_COLLECTION", "second")
    assert get_settings() is first and first.collection == "first"
    get_settings.cache_clear()
    assert get_settings().collection == "second"
