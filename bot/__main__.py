"""``python -m bot ask|eval|serve|bench`` — thin entry points over one ``bot.pipeline.Pipeline``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _pipeline(settings):
    from bot.pipeline import Pipeline

    return Pipeline.from_settings(settings)


def _generator_errors() -> tuple[type[Exception], ...]:
    """GeneratorError when an LLM path imported bot.llm (LangChain's chat models cost ~0.4 s CPU to import, so a
    run without an LLM never imports them)."""
    llm = sys.modules.get("bot.llm")
    return (llm.GeneratorError,) if llm is not None else ()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot", description="dotchi: LLM or fine-tuned model?")
    sub = parser.add_subparsers(dest="command", required=True)
    ask = sub.add_parser("ask", help="answer one or more questions")
    ask.add_argument("questions", nargs="+")
    ask.add_argument("--json", action="store_true", help="one JSON object per question, one per line")
    ask.add_argument(
        "--llm",
        choices=["none", "openai", "ollama", "llamacpp"],
        default=None,
        help="generate the prose with an LLM backend (default: DOTCHI_GENERATOR, normally none)",
    )
    ev = sub.add_parser("eval", help="evaluate on a JSONL dev set")
    ev.add_argument("file", nargs="?", type=Path, default=None)
    ev.add_argument("--json", action="store_true")
    ev.add_argument("--split", default="all", help="all, or one split name in the file (dev, heldout, ...)")
    ev.add_argument("--failures", action="store_true", help="list the failed questions (of the last reader run)")
    ev.add_argument("--reader", choices=["both", "rules", "learned"], default="both")
    conv = sub.add_parser("converse", help="answer conversations: JSONL lines {conversation, question} in turn order")
    conv.add_argument("file", type=Path)
    conv.add_argument("--json", action="store_true", help="one JSON object per turn (the ask --json contract)")
    serve = sub.add_parser("serve", help="start the Gradio UI")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    train = sub.add_parser("train-reader", help="train the learned question reader on corpus/reader/")
    train.add_argument("--cv", action="store_true", help="also cross-validate (k-fold by scenario), rules vs learned")
    train.add_argument("--folds", type=int, default=5)
    train.add_argument("--json", action="store_true")
    bench = sub.add_parser("bench", help="speed/quality benchmark")
    bench.add_argument("--json", action="store_true")
    bench.add_argument("--sizes", type=lambda v: [int(x) for x in v.split(",")], default=None,
                       help="only the scale section, at these chunk counts (comma-separated, e.g. 1000000)")
    bench.add_argument("--modes", choices=["embedded", "server", "both"], default="both",
                       help="with --sizes: which Chroma modes to fill and time")
    args = parser.parse_args(argv)

    from bot.knowledge import KnowledgeError
    from ingest.config import get_settings
    from ingest.embeddings import ModelError
    from ingest.store import StoreError

    settings = get_settings()
    try:
        if args.command == "ask":
            from ingest.store import ChunkStore

            if ChunkStore(settings).count() == 0:  # before loading the model: fail fast
                print("bot: the store is empty; run `make ingest` (or `python -m ingest`) first.", file=sys.stderr)
                return 2
            if args.llm:
                settings = settings.model_copy(update={"generator": args.llm})
            pipeline = _pipeline(settings)
            for question in args.questions:
                answer = pipeline.ask(question)
                if args.json:
                    print(json.dumps(answer.to_json(), ensure_ascii=False), flush=True)
                else:
                    print(answer.answer, end="\n\n", flush=True)
            return 0
        if args.command == "converse":
            from bot.evaluate import converse

            return converse(_pipeline(settings), args.file, args.json)
        if args.command == "eval":
            from bot.evaluate import main as eval_main

            return eval_main(settings, args.file, args.split, args.json, args.failures, args.reader)
        if args.command == "serve":
            from bot.ui import serve as serve_ui

            serve_ui(settings, host=args.host, port=args.port)
            return 0
        if args.command == "train-reader":
            from bot.reader import main as train_main

            code = train_main(settings, cv=args.cv, folds=args.folds, as_json=args.json)
            if args.cv:
                from bot.turns import main as turns_main

                code = code or turns_main(settings, as_json=args.json, folds=args.folds)
            return code
        if args.command == "bench":
            from bot.bench import main as bench_main

            return bench_main(settings, args.json, sizes=args.sizes, modes=args.modes)
    except (ModelError, StoreError, KnowledgeError, *_generator_errors()) as exc:
        print(f"bot: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
