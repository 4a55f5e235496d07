"""``thpsim whatif``: predict what khugepaged would do to a snapshot (docs/whatif.md)."""

from thpsim.whatif.load import load_snapshot_into_model
from thpsim.whatif.run import Combo, WhatIfResult, first_scan, whatif

__all__ = ["Combo", "WhatIfResult", "first_scan", "load_snapshot_into_model", "whatif"]
