"""Measured tables (`table`) and the comparison of search strategies on them (`strategies`).

The `replay` workload (`tuner.workloads.replay`) answers trials from such a table, so
strategies can be compared reproducibly and fast.
"""

from tuner.replay.table import ReplayTable, TableError, load_table, parse_table

__all__ = ["ReplayTable", "TableError", "load_table", "parse_table"]
