"""Bridges to the real kernel: THP sysfs knobs, live process layouts, zram swap.

Everything here needs Linux, root and ``/sys/kernel/mm/transparent_hugepage/``;
:func:`require_host` checks that and raises :class:`HostUnavailable` (the CLI
maps it to exit code 2).  Nothing is imported from the submodules eagerly
except the exceptions, so ``import thpsim.host`` works on any platform.
"""

from __future__ import annotations

from thpsim.host.errors import HostBusy, HostUnavailable, ProcessGone, SettingsMismatch

__all__ = ["HostBusy", "HostUnavailable", "ProcessGone", "SettingsMismatch"]
