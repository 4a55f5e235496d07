"""Every registered workload: documented, well-formed event stream, terminates when idle."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from thpsim.workloads import WORKLOADS
from thpsim.workloads.base import Event, Param, Touch, WorkloadError

GENERATED = [n for n in WORKLOADS if n != "replay"]  # replay needs snapshots


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_documented(name):
    cls = WORKLOADS[name]
    assert cls.name == name
    assert cls.summary and cls.models and cls.source and cls.__doc__
    for key, p in cls.PARAMS.items():
        assert isinstance(p, Param) and p.doc, key


@pytest.mark.parametrize("name", GENERATED)
def test_events_are_time_ordered(name):
    wl = WORKLOADS[name]()
    evs = list(itertools.islice(wl.events(np.random.default_rng(0)), 3000))
    assert evs and all(isinstance(e, Event) for e in evs)
    t = np.array([e.t for e in evs])
    assert np.all(np.diff(t) >= 0) and t[0] >= 0
    assert any(isinstance(e, Touch) for e in evs)


@pytest.mark.parametrize("name, params", [
    ("allocator", {"churn": 0}),
    ("dense", {"write_fraction": 0}),
    ("stacks", {"churn": 0}),
    ("sparse", {"inserts_per_s": 0, "size": "1M", "grow_step": "512K"}),
])
def test_idle_workloads_end(name, params):
    evs = list(itertools.islice(WORKLOADS[name](**params).events(np.random.default_rng(0)),
                                100_000))
    assert len(evs) < 100_000


def test_param_parsing():
    p = Param(1 << 20, "x", "size")
    assert p.parse("x", "2M") == 2 << 20
    assert Param(False, "x", "bool").parse("x", "yes") is True
    assert Param([], "x", "list").parse("x", "a,b") == ["a", "b"]
    with pytest.raises(WorkloadError, match="not a valid int"):
        Param(1, "x").parse("x", "one")
    with pytest.raises(WorkloadError, match="unknown parameter 'nope'"):
        WORKLOADS["dense"](nope=1)
