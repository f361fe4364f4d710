"""`python -m bot ask` as a real subprocess against the session corpus store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ingest.config import Settings

REPO = Path(__file__).resolve().parents[1]
CONTRACT_KEYS = {"question", "language", "verdict", "abstained", "answer", "flow_path", "citations"}


def run_bot(args: list[str], settings_env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOTCHI_")}
    env.update(settings_env, HF_HUB_OFFLINE="1", ANONYMIZED_TELEMETRY="False", PYTHONIOENCODING="utf-8")
    return subprocess.run([sys.executable, "-m", "bot", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, encoding="utf-8", timeout=300, stdin=subprocess.DEVNULL)


def store_env(settings: Settings) -> dict[str, str]:
    return {"DOTCHI_STORE_PATH": str(settings.store_path), "DOTCHI_COLLECTION": settings.collection,
            "DOTCHI_MODEL_CACHE_DIR": str(settings.model_cache_dir), "DOTCHI_CORPUS_DIR": str(REPO / "corpus")}


def test_ask_json_prints_one_line_per_question(bot_settings: Settings, tmp_path: Path) -> None:
    """Two questions → exactly two JSON lines with the contract keys, in order, exit code 0."""
    questions = ["感情分析でラベル付きデータが20万件ある。LLMとファインチューニング、どっち？",
                 "What's the weather in Tokyo tomorrow?"]
    proc = run_bot(["ask", "--json", *questions], store_env(bot_settings), tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2, proc.stdout
    answers = [json.loads(line) for line in lines]
    for question, answer in zip(questions, answers, strict=True):
        assert set(answer) >= CONTRACT_KEYS
        assert answer["question"] == question
    assert answers[0]["language"] == "ja" and answers[0]["verdict"] == "fine_tuned" and answers[0]["citations"]
    assert answers[1]["language"] == "en" and answers[1]["abstained"] is True and answers[1]["citations"] == []


def test_ask_on_empty_store_exits_2(tmp_path: Path, model_cache_dir: Path) -> None:
    """An empty store → exit code 2, nothing on stdout, and a message telling to run ingest."""
    env = {"DOTCHI_STORE_PATH": str(tmp_path / "empty"), "DOTCHI_COLLECTION": "emptycli",
           "DOTCHI_MODEL_CACHE_DIR": str(model_cache_dir), "DOTCHI_CORPUS_DIR": str(REPO / "corpus")}
    proc = run_bot(["ask", "--json", "LLM or fine-tuned model for NER?"], env, tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "ingest" in proc.stderr and "empty" in proc.stderr


def test_ask_imports_no_ui_or_llm_packages(bot_settings: Settings, tmp_path: Path) -> None:
    """`ask` without an LLM never imports gradio, matplotlib or LangChain's chat models (cold start: lazy imports),
    and still answers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOTCHI_")}
    env.update(store_env(bot_settings), HF_HUB_OFFLINE="1", ANONYMIZED_TELEMETRY="False", PYTHONIOENCODING="utf-8",
               PYTHONPATH=str(REPO))  # this checkout's bot, whatever the editable install points at
    question = "LLM or fine-tuning for NER?"
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "bot", "ask", "--json", question], cwd=tmp_path,
                          env=env, capture_output=True, text=True, encoding="utf-8", timeout=300,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[0])["language"] == "en"
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "bot.service" in imported and "chromadb" in imported, "importtime output was read"
    heavy = {"gradio", "matplotlib", "langchain_core.language_models.chat_models", "langchain_openai", "bot.llm",
             "bot.ui"}
    assert not heavy & imported, f"imported on the ask path: {sorted(heavy & imported)}"
