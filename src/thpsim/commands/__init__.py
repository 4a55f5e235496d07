"""Sub-commands of ``thpsim`` that live in their own modules.

Every module in this package that defines ``register(subparsers)`` is imported by
:func:`thpsim.cli.build_parser` and adds its sub-command(s) to the parser.  A
handler returns the exit code; bad input is raised as :class:`UsageError` (one line,
exit code 2, no traceback).
"""

from __future__ import annotations

import os
import tempfile

__all__ = ["UsageError", "write_atomic", "write_atomic_bytes"]


class UsageError(Exception):
    """Bad input: reported as one line, exit code 2."""


def write_atomic_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a
    rename, so that an existing file is never left half-written."""
    d = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".thpsim-")
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError as e:
        os.unlink(tmp)
        raise UsageError(f"{path}: {e.strerror}") from None


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`write_atomic_bytes`)."""
    write_atomic_bytes(path, text.encode("utf-8"))
