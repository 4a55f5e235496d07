"""Metrics over anonymous memory: TLB entries, folio-size histograms (shared by
``whatif`` and the workload simulator)."""

from thpsim.metrics.tlb import TLB_MODELS, tlb_entries

__all__ = ["TLB_MODELS", "tlb_entries"]
