"""Tests for :mod:`thpsim.mm.settings`: kernel-exact THP sysfs strings and validation.

Expected values are literals taken from the kernel (and linux-7.2.md §7 /
kernel-model.md §1.3), never computed by the code under test.
"""

from __future__ import annotations

import contextlib
import errno
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thpsim.mm.geometry import GEOM_4K, GEOM_16K, GEOM_64K
from thpsim.mm.settings import (
    UINT_MAX,
    ULONG_MAX,
    Settings,
    kstrtobool,
    kstrtouint,
    kstrtoul,
    sysfs_streq,
)

PREFIX = "/sys/kernel/mm/transparent_hugepage/"

DEFAULTS_4K = {
    "enabled": "[always] madvise never\n",
    "defrag": "always defer defer+madvise [madvise] never\n",
    "use_zero_page": "1\n",
    "shrink_underused": "1\n",
    "hugepages-16kB/enabled": "always inherit madvise [never]\n",
    "hugepages-32kB/enabled": "always inherit madvise [never]\n",
    "hugepages-64kB/enabled": "always inherit madvise [never]\n",
    "hugepages-128kB/enabled": "always inherit madvise [never]\n",
    "hugepages-256kB/enabled": "always inherit madvise [never]\n",
    "hugepages-512kB/enabled": "always inherit madvise [never]\n",
    "hugepages-1024kB/enabled": "always inherit madvise [never]\n",
    "hugepages-2048kB/enabled": "always [inherit] madvise never\n",
    "khugepaged/defrag": "1\n",
    "khugepaged/max_ptes_none": "511\n",
    "khugepaged/max_ptes_swap": "64\n",
    "khugepaged/max_ptes_shared": "256\n",
    "khugepaged/pages_to_scan": "4096\n",
    "khugepaged/scan_sleep_millisecs": "10000\n",
    "khugepaged/alloc_sleep_millisecs": "60000\n",
    "hpage_pmd_size": "2097152\n",
    "khugepaged/pages_collapsed": "0\n",
    "khugepaged/full_scans": "0\n",
}
READ_ONLY = {"hpage_pmd_size", "khugepaged/pages_collapsed", "khugepaged/full_scans"}
SIZES_4K = ["16kB", "32kB", "64kB", "128kB", "256kB", "512kB", "1024kB", "2048kB"]
MAX_PTES = ["khugepaged/max_ptes_none", "khugepaged/max_ptes_swap", "khugepaged/max_ptes_shared"]
SLEEPS = ["khugepaged/scan_sleep_millisecs", "khugepaged/alloc_sleep_millisecs"]


def errno_of(s: Settings, path: str, value: str) -> int:
    """Write and return the errno; fail the test if the write succeeded."""
    with pytest.raises(OSError) as info:
        s.write(path, value)
    return info.value.errno


# --------------------------------------------------------------------- helpers


class TestKstrtoul:
    @pytest.mark.parametrize(
        ("text", "value"),
        [
            ("0", 0),
            ("5", 5),
            ("+5", 5),
            ("5\n", 5),
            ("+5\n", 5),
            ("007", 7),
            ("18446744073709551615", 2**64 - 1),
            ("5\0junk", 5),  # C string: stops at NUL
            pytest.param("0" * 5000 + "3", 3, id="5000-leading-zeros"),
        ],
    )
    def test_valid(self, text: str, value: int) -> None:
        assert kstrtoul(text, ULONG_MAX) == value

    @pytest.mark.parametrize(
        "text",
        [
            "",
            "\n",
            "+",
            "++5",
            "-1",
            "-0",
            " 5",
            "5 ",
            "5\n\n",
            "\n5",
            "5\r",
            "0x10",
            "1e3",
            "5.0",
            "abc",
            "5a",
            "\uff15",
            "\u0665",
            "+-5",
            "\t5",
        ],
    )
    def test_einval(self, text: str) -> None:
        with pytest.raises(OSError) as info:
            kstrtoul(text, ULONG_MAX)
        assert info.value.errno == errno.EINVAL

    @pytest.mark.parametrize(
        "text",
        [
            "18446744073709551616",
            "99999999999999999999999",
            "18446744073709551616x",
            pytest.param("1" * 5000, id="5000-ones"),
        ],
    )
    def test_erange(self, text: str) -> None:
        # Overflow is reported before any trailing junk is looked at.
        with pytest.raises(OSError) as info:
            kstrtoul(text, ULONG_MAX)
        assert info.value.errno == errno.ERANGE

    def test_limit(self) -> None:
        assert kstrtoul("4294967295", UINT_MAX) == 4294967295
        with pytest.raises(OSError) as info:
            kstrtoul("4294967296", UINT_MAX)
        assert info.value.errno == errno.ERANGE
        assert UINT_MAX == 4294967295
        assert ULONG_MAX == 18446744073709551615

    def test_kstrtouint(self) -> None:
        assert kstrtouint("4294967295\n") == 4294967295
        with pytest.raises(OSError) as info:
            kstrtouint("4294967296")
        assert info.value.errno == errno.ERANGE
        # Fits 64 bits, so the trailing junk is found first.
        with pytest.raises(OSError) as info:
            kstrtouint("4294967296x")
        assert info.value.errno == errno.EINVAL


class TestKstrtobool:
    @pytest.mark.parametrize(
        "text", ["1", "y", "Y", "yes", "t", "T", "true", "on", "On", "oN", "ON", "1\n", "ywrong"]
    )
    def test_true(self, text: str) -> None:
        assert kstrtobool(text) is True

    @pytest.mark.parametrize(
        "text", ["0", "n", "N", "no", "f", "F", "false", "off", "Off", "oF", "0\n", "nope"]
    )
    def test_false(self, text: str) -> None:
        assert kstrtobool(text) is False

    @pytest.mark.parametrize(
        "text", ["", "2", "o", "O", "ox", "o\n", " 1", "\n", "x", "-1", "\0y", "o\0n"]
    )
    def test_invalid(self, text: str) -> None:
        with pytest.raises(OSError) as info:
            kstrtobool(text)
        assert info.value.errno == errno.EINVAL


class TestSysfsStreq:
    @pytest.mark.parametrize(
        ("a", "b", "equal"),
        [
            ("always", "always", True),
            ("always\n", "always", True),
            ("always", "always\n", True),
            ("always\n\n", "always", False),
            ("always ", "always", False),
            (" always", "always", False),
            ("Always", "always", False),
            ("alway", "always", False),
            ("always\0x", "always", True),
            ("", "always", False),
        ],
    )
    def test_cases(self, a: str, b: str, equal: bool) -> None:
        assert sysfs_streq(a, b) is equal


# -------------------------------------------------------------- defaults/read


@pytest.mark.parametrize(("path", "content"), sorted(DEFAULTS_4K.items()))
def test_defaults_4k(path: str, content: str) -> None:
    s = Settings()
    assert s.read(path) == content
    assert s.read(PREFIX + path) == content


def test_paths_4k() -> None:
    s = Settings()
    paths = s.paths()
    assert sorted(paths) == sorted(DEFAULTS_4K)
    assert len(paths) == len(set(paths))
    writable = s.writable_paths()
    assert set(writable) == set(DEFAULTS_4K) - READ_ONLY
    assert paths[: len(writable)] == writable  # writable ones first
    assert set(paths[len(writable) :]) == READ_ONLY
    assert list(s.as_dict()) == writable


def test_typed_defaults_4k() -> None:
    s = Settings()
    assert s.enabled == "always"
    assert s.defrag == "madvise"
    assert s.use_zero_page is True
    assert s.shrink_underused is True
    assert s.huge_anon_orders_always == 0
    assert s.huge_anon_orders_madvise == 0
    assert s.huge_anon_orders_inherit == 1 << 9
    assert [s.order_setting(o) for o in range(2, 10)] == ["never"] * 7 + ["inherit"]
    assert s.khugepaged_defrag is True
    assert (s.max_ptes_none, s.max_ptes_swap, s.max_ptes_shared) == (511, 64, 256)
    assert s.pages_to_scan == 4096
    assert (s.scan_sleep_millisecs, s.alloc_sleep_millisecs) == (10000, 60000)
    assert (s.pages_collapsed, s.full_scans) == (0, 0)


@pytest.mark.parametrize("order", [0, 1, 10])
def test_order_setting_rejects_non_anon_order(order: int) -> None:
    with pytest.raises(ValueError):
        Settings().order_setting(order)


def test_as_dict_defaults_4k() -> None:
    d = Settings().as_dict()
    assert d["enabled"] == "always"
    assert d["defrag"] == "madvise"
    assert d["use_zero_page"] == "1"
    assert d["shrink_underused"] == "1"
    assert d["hugepages-2048kB/enabled"] == "inherit"
    assert d["hugepages-64kB/enabled"] == "never"
    assert d["khugepaged/defrag"] == "1"
    assert d["khugepaged/max_ptes_none"] == "511"
    assert d["khugepaged/pages_to_scan"] == "4096"
    assert d["khugepaged/alloc_sleep_millisecs"] == "60000"


# ------------------------------------------------------------- word knobs


@pytest.mark.parametrize(
    ("value", "content"),
    [
        ("always", "[always] madvise never\n"),
        ("madvise", "always [madvise] never\n"),
        ("never", "always madvise [never]\n"),
        ("madvise\n", "always [madvise] never\n"),
    ],
)
def test_enabled_values(value: str, content: str) -> None:
    s = Settings()
    s.write("enabled", value)
    assert s.read("enabled") == content
    assert s.enabled == value.strip()


@pytest.mark.parametrize(
    ("value", "content"),
    [
        ("always", "[always] defer defer+madvise madvise never\n"),
        ("defer", "always [defer] defer+madvise madvise never\n"),
        ("defer+madvise", "always defer [defer+madvise] madvise never\n"),
        ("madvise", "always defer defer+madvise [madvise] never\n"),
        ("never", "always defer defer+madvise madvise [never]\n"),
        ("defer+madvise\n", "always defer [defer+madvise] madvise never\n"),
    ],
)
def test_defrag_values(value: str, content: str) -> None:
    s = Settings()
    s.write(PREFIX + "defrag", value)
    assert s.read("defrag") == content
    assert s.defrag == value.strip()


WORD_INVALID = [
    "",
    "\n",
    "Always",
    " always",
    "always ",
    "always\n\n",
    "alway",
    "inherit",
    "1",
    "defer",
    "always\r\n",
    "[always]",
]


@pytest.mark.parametrize("value", WORD_INVALID)
def test_enabled_invalid(value: str) -> None:
    s = Settings()
    s.write("enabled", "madvise")
    assert errno_of(s, "enabled", value) == errno.EINVAL
    assert s.read("enabled") == "always [madvise] never\n"


@pytest.mark.parametrize("value", ["", "defer+", "defer madvise", "madvise+defer", "inherit"])
def test_defrag_invalid(value: str) -> None:
    s = Settings()
    assert errno_of(s, "defrag", value) == errno.EINVAL
    assert s.read("defrag") == "always defer defer+madvise [madvise] never\n"


@pytest.mark.parametrize(
    ("value", "content"),
    [
        ("always", "[always] inherit madvise never\n"),
        ("inherit", "always [inherit] madvise never\n"),
        ("madvise", "always inherit [madvise] never\n"),
        ("never", "always inherit madvise [never]\n"),
        ("always\n", "[always] inherit madvise never\n"),
    ],
)
@pytest.mark.parametrize("size", SIZES_4K)
def test_per_size_values(size: str, value: str, content: str) -> None:
    s = Settings()
    s.write(f"hugepages-{size}/enabled", value)
    assert s.read(f"hugepages-{size}/enabled") == content
    assert s.read(f"{PREFIX}hugepages-{size}/enabled") == content


@pytest.mark.parametrize("value", [w for w in WORD_INVALID if w != "inherit"] + ["default", "0"])
def test_per_size_invalid(value: str) -> None:
    s = Settings()
    s.write("hugepages-64kB/enabled", "madvise")
    before = s.as_dict()
    assert errno_of(s, "hugepages-64kB/enabled", value) == errno.EINVAL
    assert s.as_dict() == before
    assert s.huge_anon_orders_madvise == 1 << 4


def test_per_size_masks() -> None:
    s = Settings()
    s.write("hugepages-64kB/enabled", "always")  # order 4
    assert (s.huge_anon_orders_always, s.huge_anon_orders_madvise) == (0x10, 0)
    assert s.huge_anon_orders_inherit == 0x200
    s.write("hugepages-64kB/enabled", "madvise")  # clears the always bit
    assert (s.huge_anon_orders_always, s.huge_anon_orders_madvise) == (0, 0x10)
    s.write("hugepages-64kB/enabled", "inherit")
    assert (s.huge_anon_orders_madvise, s.huge_anon_orders_inherit) == (0, 0x210)
    s.write("hugepages-2048kB/enabled", "always")
    assert (s.huge_anon_orders_always, s.huge_anon_orders_inherit) == (0x200, 0x10)
    s.write("hugepages-16kB/enabled", "madvise")  # order 2
    assert s.huge_anon_orders_madvise == 0x4
    s.write("hugepages-64kB/enabled", "never")
    s.write("hugepages-2048kB/enabled", "never")
    assert (s.huge_anon_orders_always, s.huge_anon_orders_inherit) == (0, 0)
    assert s.huge_anon_orders_madvise == 0x4
    assert s.order_setting(2) == "madvise"
    assert s.order_setting(4) == "never"
    assert s.order_setting(9) == "never"


# ---------------------------------------------------------- numeric knobs


@pytest.mark.parametrize("path", MAX_PTES)
@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("0", "0\n"),
        ("511", "511\n"),
        ("+5", "5\n"),
        ("5\n", "5\n"),
        ("007", "7\n"),
        ("+511\n", "511\n"),
    ],
)
def test_max_ptes_valid(path: str, value: str, shown: str) -> None:
    s = Settings()
    s.write(path, value)
    assert s.read(path) == shown
    assert getattr(s, path.split("/")[1]) == int(shown)


@pytest.mark.parametrize("path", MAX_PTES)
@pytest.mark.parametrize(
    "value",
    [
        "512",
        "-1",
        "abc",
        "",
        "\n",
        "5\n\n",
        " 5",
        "5 ",
        "0x1f",
        "1000",
        "18446744073709551615",
        "18446744073709551616",
        "99999999999999999999999",
        "4294967807",
    ],
)
def test_max_ptes_invalid(path: str, value: str) -> None:
    s = Settings()
    s.write(path, "17")
    assert errno_of(s, path, value) == errno.EINVAL
    assert s.read(path) == "17\n"


@pytest.mark.parametrize("path", ["use_zero_page", "khugepaged/defrag"])
class TestFlagKnobs:
    def test_values(self, path: str) -> None:
        s = Settings()
        s.write(path, "0")
        assert s.read(path) == "0\n"
        s.write(path, "+1\n")
        assert s.read(path) == "1\n"
        s.write(path, "00")
        assert s.read(path) == "0\n"

    @pytest.mark.parametrize(
        ("value", "err"),
        [
            ("2", errno.EINVAL),
            ("18446744073709551615", errno.EINVAL),
            ("abc", errno.EINVAL),
            ("", errno.EINVAL),
            ("-1", errno.EINVAL),
            ("y", errno.EINVAL),
            ("1\n\n", errno.EINVAL),
            ("18446744073709551616", errno.ERANGE),
            ("99999999999999999999x", errno.ERANGE),
        ],
    )
    def test_invalid(self, path: str, value: str, err: int) -> None:
        s = Settings()
        s.write(path, "0")
        assert errno_of(s, path, value) == err
        assert s.read(path) == "0\n"

    def test_typed(self, path: str) -> None:
        s = Settings()
        attr = {"use_zero_page": "use_zero_page", "khugepaged/defrag": "khugepaged_defrag"}[path]
        s.write(path, "0")
        assert getattr(s, attr) is False
        s.write(path, "1")
        assert getattr(s, attr) is True


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("on", "1\n"),
        ("off", "0\n"),
        ("0", "0\n"),
        ("1", "1\n"),
        ("yes", "1\n"),
        ("n", "0\n"),
        ("N\n", "0\n"),
        ("true", "1\n"),
        ("false", "0\n"),
        ("Y", "1\n"),
        ("OFF", "0\n"),
    ],
)
def test_shrink_underused_values(value: str, shown: str) -> None:
    s = Settings()
    s.write("shrink_underused", "0" if shown == "1\n" else "1")  # so every write is a change
    s.write("shrink_underused", value)
    assert s.read("shrink_underused") == shown
    assert s.shrink_underused is (shown == "1\n")


@pytest.mark.parametrize("value", ["2", "", "o", "-1", " y", "maybe", "\n"])
def test_shrink_underused_invalid(value: str) -> None:
    s = Settings()
    s.write("shrink_underused", "0")
    assert errno_of(s, "shrink_underused", value) == errno.EINVAL
    assert s.read("shrink_underused") == "0\n"


def test_pages_to_scan() -> None:
    s = Settings()
    for value, shown in [("1", "1\n"), ("4294967295", "4294967295\n"), ("+8\n", "8\n")]:
        s.write("khugepaged/pages_to_scan", value)
        assert s.read("khugepaged/pages_to_scan") == shown
    assert s.pages_to_scan == 8
    for value in ["0", "+0", "0\n", "-5", "4294967296", "18446744073709551616", "", "x"]:
        assert errno_of(s, "khugepaged/pages_to_scan", value) == errno.EINVAL
        assert s.pages_to_scan == 8


@pytest.mark.parametrize("path", SLEEPS)
def test_sleep_knobs(path: str) -> None:
    s = Settings()
    for value, shown in [("0", "0\n"), ("4294967295", "4294967295\n"), ("100\n", "100\n")]:
        s.write(path, value)
        assert s.read(path) == shown
    assert getattr(s, path.split("/")[1]) == 100
    for value in ["-5", "4294967296", "1.5", "", "10ms", "18446744073709551616"]:
        assert errno_of(s, path, value) == errno.EINVAL
        assert s.read(path) == "100\n"


# ------------------------------------------------------- read-only, unknown


@pytest.mark.parametrize("path", sorted(READ_ONLY))
def test_read_only(path: str) -> None:
    s = Settings()
    before = s.read(path)
    assert errno_of(s, path, "0") == errno.EACCES
    assert errno_of(s, PREFIX + path, before) == errno.EACCES
    assert s.read(path) == before


def test_counters() -> None:
    s = Settings()
    s.pages_collapsed = 1536
    s.full_scans = 7
    assert s.read("khugepaged/pages_collapsed") == "1536\n"
    assert s.read(PREFIX + "khugepaged/full_scans") == "7\n"
    assert "khugepaged/pages_collapsed" not in s.as_dict()
    s.push()
    s.full_scans = 9
    s.pop()
    s.reset()
    assert s.full_scans == 9  # counters are not settings


@pytest.mark.parametrize(
    "path",
    [
        "hugepages-8kB/enabled",
        "hugepages-4096kB/enabled",
        "hugepages-4kB/enabled",
        "nope",
        "khugepaged",
        "khugepaged/max_ptes",
        "/enabled",
        "Enabled",
        "enabled/",
        "shmem_enabled",
        "hugepages-2048kB/stats/nr_anon",
        "/sys/kernel/mm/transparent_hugepage/nope",
        "",
    ],
)
def test_unknown_path(path: str) -> None:
    s = Settings()
    with pytest.raises(OSError) as info:
        s.read(path)
    assert info.value.errno == errno.ENOENT
    assert errno_of(s, path, "never") == errno.ENOENT


def test_error_names_path() -> None:
    s = Settings()
    with pytest.raises(OSError) as info:
        s.write("khugepaged/max_ptes_none", "512")
    assert info.value.errno == errno.EINVAL
    assert "max_ptes_none" in str(info.value)


def test_non_str_value_rejected() -> None:
    s = Settings()
    with pytest.raises(TypeError):
        s.write("khugepaged/max_ptes_none", 5)  # type: ignore[arg-type]
    assert s.max_ptes_none == 511


# ---------------------------------------------------------------- geometry


def test_16k_geometry() -> None:
    s = Settings(GEOM_16K)
    sizes = [
        f"hugepages-{kb}kB/enabled"
        for kb in (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
    ]
    assert [p for p in s.writable_paths() if p.startswith("hugepages-")] == sizes
    assert s.read("hugepages-32768kB/enabled") == "always [inherit] madvise never\n"
    assert s.read("hugepages-64kB/enabled") == "always inherit madvise [never]\n"
    assert s.huge_anon_orders_inherit == 1 << 11
    assert s.read("hpage_pmd_size") == "33554432\n"
    assert s.read("khugepaged/max_ptes_none") == "2047\n"
    assert s.read("khugepaged/max_ptes_swap") == "256\n"
    assert s.read("khugepaged/max_ptes_shared") == "1024\n"
    assert s.read("khugepaged/pages_to_scan") == "16384\n"
    s.write("khugepaged/max_ptes_none", "2047")
    assert errno_of(s, "khugepaged/max_ptes_none", "2048") == errno.EINVAL
    for missing in (
        "hugepages-32kB/enabled",
        "hugepages-16kB/enabled",
        "hugepages-65536kB/enabled",
    ):
        assert errno_of(s, missing, "never") == errno.ENOENT


def test_64k_geometry() -> None:
    s = Settings(GEOM_64K)
    sizes = [p for p in s.writable_paths() if p.startswith("hugepages-")]
    assert sizes[0] == "hugepages-256kB/enabled"
    assert sizes[-1] == "hugepages-524288kB/enabled"
    assert len(sizes) == 12  # orders 2..13
    assert s.read("hugepages-524288kB/enabled") == "always [inherit] madvise never\n"
    assert s.read("hpage_pmd_size") == "536870912\n"
    assert s.read("khugepaged/max_ptes_none") == "8191\n"
    assert s.read("khugepaged/max_ptes_swap") == "1024\n"
    assert s.read("khugepaged/max_ptes_shared") == "4096\n"
    assert s.read("khugepaged/pages_to_scan") == "65536\n"
    s.write("khugepaged/max_ptes_shared", "8191")
    assert errno_of(s, "khugepaged/max_ptes_shared", "8192") == errno.EINVAL
    assert s.max_ptes_shared == 8191
    s.write("hugepages-256kB/enabled", "always")
    assert s.huge_anon_orders_always == 1 << 2
    assert s.hugepage_pmd_enabled() is True


def test_64k_missing_sizes_enoent() -> None:
    s = Settings(GEOM_64K)
    # 64K pages: order 1 is 128kB (no anon file), order 14 would be 1 GiB; order 5 is 2048kB.
    assert errno_of(s, "hugepages-128kB/enabled", "never") == errno.ENOENT
    assert errno_of(s, "hugepages-1048576kB/enabled", "never") == errno.ENOENT
    assert s.read("hugepages-2048kB/enabled") == "always inherit madvise [never]\n"


def test_geometry_4k_explicit_equals_default() -> None:
    assert Settings(GEOM_4K).as_dict() == Settings().as_dict()


# ------------------------------------------------------- push/pop/scoped


def test_push_pop() -> None:
    s = Settings()
    s.push()
    s.write("enabled", "never")
    s.write("khugepaged/max_ptes_none", "0")
    s.push()
    s.write("hugepages-64kB/enabled", "always")
    s.pop()
    assert s.read("hugepages-64kB/enabled") == "always inherit madvise [never]\n"
    assert s.read("enabled") == "always madvise [never]\n"
    assert s.max_ptes_none == 0
    s.pop()
    assert s.read("enabled") == "[always] madvise never\n"
    assert s.max_ptes_none == 511
    with pytest.raises(IndexError):
        s.pop()


def test_pop_empty() -> None:
    with pytest.raises(IndexError):
        Settings().pop()


def test_scoped() -> None:
    s = Settings()
    with s.scoped({"enabled": "madvise", "khugepaged/max_ptes_swap": "0"}) as inner:
        assert inner is s
        assert s.enabled == "madvise"
        assert s.max_ptes_swap == 0
        s.write("defrag", "never")
    assert s.enabled == "always"
    assert s.max_ptes_swap == 64
    assert s.defrag == "madvise"
    with pytest.raises(IndexError):
        s.pop()  # the scope left nothing on the stack


def test_scoped_restores_on_exception() -> None:
    s = Settings()
    with pytest.raises(RuntimeError), s.scoped({"enabled": "never"}):
        s.write("khugepaged/pages_to_scan", "1")
        raise RuntimeError("boom")
    assert s.enabled == "always"
    assert s.pages_to_scan == 4096


def test_scoped_invalid_values() -> None:
    s = Settings()
    with pytest.raises(OSError) as info, s.scoped({"enabled": "never", "defrag": "bogus"}):
        pytest.fail("body must not run")
    assert info.value.errno == errno.EINVAL
    assert s.enabled == "always"
    with pytest.raises(IndexError):
        s.pop()


def test_scoped_none() -> None:
    s = Settings()
    with s.scoped():
        s.write("enabled", "never")
    assert s.enabled == "always"


def test_reset() -> None:
    s = Settings(GEOM_16K)
    s.write("enabled", "never")
    s.write("hugepages-64kB/enabled", "always")
    s.write("khugepaged/max_ptes_none", "3")
    s.reset()
    assert s.read("enabled") == "[always] madvise never\n"
    assert s.huge_anon_orders_always == 0
    assert s.max_ptes_none == 2047


# -------------------------------------------------------- as_dict / apply


def test_as_dict_apply_round_trip() -> None:
    s = Settings()
    s.write("enabled", "madvise")
    s.write("defrag", "defer+madvise")
    s.write("use_zero_page", "0")
    s.write("shrink_underused", "off")
    s.write("hugepages-64kB/enabled", "always")
    s.write("hugepages-2048kB/enabled", "never")
    s.write("khugepaged/max_ptes_none", "+0")
    s.write("khugepaged/scan_sleep_millisecs", "100\n")
    saved = s.as_dict()
    assert saved["shrink_underused"] == "0"
    assert saved["khugepaged/max_ptes_none"] == "0"
    assert saved["khugepaged/scan_sleep_millisecs"] == "100"
    assert saved["hugepages-64kB/enabled"] == "always"
    reads = {p: s.read(p) for p in s.writable_paths()}
    fresh = Settings()
    fresh.apply(saved)
    assert {p: fresh.read(p) for p in fresh.writable_paths()} == reads
    s.reset()
    s.apply({PREFIX + k: v for k, v in saved.items()})
    assert s.as_dict() == saved


def test_apply_all_or_nothing() -> None:
    s = Settings()
    before = s.as_dict()
    bad = {
        "enabled": "never",
        "khugepaged/max_ptes_none": "0",
        "khugepaged/max_ptes_swap": "512",
        "defrag": "never",
    }
    with pytest.raises(OSError) as info:
        s.apply(bad)
    assert info.value.errno == errno.EINVAL
    assert info.value.filename == "khugepaged/max_ptes_swap"
    assert s.as_dict() == before


@pytest.mark.parametrize(
    ("path", "err"), [("hpage_pmd_size", errno.EACCES), ("hugepages-8kB/enabled", errno.ENOENT)]
)
def test_apply_bad_path(path: str, err: int) -> None:
    s = Settings()
    with pytest.raises(OSError) as info:
        s.apply({"enabled": "never", path: "1"})
    assert info.value.errno == err
    assert info.value.filename == path
    assert s.enabled == "always"


def test_apply_is_sequential() -> None:
    # Later stores see earlier ones: the per-size masks end up as the last write says.
    s = Settings()
    s.apply({"hugepages-64kB/enabled": "always", PREFIX + "hugepages-64kB/enabled": "madvise"})
    assert s.huge_anon_orders_always == 0
    assert s.huge_anon_orders_madvise == 1 << 4


# ----------------------------------------------------------------- listeners


def recorder(s: Settings) -> list[str]:
    calls: list[str] = []
    s.add_listener(calls.append)
    return calls


def test_listener_enabled_change_only() -> None:
    s = Settings()
    calls = recorder(s)
    s.write("enabled", "always")  # unchanged
    assert calls == []
    s.write(PREFIX + "enabled", "never\n")
    assert calls == ["enabled"]
    assert s.enabled == "never"  # the listener runs after the value is in place
    with pytest.raises(OSError):
        s.write("enabled", "bad")
    assert calls == ["enabled"]


def test_listener_sees_new_value() -> None:
    s = Settings()
    seen: list[tuple[str, bool]] = []
    s.add_listener(lambda path: seen.append((path, s.hugepage_enabled())))
    s.write("enabled", "never")
    assert seen == [("enabled", False)]


def test_listener_per_size() -> None:
    s = Settings()
    calls = recorder(s)
    s.write("hugepages-64kB/enabled", "never")  # unchanged
    s.write("hugepages-2048kB/enabled", "inherit")  # unchanged
    assert calls == []
    s.write("hugepages-64kB/enabled", "madvise")
    s.write("hugepages-64kB/enabled", "always")
    assert calls == ["hugepages-64kB/enabled"] * 2


@pytest.mark.parametrize("path", SLEEPS)
def test_listener_sleep_every_write(path: str) -> None:
    s = Settings()
    calls = recorder(s)
    s.write(path, s.read(path))  # same value still wakes the thread
    s.write(path, "5")
    assert calls == [path, path]
    with pytest.raises(OSError):
        s.write(path, "-1")
    assert calls == [path, path]


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("defrag", "never"),
        ("use_zero_page", "0"),
        ("shrink_underused", "0"),
        ("khugepaged/defrag", "0"),
        ("khugepaged/max_ptes_none", "0"),
        ("khugepaged/max_ptes_swap", "0"),
        ("khugepaged/max_ptes_shared", "0"),
        ("khugepaged/pages_to_scan", "1"),
    ],
)
def test_listener_quiet_knobs(path: str, value: str) -> None:
    s = Settings()
    calls = recorder(s)
    s.write(path, value)
    assert calls == []


def test_listener_pop_reset_apply() -> None:
    s = Settings()
    calls = recorder(s)
    s.push()
    s.apply(
        {
            "enabled": "never",
            "hugepages-64kB/enabled": "always",
            "defrag": "never",
            "hugepages-16kB/enabled": "never",
            "khugepaged/scan_sleep_millisecs": "10000",
        }
    )
    assert calls == ["enabled", "hugepages-64kB/enabled", "khugepaged/scan_sleep_millisecs"]
    calls.clear()
    s.pop()
    assert sorted(calls) == ["enabled", "hugepages-64kB/enabled"]
    calls.clear()
    s.write("khugepaged/alloc_sleep_millisecs", "1")
    calls.clear()
    s.reset()
    assert calls == ["khugepaged/alloc_sleep_millisecs"]
    calls.clear()
    s.reset()
    assert calls == []


def test_listener_not_called_on_failed_apply() -> None:
    s = Settings()
    calls = recorder(s)
    with pytest.raises(OSError):
        s.apply({"enabled": "never", "khugepaged/scan_sleep_millisecs": "5", "defrag": "x"})
    assert calls == []


def test_multiple_listeners() -> None:
    s = Settings()
    a, b = recorder(s), recorder(s)
    s.write("enabled", "madvise")
    assert a == b == ["enabled"]


# ------------------------------------------------------------ enable checks


@pytest.mark.parametrize(
    ("top", "pmd", "small", "pmd_enabled", "v11", "linux72"),
    [
        ("always", "inherit", "never", True, True, True),
        ("madvise", "inherit", "never", True, True, True),
        ("never", "inherit", "never", False, False, False),
        ("never", "always", "never", True, True, True),
        ("never", "madvise", "never", True, True, True),
        ("never", "never", "always", False, True, True),
        ("never", "never", "madvise", False, True, True),
        ("never", "never", "inherit", False, False, False),
        ("always", "never", "inherit", False, True, True),
        ("madvise", "never", "never", False, False, True),
        ("always", "never", "never", False, False, True),
        ("never", "never", "never", False, False, False),
    ],
)
def test_enabled_policies(
    top: str, pmd: str, small: str, pmd_enabled: bool, v11: bool, linux72: bool
) -> None:
    s = Settings()
    s.apply({"enabled": top, "hugepages-2048kB/enabled": pmd, "hugepages-64kB/enabled": small})
    assert s.hugepage_pmd_enabled() is pmd_enabled
    assert s.hugepage_enabled("legacy") is pmd_enabled
    assert s.hugepage_enabled() is v11
    assert s.hugepage_enabled("v11") is v11
    assert s.hugepage_enabled("linux-7.2") is linux72


def test_unknown_policy() -> None:
    with pytest.raises(ValueError):
        Settings().hugepage_enabled("v19x")


# ---------------------------------------------------------------- hypothesis

# An independent oracle: what the kernel accepts, written with regular expressions.
_NUM = re.compile(r"\+?([0-9]+)\n?", re.ASCII)
_WORDS = {
    "enabled": ("always", "madvise", "never"),
    "defrag": ("always", "defer", "defer+madvise", "madvise", "never"),
}
_ORDER_WORDS = ("always", "inherit", "madvise", "never")
_GEOMS = {4096: (GEOM_4K, 512), 16384: (GEOM_16K, 2048), 65536: (GEOM_64K, 8192)}


def _oracle(path: str, value: str, nr: int) -> str | None:
    """The as_dict word a valid store leaves, or None if the kernel rejects it."""
    value = value.split("\0", 1)[0]
    words = _ORDER_WORDS if path.startswith("hugepages-") else _WORDS.get(path)
    if words is not None:
        hits = [w for w in words if value in (w, w + "\n")]
        return hits[0] if hits else None
    if path == "shrink_underused":
        if (value[:1] and value[:1] in "yYtT1") or value[:2].lower() == "on":
            return "1"
        if (value[:1] and value[:1] in "nNfF0") or value[:2].lower() == "of":
            return "0"
        return None
    m = _NUM.fullmatch(value)
    if m is None:
        return None
    n = int(m.group(1))
    if path in ("use_zero_page", "khugepaged/defrag"):
        limit, low = 1, 0
    elif path in MAX_PTES:
        limit, low = nr - 1, 0
    elif path == "khugepaged/pages_to_scan":
        limit, low = 2**32 - 1, 1
    else:
        limit, low = 2**32 - 1, 0
    return str(n) if low <= n <= limit else None


def _bracket(words: tuple[str, ...], chosen: str) -> str:
    return " ".join(f"[{w}]" if w == chosen else w for w in words) + "\n"


def _check_consistent(s: Settings, expected: dict[str, str], nr: int) -> None:
    assert s.as_dict() == expected
    masks = (s.huge_anon_orders_always, s.huge_anon_orders_madvise, s.huge_anon_orders_inherit)
    assert masks[0] & masks[1] == 0 and masks[0] & masks[2] == 0 and masks[1] & masks[2] == 0
    for path, word in expected.items():
        text = s.read(path)
        if path.startswith("hugepages-"):
            assert text == _bracket(_ORDER_WORDS, word)
        elif path in _WORDS:
            assert text == _bracket(_WORDS[path], word)
        else:
            assert text == word + "\n"
    assert 0 <= s.max_ptes_none <= nr - 1
    assert 0 <= s.max_ptes_swap <= nr - 1
    assert 0 <= s.max_ptes_shared <= nr - 1
    assert 1 <= s.pages_to_scan <= 2**32 - 1


_VALUE_POOL = [
    "always",
    "madvise",
    "never",
    "inherit",
    "defer",
    "defer+madvise",
    "0",
    "1",
    "2",
    "+5",
    "5\n",
    "5\n\n",
    "-1",
    "",
    "on",
    "off",
    "o",
    "yes",
    "abc",
    "511",
    "512",
    "2047",
    "2048",
    "8191",
    "8192",
    "4294967295",
    "4294967296",
    "18446744073709551616",
    "always\n",
    "never\n\n",
    " 7",
    "7\0x",
]


@st.composite
def _writes(draw: st.DrawFn, paths: list[str]) -> tuple[str, str]:
    path = draw(st.sampled_from([*paths, "hpage_pmd_size", "hugepages-8kB/enabled"]))
    value = draw(
        st.one_of(
            st.sampled_from(_VALUE_POOL),
            st.integers(min_value=0, max_value=2**33).map(str),
            st.text(alphabet="0123456789+-\n\0 xaeflnoy", max_size=6),
        )
    )
    return path, value


@settings(max_examples=150, deadline=None)
@given(
    page_size=st.sampled_from(sorted(_GEOMS)),
    data=st.data(),
)
def test_random_writes_keep_valid_state(page_size: int, data: st.DataObject) -> None:
    geom, nr = _GEOMS[page_size]
    s = Settings(geom)
    calls: list[str] = []
    s.add_listener(calls.append)
    paths = s.writable_paths()
    expected = s.as_dict()
    ops = data.draw(st.lists(_writes(paths), max_size=25))
    for path, value in ops:
        want = _oracle(path, value, nr) if path in expected else None
        old = expected.get(path)
        calls.clear()
        if want is None:
            with pytest.raises(OSError) as info:
                s.write(path, value)
            if path == "hpage_pmd_size":
                assert info.value.errno == errno.EACCES
            elif path not in expected:
                assert info.value.errno == errno.ENOENT
            else:
                assert info.value.errno in (errno.EINVAL, errno.ERANGE)
            assert calls == []
        else:
            s.write(path, value)
            expected[path] = want
            notify = path in SLEEPS or (
                (path == "enabled" or path.startswith("hugepages-")) and want != old
            )
            assert calls == ([path] if notify else [])
        _check_consistent(s, expected, nr)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_push_pop_restores_random_state(data: st.DataObject) -> None:
    s = Settings()
    paths = s.writable_paths()
    for path, value in data.draw(st.lists(_writes(paths), max_size=8)):
        with contextlib.suppress(OSError):
            s.write(path, value)
    saved = s.as_dict()
    s.push()
    for path, value in data.draw(st.lists(_writes(paths), max_size=8)):
        with contextlib.suppress(OSError):
            s.write(path, value)
    s.pop()
    assert s.as_dict() == saved
    other = Settings()
    other.apply(saved)
    assert other.as_dict() == saved
