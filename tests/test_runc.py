"""The runc driver against stand-in runc scripts (real processes, real
reaper): command lines, captured output, runc's own error line."""

from __future__ import annotations

import asyncio
import json
import os
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


def stopped_state(root: Path, cgroups: Path, **extra: object) -> Path:
    """A runc state dir as libcontainer writes it, for container c1."""
    paths = {name: str(cgroups / name / "ns" / "c1") for name in ("memory", "pids")}
    for path in paths.values():
        Path(path).mkdir(parents=True)
    state = {
        "id": "c1",
        "init_process_pid": 999999999,
        "init_process_start": 1,
        "config": {"Hooks": {"poststop": None}},
        "cgroup_paths": {**paths, "cpu": paths["pids"]},
        **extra,
    }
    folder = root / "c1"
    folder.mkdir(parents=True)
    (folder / "state.json").write_text(json.dumps(state))
    return folder


def test_a_stopped_container_is_removed_without_runc(tmp_path: Path) -> None:
    folder = stopped_state(tmp_path / "root", tmp_path / "cg")
    runc = Runc(Reaper(), str(tmp_path / "root"), "no-runc-needed")
    assert runc.remove_stopped("c1")
    assert not folder.exists()
    assert not (tmp_path / "cg" / "memory" / "ns" / "c1").exists()
    assert (tmp_path / "cg" / "memory" / "ns").exists()  # parents stay, as runc


@pytest.mark.parametrize(
    "case", ["poststop hooks", "live init", "busy cgroup", "no state"]
)
def test_anything_unexpected_is_left_to_runc_delete(tmp_path: Path, case: str) -> None:
    root, cgroups = tmp_path / "root", tmp_path / "cg"
    extra: dict[str, object] = {}
    if case == "poststop hooks":
        extra["config"] = {"Hooks": {"poststop": [{"path": "/bin/true"}]}}
    if case == "live init":
        with open(f"/proc/{os.getpid()}/stat") as f:
            start = f.read().rsplit(")", 1)[1].split()[19]
        extra.update(init_process_pid=os.getpid(), init_process_start=int(start))
    if case != "no state":
        stopped_state(root, cgroups, **extra)
    if case == "busy cgroup":
        (cgroups / "memory" / "ns" / "c1" / "child").mkdir()
    runc = Runc(Reaper(), str(root), "no-runc-needed")
    assert not runc.remove_stopped("c1")
    if case != "no state" and case != "busy cgroup":
        assert (root / "c1" / "state.json").exists()
