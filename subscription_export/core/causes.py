"""The real cause of a failure in words a user acts on: the operating system's error (disk
full, read-only file system, connection refused) found under library wrappers, with the file or
URL it concerns, the URL's password masked."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

# The errors an operator fixes outside this program, named as they would say them.
_NAMES = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "not a directory",
    errno.ENOENT: "no such file or directory",
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.ETIMEDOUT: "timed out",
}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what it wraps: `__cause__`, `__context__` and urllib3's `reason`, depth first."""
    todo, seen = [exc], set()
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        nested = (getattr(current, "reason", None), current.__context__, current.__cause__)
        todo += [e for e in nested if isinstance(e, BaseException)]


def os_error_in(exc: BaseException) -> OSError | None:
    """The first OSError with an errno that `exc` is, or wraps."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno is not None:
            return e
    return None


def errno_phrase(error: OSError) -> str:
    """'disk full (ENOSPC, No space left on device)'; an error without errno as it reads."""
    if error.errno is None:
        return str(error)
    code = error.errno
    symbol = errno.errorcode.get(code, str(code))
    name = _NAMES.get(code, os.strerror(code).lower())
    return f"{name} ({symbol}, {error.strerror or os.strerror(code)})"


def describe_os_error(error: OSError, path: Path | str | None = None) -> str:
    """What failed and on which file: the path given, else the one the error names."""
    where = path if path is not None else error.filename
    if error.errno is not None and where is not None and str(where) != str(error.filename):
        where = f"{where} ({error.filename})" if error.filename else where
    return errno_phrase(error) + (f" writing {where}" if where is not None else "")
