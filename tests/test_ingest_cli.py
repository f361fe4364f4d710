"""`python -m ingest`: JSON output, exit codes, messages (subprocess and in-process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import ingest.pipeline
from ingest.__main__ import main
from ingest.embeddings import Embedder

REQUIRED_KEYS = {"added_files", "updated_files", "removed_files", "unchanged_files", "failed_files",
                 "chunks_total", "seconds"}


def run_cli(args: list[str], env_extra: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOTCHI_")}
    env.update(env_extra, HF_HUB_OFFLINE="1", ANONYMIZED_TELEMETRY="False")
    return subprocess.run([sys.executable, "-m", "ingest", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600, check=False)


def only_json(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"stdout must be exactly one JSON object, got: {stdout!r}"
    data = json.loads(lines[0])
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def cli_workspace(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One subprocess run over a good file plus an empty (bad) one; later tests reuse its store."""
    root = tmp_path_factory.mktemp("cli")
    docs = root / "docs"
    docs.mkdir()
    (docs / "good.md").write_text("---\ndoc_id: good\ntitle: Good card\nlang: en\n---\n"
                                  "Fine-tuned models suit sentiment analysis; LLMs suit open-ended generation.\n",
                                  encoding="utf-8")
    (docs / "broken.md").write_bytes(b"")
    env = {"DOTCHI_STORE_PATH": str(root / "store"), "DOTCHI_COLLECTION": "clitest"}
    first = run_cli([str(docs), "--json"], env, root)
    return {"root": root, "docs": docs, "env": env, "first": first}


def test_json_output_and_exit_code_1_for_a_bad_file(cli_workspace: dict) -> None:
    first = cli_workspace["first"]
    assert first.returncode == 1, first.stderr
    data = only_json(first.stdout)
    assert set(data) >= REQUIRED_KEYS
    assert (data["added_files"], data["failed_files"], data["updated_files"], data["removed_files"]) == (1, 1, 0, 0)
    assert data["chunks_total"] >= 1 and isinstance(data["seconds"], float) and data["seconds"] >= 0
    assert [Path(e["file"]).name for e in data["errors"]] == ["broken.md"]
    failed_lines = [line for line in first.stderr.splitlines() if "broken.md" in line]
    assert failed_lines and "empty" in failed_lines[0]
    assert "good.md" not in first.stderr
    assert (cli_workspace["root"] / "store").is_dir(), "DOTCHI_STORE_PATH must be honoured"


def test_clean_second_run_exits_0_with_nothing_added(cli_workspace: dict) -> None:
    (cli_workspace["docs"] / "broken.md").unlink()
    second = run_cli([str(cli_workspace["docs"]), "--json"], cli_workspace["env"], cli_workspace["root"])
    assert second.returncode == 0, second.stderr
    data = only_json(second.stdout)
    assert (data["added_files"], data["updated_files"], data["removed_files"], data["failed_files"]) == (0, 0, 0, 0)
    assert data["unchanged_files"] == 1
    assert data["chunks_total"] == only_json(cli_workspace["first"].stdout)["chunks_total"]


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch, embedder: Embedder, tmp_path: Path) -> Callable[..., int]:
    """main() in this process, with env settings in tmp_path and the session model (no second load)."""
    monkeypatch.setattr(ingest.pipeline, "load_embedder", lambda settings, progress=True: embedder)
    monkeypatch.setenv("DOTCHI_STORE_PATH", str(tmp_path / "store"))
    monkeypatch.setenv("DOTCHI_COLLECTION", "inprocess")
    monkeypatch.chdir(tmp_path)
    return main


def test_human_summary_and_failure_lines(in_process: Callable[..., int], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "card.md").write_text("# 1 Intro\n\nSmall models are cheap to serve.\n", encoding="utf-8")
    (docs / "scan.pdf").write_bytes(b"%PDF-1.4\nnot really\n")
    assert in_process([str(docs), "--quiet"]) == 1
    out, err = capsys.readouterr()
    assert out.startswith("ingest: 1 added, 0 updated, 0 removed, 0 unchanged, 1 failed;")
    assert any("scan.pdf" in line and "FAILED" in line for line in err.splitlines())
    (docs / "scan.pdf").unlink()
    assert in_process([str(docs), "--rebuild", "--quiet"]) == 0
    out, _ = capsys.readouterr()
    assert out.startswith("ingest: 1 added, 0 updated, 0 removed, 0 unchanged, 0 failed;")


def test_unreachable_server_exits_2(in_process: Callable[..., int], monkeypatch: pytest.MonkeyPatch,
                                    unused_port: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DOTCHI_CHROMA_HOST", "127.0.0.1")
    monkeypatch.setenv("DOTCHI_CHROMA_PORT", str(unused_port))
    assert in_process([str(tmp_path), "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert f"127.0.0.1:{unused_port}" in err and "DOTCHI_CHROMA_HOST" in err
