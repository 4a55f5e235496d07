"""Exceptions of the host bridge."""

from __future__ import annotations

__all__ = ["HostBusy", "HostUnavailable", "ProcessGone", "SettingsMismatch"]


class HostUnavailable(RuntimeError):
    """The real kernel cannot be used here (not Linux, not root, no THP sysfs, ...).

    The message is one line saying what is missing; a CLI should print it and
    exit with :attr:`exit_code`.
    """

    exit_code = 2


class HostBusy(HostUnavailable):
    """Another thpsim run holds the host lock."""


class ProcessGone(LookupError):
    """The inspected process exited (or never existed)."""

    def __init__(self, pid: int, detail: str = "") -> None:
        self.pid = pid
        super().__init__(f"process {pid} is gone" + (f" ({detail})" if detail else ""))


class SettingsMismatch(RuntimeError):
    """Re-reading the THP knobs did not give the expected values.

    Attributes
    ----------
    mismatches : dict of str to tuple of (str or None, str or None)
        Knob to ``(expected, actual)``; ``None`` where the knob is missing.
    """

    def __init__(self, mismatches: dict[str, tuple[str | None, str | None]],
                 what: str = "THP settings") -> None:
        self.mismatches = mismatches
        items = ", ".join(f"{k}: expected {e!r}, found {a!r}" for k, (e, a) in mismatches.items())
        super().__init__(f"{what} differ from the recorded values: {items}")
