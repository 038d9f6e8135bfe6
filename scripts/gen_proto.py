#!/usr/bin/env python3
"""Generate the Python protobuf modules from containerd's own .proto files.

The sources are Debian's golang-github-containerd-containerd-dev (and the
gogo packages it imports).  When /usr/share/gocode is not installed, the
three .deb files are fetched with ``apt-get download`` and unpacked into
the build folder, which costs ~1.5 MB instead of the 438 MB the package
pulls in.  The gogoproto and fieldpath options only steer Go code
generation, so they are stripped, and imports are renamed so that the
modules land in the ``rebootshim.api`` package.  The generated files are
never edited by hand; rerun ``make proto`` instead.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "proto"
OUT = ROOT / "src"
DEBS = (
    "golang-github-containerd-containerd-dev",
    "golang-github-gogo-protobuf-dev",
    "golang-github-gogo-googleapis-dev",
)
GOCODE = "usr/share/gocode/src"
CTRD = "github.com/containerd/containerd/"
# containerd path -> our module path (under src/)
PROTOS = {
    CTRD + "runtime/v2/task/shim.proto": "rebootshim/api/task/shim.proto",
    CTRD + "api/types/mount.proto": "rebootshim/api/types/mount.proto",
    CTRD + "api/types/task/task.proto": "rebootshim/api/types/task.proto",
    CTRD + "api/events/task.proto": "rebootshim/api/events/task.proto",
    CTRD + "api/services/ttrpc/events/v1/events.proto": (
        "rebootshim/api/events/service.proto"
    ),
    CTRD + "runtime/v2/runc/options/oci.proto": "rebootshim/api/runc/options.proto",
    CTRD + "pkg/runtimeoptions/v1/api.proto": "rebootshim/api/runtimeoptions.proto",
    "github.com/gogo/googleapis/google/rpc/status.proto": (
        "rebootshim/api/rpc/status.proto"
    ),
}
OWN = {ROOT / "proto" / "ttrpc" / "request.proto": "rebootshim/api/ttrpc/request.proto"}

DROP_LINE = re.compile(
    r'^\s*(import\s+(weak\s+)?"[^"]*(gogo|fieldpath)\.proto";'
    r"|option\s+\((gogoproto|containerd\.plugin)\.[^)]*\)[^;]*;)\s*$"
)
FIELD_OPTS = re.compile(r"\s*\[\s*\((gogoproto|containerd\.plugin)\.[^\]]*\]")


def source_root() -> Path:
    """Where the containerd .proto files are, fetching them if needed."""
    system = Path("/") / GOCODE
    if (system / PROTOS_KEY).exists():
        return system
    unpacked = BUILD / "debs"
    if not (unpacked / GOCODE / PROTOS_KEY).exists():
        unpacked.mkdir(parents=True, exist_ok=True)
        # As root into a root-only dir: apt's _apt sandbox user could not
        # write there (it warns and falls back), so ask for root at once.
        subprocess.run(
            ["apt-get", "-o", "APT::Sandbox::User=root", "download", *DEBS],
            cwd=unpacked,
            check=True,
        )
        for deb in sorted(unpacked.glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
    return unpacked / GOCODE


PROTOS_KEY = next(iter(PROTOS))


def rewrite(text: str) -> str:
    """Strip Go-only options and point imports at our module paths."""
    lines = []
    for line in text.splitlines():
        if DROP_LINE.match(line):
            continue
        line = FIELD_OPTS.sub("", line)
        for old, new in PROTOS.items():
            line = line.replace(f'"{old}"', f'"{new}"')
        lines.append(line)
    return "\n".join(lines) + "\n"


def main() -> int:
    src = source_root()
    staging = BUILD / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    for old, new in PROTOS.items():
        target = staging / new
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(rewrite((src / old).read_text()))
    for path, new in OWN.items():
        target = staging / new
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    names = [*PROTOS.values(), *OWN.values()]
    subprocess.run(
        [
            "protoc",
            f"-I{staging}",
            "-I/usr/include",
            f"--python_out={OUT}",
            f"--pyi_out={OUT}",
            *names,
        ],
        check=True,
    )
    for folder in {(OUT / n).parent for n in names}:
        (folder / "__init__.py").touch()
    return 0


if __name__ == "__main__":
    sys.exit(main())
