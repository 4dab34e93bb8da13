"""Stage 01 data: sources -> unified tables (items, interactions, queries), splits, leakage check."""

from mrrec_lib.data.leakage import leakage_report
from mrrec_lib.data.prepare import load_data, prepare_data
from mrrec_lib.data.schema import SchemaError, read_table, validate
from mrrec_lib.data.splits import history_for

__all__ = ["SchemaError", "history_for", "leakage_report", "load_data", "prepare_data", "read_table", "validate"]
