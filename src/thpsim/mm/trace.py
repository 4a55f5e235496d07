"""huge_memory tracepoints (twin of include/trace/events/huge_memory.h).

Events are recorded as dicts (``{"event": name, "ts": seconds, field: value}``)
and can be rendered as ftrace text lines with each policy's exact format
string, so a model trace diffs against a real ``trace`` file.
"""

from __future__ import annotations

from thpsim.mm import scan_result as sr

__all__ = ["FORMATS", "format_event", "format_line"]

_SCAN_PMD = ("mm=%(mm)s, scan_pfn=0x%(scan_pfn)x, referenced=%(referenced)d, "
             "none_or_zero=%(none_or_zero)d, status=%(status)s, unmapped=%(unmapped)d")

#: event -> format, per policy (legacy = the host's pre-mTHP kernel)
FORMATS: dict[str, dict[str, str]] = {
    "legacy": {
        "mm_khugepaged_scan_pmd": _SCAN_PMD,
        "mm_collapse_huge_page": "mm=%(mm)s, isolated=%(isolated)d, status=%(status)s",
        "mm_collapse_huge_page_isolate": "scan_pfn=0x%(scan_pfn)x, none_or_zero=%(none_or_zero)d,"
                                         " referenced=%(referenced)d, status=%(status)s",
        "mm_collapse_huge_page_swapin": "mm=%(mm)s, swapped_in=%(swapped_in)d, "
                                        "referenced=%(referenced)d, ret=%(ret)d",
    },
    "v11": {
        "mm_khugepaged_scan_pmd": _SCAN_PMD,
        # v11 patch 10: note the missing comma before order=
        "mm_collapse_huge_page": "mm=%(mm)s, isolated=%(isolated)d, status=%(status)s"
                                 " order=%(order)u",
        "mm_collapse_huge_page_isolate": "scan_pfn=0x%(scan_pfn)x, none_or_zero=%(none_or_zero)d,"
                                         " referenced=%(referenced)d, status=%(status)s"
                                         " order=%(order)u",
        "mm_collapse_huge_page_swapin": "mm=%(mm)s, swapped_in=%(swapped_in)d, "
                                        "referenced=%(referenced)d, ret=%(ret)d, order=%(order)u",
    },
    "linux-7.2": {
        "mm_khugepaged_scan_pmd": _SCAN_PMD,
        "mm_collapse_huge_page": "mm=%(mm)s, isolated=%(isolated)d, status=%(status)s,"
                                 " order=%(order)u",
        "mm_collapse_huge_page_isolate": "scan_pfn=0x%(scan_pfn)x, none_or_zero=%(none_or_zero)d,"
                                         " referenced=%(referenced)d, status=%(status)s,"
                                         " order=%(order)u",
        "mm_collapse_huge_page_swapin": "mm=%(mm)s, swapped_in=%(swapped_in)d, "
                                        "referenced=%(referenced)d, ret=%(ret)d, order=%(order)u",
        "mm_khugepaged_scan": "mm=%(mm)s, progress=%(progress)u, "
                              "full_scan_finished=%(full_scan_finished)d",
    },
}


def _enum(policy: str) -> tuple[str, ...]:
    return sr.ENUM_7_2 if policy == "linux-7.2" else sr.ENUM_V11


def format_event(ev: dict, policy: str) -> str:
    """The text after ``event_name: `` for one recorded event."""
    vals = dict(ev)
    if "status" in vals:
        vals["status"] = sr.TRACE_STRING[vals["status"]]
    if "ret" in vals and isinstance(vals["ret"], str):
        vals["ret"] = _enum(policy).index(vals["ret"])
    if vals.get("scan_pfn", 0) < 0:
        vals["scan_pfn"] = 0xFFFFFFFFFFFFFFFF
    return FORMATS[policy][ev["event"]] % vals


def format_line(ev: dict, policy: str, task: str = "khugepaged", pid: int = 0) -> str:
    """An ftrace ``trace`` file line for ``ev``."""
    return (f"{task:>16}-{pid:<7} [000] ..... {ev['ts']:12.6f}: {ev['event']}: "
            f"{format_event(ev, policy)}")
