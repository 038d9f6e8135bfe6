"""The benchmark (bench/, ``make bench``) in its smallest mode, on the fixture's
containerd: it must measure both shims and produce well-formed figures.

No timing is asserted: the benchmark reports, it does not judge.
"""

from __future__ import annotations

import math
import re
import sys

from .harness import REPO, Containerd

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import report, runner
from bench.env import Env
from bench.stats import REBOOTSHIM, RUNC

BOTH = (REBOOTSHIM, RUNC)
# Figures that must carry samples of both shims, and a ratio.
BOTH_KEYS = {
    "downtime", "start", "teardown", "rss-1", "pss-1", "total-pss-1",
    "total-pss-with-container-1", "stdout-file", "stdout-fifo",
}  # fmt: skip


def test_smoke_run_measures_both_shims(containerd: Containerd) -> None:
    env = Env(containerd, own=False)
    try:
        results = runner.run(
            env, "smoke", runner.SECTION_NAMES, "pytest", ["python", "-m", "bench"]
        )
    finally:
        env.close()
    assert results.errors == []

    figures = {f.key: f for f in results.all_figures()}
    assert set(figures) >= BOTH_KEYS
    for key in BOTH_KEYS:
        figure = figures[key]
        assert figure.well_formed(BOTH), (key, figure.samples)
        assert figure.ratio is not None and figure.ratio > 0, key
    for figure in figures.values():
        measured = tuple(shim for shim in BOTH if shim in figure.samples)
        assert measured and figure.well_formed(measured), (figure.key, measured)

    assert results.storm is not None
    checks = {c.key: c for c in results.storm.checks}
    for key in ("fds", "rss", "threads", "pss", "exec-fds"):
        assert checks[key].before > 0 and checks[key].after > 0, key
    assert results.storm.seconds > 0

    text = report.markdown(results)
    assert "| Reboot downtime (ms) |" in text
    assert not re.search(r"\b(nan|inf)\b", text, re.IGNORECASE)
    assert all(math.isfinite(f.ratio or 1.0) for f in figures.values())
