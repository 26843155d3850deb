"""The one exception hierarchy of tierd.

Every error a user can trigger is a `TierdError`; its message names the offending key or value
and says what to do. Errors raised inside the daemon travel to clients by `code` (the class
name) and are re-raised there as the same class.
"""
from __future__ import annotations

import reprlib
from typing import Iterable


class TierdError(Exception):
    """Base class of all tierd errors."""

    @property
    def code(self) -> str:
        return type(self).__name__


class ConfigError(TierdError):
    """An invalid configuration value (file, environment, flag or connector config)."""


class ProtocolError(TierdError):
    """A malformed frame or request: wrong types, unknown op, oversized frame."""


class UnknownLayoutError(TierdError):
    """A request names a layout id that was never registered with this daemon."""


class LayoutMismatchError(TierdError):
    """A chunk or layout does not match the registered layout (size, dtype, shape)."""


class CodecError(TierdError):
    """A codec spec that does not exist, or an encoded chunk that does not decode (a miss)."""


class NotReservedError(TierdError):
    """Commit or abort of a key that this connection has not reserved."""


class AlreadyStoredError(TierdError):
    """A second commit of a key that is already stored."""


class SlotNotWrittenError(TierdError):
    """A commit of a slot its writer did not fully write (the daemon's canary is still in it)."""


class CapacityError(TierdError):
    """A tier has no room and nothing can be evicted to make some."""


class NotFoundError(TierdError):
    """A key, lease or reservation that does not exist."""


class ObjectTierUnavailable(TierdError):
    """The object store did not answer in time or refused a request; its circuit may be open."""


class DaemonUnavailableError(TierdError):
    """No daemon answers at the socket path."""


def error_class(code: str) -> type[TierdError]:
    """The exception class for a wire error code; unknown codes map to TierdError."""
    cls = globals().get(code)
    if isinstance(cls, type) and issubclass(cls, TierdError):
        return cls
    return TierdError


class InternalError(TierdError):
    """The daemon failed on a request in a way it did not foresee (a bug): the request gets this
    error instead of a dropped connection, and the daemon logs the traceback."""


class InvalidArgumentError(TierdError):
    """A request argument has the right type but a value that cannot be used."""


class PermissionDeniedError(TierdError):
    """A peer this daemon does not admit, or a request outside the namespace its connection is
    bound to."""


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 3, 60, 60, 6, 6


def shown(value: object) -> str:
    """A short repr of a value from the outside (a request, a config file) for an error message:
    bounded in length and depth, so a hostile value nested a thousand deep or a megabyte long
    cannot make the error message itself fail or flood the log."""
    return _REPR.repr(value)


def names(values: Iterable[object]) -> list[str]:
    """Some names (map keys) sorted for a message: short strings as they are, anything else (bytes
    from a hostile client, which would not even sort among strings) in its `shown` form."""
    return sorted(v if isinstance(v, str) and len(v) <= 60 else shown(v) for v in values)
