"""Size parsing (``"4G"``, ``"64K"``, ``"2M"`` ...)."""

from __future__ import annotations

import re

__all__ = ["parse_size"]

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string like ``"4G"``, ``"64kB"``, ``"2MiB"``, ``"4096"``.

    Raises
    ------
    ValueError
        For anything else, with the offending text in the message.
    """
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"negative size {value}")
        return value
    m = _RE.match(str(value))
    if not m:
        raise ValueError(f"not a size: {value!r} (use e.g. 4096, 64K, 2M, 4G)")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]

