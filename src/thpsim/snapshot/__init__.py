"""Snapshots of a process's anonymous memory: capture, file format, synthetic ones."""

from thpsim.snapshot.core import (
    FORMAT_VERSION,
    HUGE_ZERO,
    NONE,
    OTHER,
    PRESENT,
    STATE_NAMES,
    SWAP,
    ZERO,
    Snapshot,
    SnapshotError,
    SnapshotVma,
)

__all__ = [
    "FORMAT_VERSION",
    "HUGE_ZERO",
    "NONE",
    "OTHER",
    "PRESENT",
    "STATE_NAMES",
    "SWAP",
    "ZERO",
    "Snapshot",
    "SnapshotError",
    "SnapshotVma",
]
