"""``make bench``: rebootshim against containerd-shim-runc-v2, on a private containerd.

    python -m bench [--quick | --smoke] [--only SECTION,...] [--out MD] [--json J]

Full mode writes docs/benchmarks.md; --quick (CI-sized) and --smoke (the
smallest run, seconds; the smoke test's) write under build/bench/.  Every
sample also goes to a JSON file.  Exit status: 0 when every section was
measured (whether targets are met is reported, not enforced), 1 when a
section failed, 2 without root.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from . import report
from .env import REPO, Env
from .runner import SECTION_NAMES, log, run

COMMAND_ENV = "REBOOTSHIM_BENCH_COMMAND"  # set by the Makefile
PYTHON_M = (".venv/bin/python", "-m", "bench")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="CI-sized smoke run")
    size.add_argument("--smoke", action="store_true", help="smallest run (seconds)")
    parser.add_argument(
        "--only", default=",".join(SECTION_NAMES),
        help=f"comma-separated sections, of {','.join(SECTION_NAMES)}",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="markdown report path")
    parser.add_argument("--json", type=Path, help="JSON of every sample")
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(SECTION_NAMES)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s bench: %(message)s", datefmt="%H:%M:%S"
    )
    if os.geteuid() != 0:
        print("bench: needs root (containerd, runc, mounts)", file=sys.stderr)
        return 2
    mode = "quick" if args.quick else "smoke" if args.smoke else "full"
    out = args.out or (
        REPO / "docs" / "benchmarks.md"
        if mode == "full"
        else REPO / "build" / "bench" / f"benchmarks-{mode}.md"
    )
    json_path = args.json or REPO / "build" / "bench" / f"results-{mode}.json"
    command = os.environ.get(COMMAND_ENV) or " ".join([*PYTHON_M, *argv])
    sections = tuple(s for s in SECTION_NAMES if s in args.only.split(","))
    began = time.monotonic()
    env = Env.start()
    try:
        results = run(env, mode, sections, command, [*PYTHON_M, *argv])
    finally:
        env.close()
    results.total_seconds = time.monotonic() - began
    report.write(results, out, json_path)
    log.info("wrote %s and %s in %.0f s", out, json_path, results.total_seconds)
    for error in results.errors:
        log.error("failed: %s", error)
    return 1 if results.errors else 0


if __name__ == "__main__":
    sys.exit(main())
