"""thpsim: a faithful executable model of Linux anonymous THP, mTHP faults and khugepaged."""

__version__ = "0.1.0"
