#!/usr/bin/env python3
"""Write the containerd-shim-reboot-v2 launcher that `make install` puts on
PATH: this interpreter with -S and the checkout's src/ on sys.path.

The shim turns site processing back on itself where it needs installed
packages (cli.main), so `start` pays only for what it imports.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
TEMPLATE = """#!{python} -S
import sys
sys.path.insert(0, {src!r})
from rebootshim.cli import main
sys.exit(main())
"""


def main() -> int:
    target = Path(sys.argv[1])
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(TEMPLATE.format(python=sys.executable, src=str(SRC)))
    tmp.chmod(0o755)
    os.replace(tmp, target)  # replaces the symlink earlier installs made
    return 0


if __name__ == "__main__":
    sys.exit(main())
