"""ttrpc, the RPC protocol between containerd and its shims.

``codec`` frames bytes (sans-IO); ``server`` and ``client`` drive it on
unix sockets with asyncio.
"""

from rebootshim.ttrpc.client import Client, RemoteError
from rebootshim.ttrpc.server import Method, Server

__all__ = ["Client", "Method", "RemoteError", "Server"]
