"""Exceptions, kept in plain Python so the compiled and pure hot paths share them.

Following h11, protocol errors are split by who is at fault: a *local* error is
a misuse of the state machine by fastsend itself, a *remote* one is something
the peer sent.
"""

from __future__ import annotations


class FastsendError(Exception):
    """Base class of every error fastsend raises on purpose."""


class PDUError(FastsendError, ValueError):
    """Bytes that do not form a valid PDU or PDV item (PS3.8 9.3)."""


class UnrecognizedPDUError(PDUError):
    """A PDU type PS3.8 9.3 does not define: the A-ABORT reason is "unrecognized PDU"
    (PS3.8 9.3.8), not "invalid PDU parameter value"."""


class ElementScanError(FastsendError, ValueError):
    """A data set whose element stream cannot be walked (PS3.5 7.1).

    ``offset`` is the byte offset in the buffer where the walk failed.
    """

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


class LocalProtocolError(FastsendError):
    """fastsend asked the association for something its state does not allow."""


class RemoteProtocolError(FastsendError):
    """The peer broke the Upper Layer protocol (PS3.8 9.2, Evt19)."""
