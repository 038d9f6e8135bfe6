"""The runc driver against stand-in runc scripts (real processes, real
reaper): command lines, captured output, runc's own error line."""

from __future__ import annotations

import asyncio
import json
import signal
import stat
from pathlib import Path

import pytest

from rebootshim.errors import NotFound, Unavailable
from rebootshim.reaper import Reaper
from rebootshim.runtime.runc import Runc, RuncError

# Logs its argv; fails like runc: a JSON error line in --log, exit 1.
FAKE_RUNC = """#!/bin/sh
echo "$@" >> "$(dirname "$0")/argv"
log=""; prev=""
for a in "$@"; do [ "$prev" = "--log" ] && log="$a"; prev="$a"; done
fail() { printf '{"level":"error","msg":"%s"}\n' "$1" >> "$log"; exit 1; }
case "$*" in
  *" ps "*) echo '[1,22]' ;;
  *" kill "*) fail "container not running" ;;
  *" start "*) fail "container gone does not exist" ;;
  *" update "*) cat > "$(dirname "$0")/stdin" ;;
  *" pause "*) echo "plain failure" >&2; exit 1 ;;
esac
exit 0
"""


def fake_runc(tmp_path: Path) -> str:
    path = tmp_path / "runc"
    path.write_text(FAKE_RUNC)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def drive(tmp_path: Path, body: object, binary: str | None = None) -> None:
    async def main() -> None:
        reaper = Reaper()
        reaper.install(asyncio.get_running_loop())
        try:
            runc = Runc(reaper, str(tmp_path / "root"), binary or fake_runc(tmp_path))
            await body(runc)  # type: ignore[operator]
        finally:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGCHLD)

    asyncio.run(main())


def test_ps_returns_the_pids_runc_prints(tmp_path: Path) -> None:
    async def body(runc: Runc) -> None:
        assert await runc.ps("c1", str(tmp_path)) == [1, 22]
        argv = (tmp_path / "argv").read_text()
        assert f"--root {tmp_path}/root --log {tmp_path}/log.json" in argv
        assert "ps --format json c1" in argv

    drive(tmp_path, body)


def test_a_failure_quotes_runcs_own_last_error_line(tmp_path: Path) -> None:
    async def body(runc: Runc) -> None:
        with pytest.raises(RuncError, match="runc kill failed: container not running"):
            await runc.kill("c1", str(tmp_path), 9)

    drive(tmp_path, body)


def test_a_missing_container_is_not_found(tmp_path: Path) -> None:
    async def body(runc: Runc) -> None:
        with pytest.raises(NotFound, match="does not exist"):
            await runc.start("gone", str(tmp_path))

    drive(tmp_path, body)


def test_without_a_json_line_the_last_stderr_line_is_quoted(tmp_path: Path) -> None:
    async def body(runc: Runc) -> None:
        with pytest.raises(RuncError, match="runc pause failed: plain failure"):
            await runc.pause("c1", str(tmp_path))

    drive(tmp_path, body)


def test_update_sends_the_resources_as_json_on_stdin(tmp_path: Path) -> None:
    async def body(runc: Runc) -> None:
        await runc.update("c1", str(tmp_path), {"memory": {"limit": 1024}})
        sent = json.loads((tmp_path / "stdin").read_text())
        assert sent == {"memory": {"limit": 1024}}

    drive(tmp_path, body)


def test_a_missing_runc_binary_fails_the_call_as_unavailable(tmp_path: Path) -> None:
    async def body(runc: Runc) -> None:
        with pytest.raises(Unavailable, match="no-such-runc not found"):
            await runc.start("c1", str(tmp_path))

    drive(tmp_path, body, binary="no-such-runc")
