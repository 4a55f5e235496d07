"""The VM oracle: Debian's Linux 7.2.13 under QEMU, with a Python runtime in the guest.

* :mod:`thpsim.vm.kernel` -- find, verify (SHA256SUMS) and unpack the kernel packages.
* :mod:`thpsim.vm.initramfs` -- a pure-Python newc cpio writer and the guest image
  (busybox, zram modules, the host's Python + NumPy + thpsim).
* :mod:`thpsim.vm.qemu` -- :func:`run_in_vm`: boot, run one guest program, power off.

Every failure to find a prerequisite raises :class:`VmUnavailable` with a one-line
message saying what to install or where to point.
"""

from __future__ import annotations

from thpsim.vm.errors import VmError, VmUnavailable

__all__ = ["VmError", "VmUnavailable"]
