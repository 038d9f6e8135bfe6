"""The error kinds of the shim, mirroring containerd's errdefs.

Every layer raises one of these; the ttrpc dispatcher maps them to a
status code exactly once (``code``), and anything else becomes Unknown.
Messages are lowercase and name the object ("container X not found").
"""

from __future__ import annotations


class ShimError(Exception):
    """Base class: a request failed; ``code`` is the gRPC status code."""

    code = 2  # Unknown


class Canceled(ShimError):
    code = 1


class InvalidArgument(ShimError):
    code = 3


class DeadlineExceeded(ShimError):
    code = 4


class NotFound(ShimError):
    code = 5


class AlreadyExists(ShimError):
    code = 6


class FailedPrecondition(ShimError):
    code = 9


class Unimplemented(ShimError):
    code = 12


class Internal(ShimError):
    code = 13


class Unavailable(ShimError):
    code = 14
