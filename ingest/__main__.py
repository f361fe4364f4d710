"""``python -m ingest [PATH_OR_DIR ...] [--rebuild] [--json] [--fetch]``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ingest.config import get_settings
from ingest.embeddings import ModelError
from ingest.store import StoreError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ingest", description="Ingest documents into dotchi's store.")
    parser.add_argument("paths", nargs="*", type=Path, help="files or folders (default: corpus/cards)")
    parser.add_argument("--rebuild", action="store_true", help="drop the store and ingest everything again")
    parser.add_argument("--json", action="store_true", help="print one JSON object with the counts")
    parser.add_argument(
        "--fetch", action="store_true", help="download the originals listed in corpus/sources.toml, then ingest them"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    settings = get_settings()
    quiet = args.quiet or args.json
    try:
        paths = args.paths
        if args.fetch:
            from ingest.fetch import FetchError, fetch_sources

            try:
                paths = [fetch_sources(settings, quiet=quiet)]
            except FetchError as exc:
                print(f"ingest --fetch: {exc}", file=sys.stderr)
                return 3
        from ingest.pipeline import run_ingest

        report = run_ingest(settings, paths or None, rebuild=args.rebuild, quiet=quiet)
    except (ModelError, StoreError) as exc:
        print(f"ingest: {exc}", file=sys.stderr)
        return 2
    for err in report.errors:  # also with --json: stdout stays one JSON object, stderr says what failed
        print(f"FAILED {err['file']}: {err['error']}", file=sys.stderr)
    if args.json:
        print(json.dumps(report.to_json(), ensure_ascii=False))
    else:
        print(report.summary())
    return 1 if report.failed_files else 0


if __name__ == "__main__":
    sys.exit(main())
