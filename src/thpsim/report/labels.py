"""Short human labels for runs: policy plus the settings that differ from the defaults."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["run_label", "settings_label"]


def _short_knob(path: str) -> str:
    # "khugepaged/max_ptes_none" -> "max_ptes_none"; "hugepages-64kB/enabled" -> "64kB/enabled"
    if path.startswith("khugepaged/"):
        return path[len("khugepaged/"):]
    if path.startswith("hugepages-"):
        return path[len("hugepages-"):]
    return path


def settings_label(settings: Mapping[str, object] | None) -> str:
    """``"max_ptes_none=0 64kB/enabled=always"``, or ``"defaults"`` when empty.

    Parameters
    ----------
    settings : mapping of str to str
        THP sysfs knobs (paths relative to ``/sys/kernel/mm/transparent_hugepage``).

    Returns
    -------
    str
    """
    if not settings:
        return "defaults"
    return " ".join(f"{_short_knob(k)}={v}" for k, v in sorted(settings.items()))


def run_label(policy: str, settings: Mapping[str, object] | None, name: str | None = None) -> str:
    """``"linux-7.2 · max_ptes_none=0"``; ``name`` (a settings-set name) replaces the knobs.

    Parameters
    ----------
    policy : str
    settings : mapping of str to str
    name : str, optional
        A name for the settings (a sweep's settings set), shown instead of the knobs.

    Returns
    -------
    str
    """
    return f"{policy} · {name if name else settings_label(settings)}"
