"""The ``/sys/kernel/mm/transparent_hugepage/`` tree as a Python object.

:class:`Settings` is read and written with the same strings and the same
validation as the kernel's sysfs handlers (``mm/huge_memory.c`` and
``mm/khugepaged.c``), so a script written against the real files drives the
model unchanged.  An invalid store raises :class:`OSError` with the errno the
kernel returns and leaves the value unchanged.

The model itself reads the typed accessors (:attr:`Settings.max_ptes_none`,
:meth:`Settings.order_setting`, the three ``huge_anon_orders_*`` masks, ...)
and registers a listener to hear about the writes on which the kernel calls
``start_stop_khugepaged()`` or wakes the khugepaged thread.

The parsing helpers :func:`kstrtoul`, :func:`kstrtouint`, :func:`kstrtobool`
and :func:`sysfs_streq` follow the C-string rules of ``lib/kstrtox.c`` and
``lib/string.c`` and are reusable by other modules.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace

from thpsim.mm.geometry import GEOM_4K, Geometry

__all__ = [
    "DEFRAG_VALUES",
    "ENABLED_VALUES",
    "ORDER_VALUES",
    "POLICIES",
    "THP_SYSFS_DIR",
    "UINT_MAX",
    "ULONG_MAX",
    "Settings",
    "kstrtobool",
    "kstrtouint",
    "kstrtoul",
    "sysfs_streq",
]

ULONG_MAX = 2**64 - 1
UINT_MAX = 2**32 - 1

THP_SYSFS_DIR = "/sys/kernel/mm/transparent_hugepage/"

ENABLED_VALUES = ("always", "madvise", "never")
DEFRAG_VALUES = ("always", "defer", "defer+madvise", "madvise", "never")
ORDER_VALUES = ("always", "inherit", "madvise", "never")
POLICIES = ("legacy", "v11", "linux-7.2")

# The project builds with CONFIG_TRANSPARENT_HUGEPAGE_ALWAYS (the Debian default).
DEFAULT_ENABLED = "always"

# ULONG_MAX has 20 decimal digits; checking the length first keeps int() away from
# Python's limit on huge digit strings.
_ULONG_MAX_DIGITS = len(str(ULONG_MAX))


def _oserror(err: int, path: str | None = None) -> OSError:
    """Build ``OSError(err, strerror[, path])`` like a failing ``write(2)``."""
    if path is None:
        return OSError(err, os.strerror(err))
    return OSError(err, os.strerror(err), path)


def _cstr(s: str) -> str:
    """The part of ``s`` a C string function sees: everything before the first NUL."""
    nul = s.find("\0")
    return s if nul < 0 else s[:nul]


def sysfs_streq(s1: str, s2: str) -> bool:
    """``sysfs_streq()``: equal, ignoring one trailing newline on either side.

    Parameters
    ----------
    s1, s2 : str
        The strings to compare (C semantics: each ends at its first NUL).

    Returns
    -------
    bool
        True if the strings are equal, or equal once a single ``"\\n"`` that
        ends one of them is dropped.
    """
    a, b = _cstr(s1), _cstr(s2)
    return a == b or a == b + "\n" or a + "\n" == b


def kstrtoul(s: str, limit: int = ULONG_MAX) -> int:
    """Parse a base-10 unsigned integer like the kernel's ``kstrtoul``/``kstrtoull``.

    Accepted: an optional single ``+``, one or more ASCII digits, then an optional
    single ``"\\n"``, nothing else (the string ends at its first NUL, as in C).

    Parameters
    ----------
    s : str
        The text written to the file.
    limit : int, optional
        Largest value the destination type holds (``ULONG_MAX`` by default,
        ``UINT_MAX`` for ``kstrtouint``).

    Returns
    -------
    int
        The parsed value.

    Raises
    ------
    OSError
        ``ERANGE`` if the digits exceed 64 bits (checked before the trailing
        characters, as the kernel does) or the value exceeds ``limit``;
        ``EINVAL`` for any other malformed input.
    """
    s = _cstr(s)
    start = 1 if s.startswith("+") else 0
    end = start
    while end < len(s) and "0" <= s[end] <= "9":
        end += 1
    digits = s[start:end]
    significant = digits.lstrip("0")
    if len(significant) > _ULONG_MAX_DIGITS or (significant and int(significant) > ULONG_MAX):
        raise _oserror(errno.ERANGE)
    if not digits:
        raise _oserror(errno.EINVAL)
    if s[end:] not in ("", "\n"):
        raise _oserror(errno.EINVAL)
    value = int(significant or "0")
    if value > limit:
        raise _oserror(errno.ERANGE)
    return value


def kstrtouint(s: str) -> int:
    """``kstrtouint`` (base 10): :func:`kstrtoul` limited to ``UINT_MAX``."""
    return kstrtoul(s, UINT_MAX)


def kstrtobool(s: str) -> bool:
    """Parse a boolean like the kernel's ``kstrtobool``.

    Only the first one or two characters matter: ``y Y t T 1`` mean true,
    ``n N f F 0`` mean false, and ``o``/``O`` followed by ``n``/``N`` (on) or
    ``f``/``F`` (off) mean true/false.  So ``"yes"``, ``"true"``, ``"on"`` and
    ``"1"`` are true; ``"2"``, ``"o"`` and ``""`` are invalid.

    Parameters
    ----------
    s : str
        The text written to the file.

    Returns
    -------
    bool
        The parsed value.

    Raises
    ------
    OSError
        ``EINVAL`` if the string starts with none of the accepted forms.
    """
    s = _cstr(s)
    first, second = s[:1], s[1:2]
    if first and first in "yYtT1":
        return True
    if first and first in "nNfF0":
        return False
    if first and first in "oO" and second:
        if second in "nN":
            return True
        if second in "fF":
            return False
    raise _oserror(errno.EINVAL)


def _bracketed(choices: tuple[str, ...], selected: str) -> str:
    """``"always [madvise] never\\n"``: the selected word in brackets."""
    words = (f"[{c}]" if c == selected else c for c in choices)
    return " ".join(words) + "\n"


def _match_word(value: str, choices: tuple[str, ...]) -> str:
    """The choice ``value`` selects under ``sysfs_streq``; ``EINVAL`` if none."""
    for choice in choices:
        if sysfs_streq(value, choice):
            return choice
    raise _oserror(errno.EINVAL)


@dataclass(frozen=True)
class _State:
    """Every writable value; immutable so a store is validated before it is committed."""

    enabled: str
    defrag: str
    use_zero_page: bool
    shrink_underused: bool
    orders_always: int
    orders_madvise: int
    orders_inherit: int
    khugepaged_defrag: bool
    max_ptes_none: int
    max_ptes_swap: int
    max_ptes_shared: int
    pages_to_scan: int
    scan_sleep_millisecs: int
    alloc_sleep_millisecs: int

    def order_word(self, order: int) -> str:
        bit = 1 << order
        if self.orders_always & bit:
            return "always"
        if self.orders_inherit & bit:
            return "inherit"
        if self.orders_madvise & bit:
            return "madvise"
        return "never"

    def with_order(self, order: int, word: str) -> _State:
        # The chosen mask gets the bit and the other two lose it ("never": none has it).
        bit = 1 << order
        return replace(
            self,
            orders_always=(self.orders_always & ~bit) | (bit if word == "always" else 0),
            orders_madvise=(self.orders_madvise & ~bit) | (bit if word == "madvise" else 0),
            orders_inherit=(self.orders_inherit & ~bit) | (bit if word == "inherit" else 0),
        )


def _default_state(geometry: Geometry) -> _State:
    """Upstream defaults: PMD order ``inherit``, other sizes ``never``."""
    return _State(
        enabled=DEFAULT_ENABLED,
        defrag="madvise",
        use_zero_page=True,
        shrink_underused=True,
        orders_always=0,
        orders_madvise=0,
        orders_inherit=1 << geometry.pmd_order,
        khugepaged_defrag=True,
        max_ptes_none=geometry.default_max_ptes_none,
        max_ptes_swap=geometry.default_max_ptes_swap,
        max_ptes_shared=geometry.default_max_ptes_shared,
        pages_to_scan=geometry.default_pages_to_scan,
        scan_sleep_millisecs=10000,
        alloc_sleep_millisecs=60000,
    )


# When the listener hears about a store: on a change (start_stop_khugepaged) or on
# every successful store (the sleep knobs reset the deadline and wake the thread).
_NOTIFY_NONE, _NOTIFY_CHANGE, _NOTIFY_ALWAYS = 0, 1, 2


@dataclass(frozen=True)
class _Knob:
    """One writable file: how to store into, show and save its value."""

    store: Callable[[_State, str], _State]  # raises OSError on an invalid value
    show: Callable[[_State], str]  # file content, with "\n"
    word: Callable[[_State], str]  # the bare value, as saved by as_dict()
    notify: int = _NOTIFY_NONE


def _flag_knob(attr: str) -> _Knob:
    """``single_hugepage_flag_store``: kstrtoul, its error as is, then > 1 is ``EINVAL``."""

    def store(st: _State, value: str) -> _State:
        n = kstrtoul(value)
        if n > 1:
            raise _oserror(errno.EINVAL)
        return replace(st, **{attr: bool(n)})

    def word(st: _State) -> str:
        return "1" if getattr(st, attr) else "0"

    return _Knob(store, lambda st: word(st) + "\n", word)


def _max_ptes_knob(attr: str, nr: int) -> _Knob:
    """``max_ptes_*``: every parse error and anything above ``HPAGE_PMD_NR - 1`` is ``EINVAL``."""

    def store(st: _State, value: str) -> _State:
        try:
            n = kstrtoul(value)
        except OSError:
            raise _oserror(errno.EINVAL) from None
        if n > nr - 1:
            raise _oserror(errno.EINVAL)
        return replace(st, **{attr: n})

    return _Knob(store, lambda st: f"{getattr(st, attr)}\n", lambda st: str(getattr(st, attr)))


def _uint_knob(attr: str, minimum: int, notify: int) -> _Knob:
    """kstrtouint knobs: every parse error (and a value below ``minimum``) is ``EINVAL``."""

    def store(st: _State, value: str) -> _State:
        try:
            n = kstrtouint(value)
        except OSError:
            raise _oserror(errno.EINVAL) from None
        if n < minimum:
            raise _oserror(errno.EINVAL)
        return replace(st, **{attr: n})

    return _Knob(
        store, lambda st: f"{getattr(st, attr)}\n", lambda st: str(getattr(st, attr)), notify
    )


def _word_knob(attr: str, choices: tuple[str, ...], notify: int) -> _Knob:
    def store(st: _State, value: str) -> _State:
        return replace(st, **{attr: _match_word(value, choices)})

    return _Knob(
        store,
        lambda st: _bracketed(choices, getattr(st, attr)),
        lambda st: getattr(st, attr),
        notify,
    )


def _order_knob(order: int) -> _Knob:
    def store(st: _State, value: str) -> _State:
        return st.with_order(order, _match_word(value, ORDER_VALUES))

    return _Knob(
        store,
        lambda st: _bracketed(ORDER_VALUES, st.order_word(order)),
        lambda st: st.order_word(order),
        _NOTIFY_CHANGE,
    )


def _bool_knob(attr: str) -> _Knob:
    def store(st: _State, value: str) -> _State:
        return replace(st, **{attr: kstrtobool(value)})

    def word(st: _State) -> str:
        return "1" if getattr(st, attr) else "0"

    return _Knob(store, lambda st: word(st) + "\n", word)


def _build_knobs(geometry: Geometry) -> dict[str, _Knob]:
    """All writable files in ``ls`` order of importance: top level, sizes, khugepaged."""
    nr = geometry.hpage_pmd_nr
    knobs: dict[str, _Knob] = {
        "enabled": _word_knob("enabled", ENABLED_VALUES, _NOTIFY_CHANGE),
        "defrag": _word_knob("defrag", DEFRAG_VALUES, _NOTIFY_NONE),
        "use_zero_page": _flag_knob("use_zero_page"),
        "shrink_underused": _bool_knob("shrink_underused"),
    }
    for order in geometry.anon_orders:
        knobs[f"hugepages-{geometry.size_name(order)}/enabled"] = _order_knob(order)
    knobs.update(
        {
            "khugepaged/defrag": _flag_knob("khugepaged_defrag"),
            "khugepaged/max_ptes_none": _max_ptes_knob("max_ptes_none", nr),
            "khugepaged/max_ptes_swap": _max_ptes_knob("max_ptes_swap", nr),
            "khugepaged/max_ptes_shared": _max_ptes_knob("max_ptes_shared", nr),
            "khugepaged/pages_to_scan": _uint_knob("pages_to_scan", 1, _NOTIFY_NONE),
            "khugepaged/scan_sleep_millisecs": _uint_knob(
                "scan_sleep_millisecs", 0, _NOTIFY_ALWAYS
            ),
            "khugepaged/alloc_sleep_millisecs": _uint_knob(
                "alloc_sleep_millisecs", 0, _NOTIFY_ALWAYS
            ),
        }
    )
    return knobs


_READ_ONLY = ("hpage_pmd_size", "khugepaged/pages_collapsed", "khugepaged/full_scans")


class Settings:
    """The anon THP sysfs tree, with kernel-exact read/write semantics.

    Parameters
    ----------
    geometry : Geometry, optional
        Base page geometry; sets the ``hugepages-<N>kB`` directories, the
        ``max_ptes_*`` limits and the khugepaged defaults.  4K by default.

    Attributes
    ----------
    geometry : Geometry
        The geometry given at construction.
    pages_collapsed : int
        Shown by ``khugepaged/pages_collapsed``; updated by the khugepaged model.
    full_scans : int
        Shown by ``khugepaged/full_scans``; updated by the khugepaged model.

    Notes
    -----
    Paths are relative to ``/sys/kernel/mm/transparent_hugepage/``; that prefix
    may also be given.  The two counters are not settings: :meth:`as_dict`,
    :meth:`push`, :meth:`pop` and :meth:`reset` leave them alone.
    """

    def __init__(self, geometry: Geometry = GEOM_4K) -> None:
        self.geometry = geometry
        self.pages_collapsed = 0
        self.full_scans = 0
        self._knobs = _build_knobs(geometry)
        self._state = _default_state(geometry)
        self._stack: list[_State] = []
        self._listeners: list[Callable[[str], None]] = []

    def __repr__(self) -> str:
        return f"Settings(page_size={self.geometry.page_size}, {self.as_dict()!r})"

    # ------------------------------------------------------------------ files

    def _path(self, path: str) -> str:
        """Strip the sysfs directory prefix."""
        return path.removeprefix(THP_SYSFS_DIR)

    def paths(self) -> list[str]:
        """All readable files, the writable ones first.

        Returns
        -------
        list of str
            Paths relative to the THP directory.
        """
        return [*self._knobs, *_READ_ONLY]

    def writable_paths(self) -> list[str]:
        """The writable files, in the order :meth:`as_dict` uses."""
        return list(self._knobs)

    def read(self, path: str) -> str:
        """Return the file content as ``cat`` shows it, including the trailing newline.

        Parameters
        ----------
        path : str
            File path, relative or under ``/sys/kernel/mm/transparent_hugepage/``.

        Returns
        -------
        str
            E.g. ``"always [madvise] never\\n"`` or ``"511\\n"``.

        Raises
        ------
        OSError
            ``ENOENT`` for a path that does not exist.
        """
        rel = self._path(path)
        knob = self._knobs.get(rel)
        if knob is not None:
            return knob.show(self._state)
        if rel == "hpage_pmd_size":
            return f"{self.geometry.pmd_size}\n"
        if rel == "khugepaged/pages_collapsed":
            return f"{self.pages_collapsed}\n"
        if rel == "khugepaged/full_scans":
            return f"{self.full_scans}\n"
        raise _oserror(errno.ENOENT, path)

    def _store(self, state: _State, rel: str, path: str, value: str) -> _State:
        """Validate one store against ``state``; the new state, or ``OSError`` naming ``path``."""
        if not isinstance(value, str):
            raise TypeError(f"sysfs value must be str, not {type(value).__name__}")
        knob = self._knobs.get(rel)
        if knob is None:
            raise _oserror(errno.EACCES if rel in _READ_ONLY else errno.ENOENT, path)
        try:
            return knob.store(state, value)
        except OSError as e:
            raise _oserror(e.errno, path) from None

    def write(self, path: str, value: str) -> None:
        """Store ``value`` into a file, validating exactly as the kernel does.

        Parameters
        ----------
        path : str
            File path, relative or under ``/sys/kernel/mm/transparent_hugepage/``.
        value : str
            The bytes written, e.g. ``"madvise"``, ``"madvise\\n"``, ``"+5"``.

        Raises
        ------
        OSError
            ``ENOENT`` (no such file), ``EACCES`` (read-only file), or the
            kernel's error for the value (``EINVAL``/``ERANGE``); the value is
            then unchanged.
        """
        rel = self._path(path)
        old = self._state
        self._state = self._store(old, rel, path, value)
        self._notify(self._fired([rel], old, self._state))

    def as_dict(self) -> dict[str, str]:
        """Every writable file's selected value word (``"madvise"``, ``"511"``, ``"1"``).

        Returns
        -------
        dict of str to str
            Writable path to value; :meth:`apply` restores it.
        """
        return {rel: knob.word(self._state) for rel, knob in self._knobs.items()}

    def apply(self, values: Mapping[str, str]) -> None:
        """Write several files, all or nothing.

        Every store is validated (in the mapping's order) before any is
        committed.  Listeners then hear about each path as a :meth:`write`
        would report it.

        Parameters
        ----------
        values : Mapping of str to str
            Path to value, e.g. the result of :meth:`as_dict`.

        Raises
        ------
        OSError
            The first failing store's error, naming its path; nothing changed.
        """
        old = state = self._state
        rels: list[str] = []
        for path, value in values.items():
            rel = self._path(path)
            state = self._store(state, rel, path, value)
            if rel not in rels:
                rels.append(rel)
        self._state = state
        self._notify(self._fired(rels, old, state))

    def reset(self) -> None:
        """Return every writable file to its upstream default (the counters are kept)."""
        self._restore(_default_state(self.geometry))

    def push(self) -> None:
        """Save the current values on a stack (selftests' ``thp_push_settings``)."""
        self._stack.append(self._state)

    def pop(self) -> None:
        """Restore the values saved by the matching :meth:`push`.

        Raises
        ------
        IndexError
            If nothing was pushed.
        """
        if not self._stack:
            raise IndexError("pop from an empty settings stack")
        self._restore(self._stack.pop())

    @contextmanager
    def scoped(self, values: Mapping[str, str] | None = None) -> Iterator[Settings]:
        """Context manager: :meth:`push`, :meth:`apply` ``values``, yield, :meth:`pop`.

        The values are restored even if ``apply`` or the body raises.

        Parameters
        ----------
        values : Mapping of str to str, optional
            Stores to apply inside the scope.

        Yields
        ------
        Settings
            ``self``.
        """
        self.push()
        try:
            if values:
                self.apply(values)
            yield self
        finally:
            self.pop()

    def _restore(self, new: _State) -> None:
        old = self._state
        self._state = new
        changed = [rel for rel, k in self._knobs.items() if k.word(old) != k.word(new)]
        self._notify([rel for rel in changed if self._knobs[rel].notify != _NOTIFY_NONE])

    # -------------------------------------------------------------- listeners

    def add_listener(self, fn: Callable[[str], None]) -> None:
        """Call ``fn(path)`` where the kernel would start/stop or wake khugepaged.

        That is: after a store that changes ``enabled`` or a
        ``hugepages-<N>kB/enabled``, after every successful store to
        ``khugepaged/scan_sleep_millisecs`` or ``khugepaged/alloc_sleep_millisecs``,
        after :meth:`apply` for each stored path a :meth:`write` would report, and
        after :meth:`pop`/:meth:`reset` for each of those paths whose value
        changed.  Other knobs never notify.  ``path`` is relative to the THP
        directory; listeners run once every new value is in place.

        Parameters
        ----------
        fn : callable
            Called with the relative path, after the new values are in place.
        """
        self._listeners.append(fn)

    def _fired(self, rels: list[str], old: _State, new: _State) -> list[str]:
        """Which of the stored paths the listeners hear about."""
        out = []
        for rel in rels:
            knob = self._knobs[rel]
            if knob.notify == _NOTIFY_ALWAYS or (
                knob.notify == _NOTIFY_CHANGE and knob.word(old) != knob.word(new)
            ):
                out.append(rel)
        return out

    def _notify(self, rels: list[str]) -> None:
        for rel in rels:
            for fn in list(self._listeners):
                fn(rel)

    # -------------------------------------------------------- typed accessors

    @property
    def enabled(self) -> str:
        """Top-level ``enabled``: ``"always"``, ``"madvise"`` or ``"never"``."""
        return self._state.enabled

    @property
    def defrag(self) -> str:
        """Top-level ``defrag`` (fault-time allocation behaviour)."""
        return self._state.defrag

    @property
    def use_zero_page(self) -> bool:
        """Huge zero page on PMD read faults."""
        return self._state.use_zero_page

    @property
    def shrink_underused(self) -> bool:
        """Queue underused PMD THPs for splitting."""
        return self._state.shrink_underused

    def order_setting(self, order: int) -> str:
        """The ``hugepages-<N>kB/enabled`` value of an anon order.

        Parameters
        ----------
        order : int
            An order in ``geometry.anon_orders``.

        Returns
        -------
        str
            ``"always"``, ``"inherit"``, ``"madvise"`` or ``"never"``.

        Raises
        ------
        ValueError
            For an order that has no anon ``enabled`` file.
        """
        if order not in self.geometry.anon_orders:
            raise ValueError(f"order {order} has no anonymous hugepages-*/enabled file")
        return self._state.order_word(order)

    @property
    def huge_anon_orders_always(self) -> int:
        """Bitmask of orders set to ``always`` (bit k = order k)."""
        return self._state.orders_always

    @property
    def huge_anon_orders_madvise(self) -> int:
        """Bitmask of orders set to ``madvise``."""
        return self._state.orders_madvise

    @property
    def huge_anon_orders_inherit(self) -> int:
        """Bitmask of orders set to ``inherit`` (follow the top-level ``enabled``)."""
        return self._state.orders_inherit

    @property
    def khugepaged_defrag(self) -> bool:
        """``khugepaged/defrag``: collapse allocations may reclaim/compact."""
        return self._state.khugepaged_defrag

    @property
    def max_ptes_none(self) -> int:
        return self._state.max_ptes_none

    @property
    def max_ptes_swap(self) -> int:
        return self._state.max_ptes_swap

    @property
    def max_ptes_shared(self) -> int:
        return self._state.max_ptes_shared

    @property
    def pages_to_scan(self) -> int:
        return self._state.pages_to_scan

    @property
    def scan_sleep_millisecs(self) -> int:
        return self._state.scan_sleep_millisecs

    @property
    def alloc_sleep_millisecs(self) -> int:
        return self._state.alloc_sleep_millisecs

    def _top_enabled(self) -> bool:
        return self._state.enabled in ("always", "madvise")

    def hugepage_pmd_enabled(self) -> bool:
        """``hugepage_pmd_enabled()`` for anonymous memory (kernel-model §1.5).

        True if the PMD order is ``always`` or ``madvise``, or ``inherit`` with
        the top level ``always``/``madvise``.  The file-THP and shmem terms are
        not modelled (taken as false).
        """
        bit = 1 << self.geometry.pmd_order
        st = self._state
        if (st.orders_always | st.orders_madvise) & bit:
            return True
        return bool(st.orders_inherit & bit) and self._top_enabled()

    def hugepage_enabled(self, policy: str = "v11") -> bool:
        """Whether khugepaged has anything to do, per policy.

        Parameters
        ----------
        policy : {"v11", "linux-7.2", "legacy"}
            ``"v11"`` (patch 14): some anon order is ``always``/``madvise``, or
            ``inherit`` while the top level is ``always``/``madvise``.
            ``"linux-7.2"`` (linux-7.2 §5.3): additionally true whenever the top
            level is ``always``/``madvise``.  ``"legacy"``:
            :meth:`hugepage_pmd_enabled`.

        Returns
        -------
        bool

        Raises
        ------
        ValueError
            For an unknown policy.
        """
        if policy == "legacy":
            return self.hugepage_pmd_enabled()
        if policy not in ("v11", "linux-7.2"):
            raise ValueError(f"unknown policy {policy!r}; expected one of {POLICIES}")
        st = self._state
        if policy == "linux-7.2" and self._top_enabled():
            return True
        if st.orders_always or st.orders_madvise:
            return True
        return bool(st.orders_inherit) and self._top_enabled()
