"""khugepaged collapse policies, one module each, selected by name.

=============  =========================================================
name           what it models
=============  =========================================================
``legacy``     PMD-only khugepaged before mTHP collapse (the host's 6.18)
``v11``        the "khugepaged: add mTHP collapse support" series, v11
``linux-7.2``  the merged form, as shipped in Linux 7.2
=============  =========================================================
"""

from __future__ import annotations

from thpsim.mm.policies.base import CollapsePolicy
from thpsim.mm.policies.legacy import LegacyPolicy
from thpsim.mm.policies.linux_7_2 import Linux72Policy
from thpsim.mm.policies.v11 import V11Policy

__all__ = ["POLICY_CLASSES", "CollapsePolicy", "get_policy", "policy_for_kernel"]

POLICY_CLASSES: dict[str, type[CollapsePolicy]] = {
    "legacy": LegacyPolicy,
    "v11": V11Policy,
    "linux-7.2": Linux72Policy,
}


def get_policy(name: str) -> CollapsePolicy:
    """The policy object for ``name`` (``ValueError`` for an unknown name)."""
    try:
        return POLICY_CLASSES[name]()
    except KeyError:
        choices = ", ".join(POLICY_CLASSES)
        raise ValueError(f"unknown policy {name!r} (choose from {choices})") from None


def policy_for_kernel(release: str) -> str:
    """The policy that models a kernel release (``uname -r``): ``linux-7.2`` for 7.2.x,
    else ``legacy`` (kernels before mTHP collapse, like the 6.18 host).  Later releases
    are not modelled yet and get ``legacy`` too."""
    return "linux-7.2" if release.startswith("7.2.") else "legacy"
