"""Sub-commands of ``thpsim`` that live in their own modules.

Every module in this package that defines ``register(subparsers)`` is imported by
:func:`thpsim.cli.build_parser` and adds its sub-command(s) to the parser.  A
handler returns the exit code; bad input is raised as :class:`UsageError` (one line,
exit code 2, no traceback).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Iterable

__all__ = ["UsageError", "parse_pairs", "parse_settings", "positive_float", "positive_int",
           "write_atomic", "write_atomic_bytes"]

#: khugepaged knobs that ``parse_settings`` accepts without the ``khugepaged/`` prefix
KHUGEPAGED_KNOBS = ("defrag", "max_ptes_none", "max_ptes_swap", "max_ptes_shared",
                    "pages_to_scan", "scan_sleep_millisecs", "alloc_sleep_millisecs")


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


def parse_pairs(items: Iterable[str], flag: str) -> dict[str, str]:
    """``KEY=VALUE`` arguments of ``flag`` to a dict (later keys win); one-line errors."""
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"{flag} {item!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def parse_settings(tokens: Iterable[str], flag: str = "--settings") -> dict[str, str]:
    """THP knobs from ``K=V`` tokens (also comma separated) as sysfs paths relative to
    ``/sys/kernel/mm/transparent_hugepage/``; a khugepaged knob may omit ``khugepaged/``
    (``max_ptes_none=0``) and ``64kB=always`` means ``hugepages-64kB/enabled=always``."""
    out: dict[str, str] = {}
    split = (t for token in tokens for t in token.split(",") if t)
    for k, v in parse_pairs(split, flag).items():
        k = k.removeprefix("/sys/kernel/mm/transparent_hugepage/")
        if k in KHUGEPAGED_KNOBS:
            k = f"khugepaged/{k}"
        elif k.lower().endswith("kb") and k[:-2].isdigit():
            k = f"hugepages-{k[:-2]}kB/enabled"
        out[k] = v
    return out


def _positive(kind: type, what: str):
    def convert(v: str):
        try:
            x = kind(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {what}, got {v!r}") from None
        if not x > 0:
            raise argparse.ArgumentTypeError(f"expected a positive {what}, got {v!r}")
        return x

    return convert


#: argparse ``type=`` converters for positive numbers (argparse reports the message)
positive_int = _positive(int, "integer")
positive_float = _positive(float, "number")
