#!/usr/bin/env python3
"""Write the containerd-shim-reboot-v2 launcher that `make install` puts on
PATH: this interpreter with -IS (isolated from PYTHON* variables, no site)
and the checkout's src/ on sys.path; and compile the package, since
containerd's environment may forbid writing bytecode at run time.

The shim turns site processing back on itself where it needs installed
packages (cli.main), so `start` pays only for what it imports.
"""

from __future__ import annotations

import compileall
import os
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
TEMPLATE = """#!{python} -IS
import sys
sys.path.insert(0, {src!r})
from rebootshim.cli import main
sys.exit(main())
"""


def main() -> int:
    compileall.compile_dir(SRC / "rebootshim", quiet=1)
    target = Path(sys.argv[1])
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(TEMPLATE.format(python=sys.executable, src=str(SRC)))
    tmp.chmod(0o755)
    os.replace(tmp, target)  # replaces the symlink earlier installs made
    return 0


if __name__ == "__main__":
    sys.exit(main())
