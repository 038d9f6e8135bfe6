"""Process stdio that survives reboots: upstream (client side, one per
process lifetime), boots (runc side, one per boot) and the relays between.

See docs/ARCHITECTURE.md, section "stdio/".
"""

from rebootshim.stdio.binary import Spawn
from rebootshim.stdio.boot import Boot, ChildFds
from rebootshim.stdio.upstream import Upstream

__all__ = ["Boot", "ChildFds", "Spawn", "Upstream"]
