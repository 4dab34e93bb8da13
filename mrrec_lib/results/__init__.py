"""Durable results: committed records of runs under results/<run>/, Table 1 recomputed from them, README rendering.

`record_run` (`mrrec record`) writes a record, `recompute_table` rebuilds Table 1 from its per-request rows,
`check_record` (`mrrec check-record`) says when the current code would no longer produce it, and
`render_readme` (`mrrec readme`) writes Table 1 between the README's markers.
"""

from mrrec_lib.results.readme import END, START, render_readme, table1_markdown
from mrrec_lib.results.recompute import compare_with_metrics, recompute_table, verify_record
from mrrec_lib.results.record import StaleRecordError, export_per_query, record_run
from mrrec_lib.results.stale import check_record

__all__ = [
    "END",
    "START",
    "StaleRecordError",
    "check_record",
    "compare_with_metrics",
    "export_per_query",
    "recompute_table",
    "record_run",
    "render_readme",
    "table1_markdown",
    "verify_record",
]
