"""Errors of the VM oracle."""

from __future__ import annotations


class VmError(RuntimeError):
    """The VM oracle failed (bad kernel package, guest did not report, ...)."""


class VmUnavailable(VmError):
    """A prerequisite is missing here (QEMU, busybox, the kernel packages ...).

    The message is one line and says what to install or which option to set.
    """
