"""How far two records' rows of the same system agree, request by request: does a row reproduce?

Why: outputs/ may be lost between sessions, so stage 05 is often computed again on another machine or resumed from
rows another session saved. A reader trusting a row built twice needs to know whether the two builds gave the same
answers, not only similar means: per system, on the requests both records scored, how many malformed flags and how
many ranks of each scoring setting are equal, and each record's headline means. Only records of the same requests
and pool (equal stage-01 and stage-02 hashes) are compared; the later stages that differ are named, since an
untrained row should reproduce whatever they are while a trained policy reproduces only if its weights did. A record
made by `mrrec evaluate` lists no stage it borrowed, so its policy's stages are taken from `evaluated_from.json`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mrrec_lib.eval.metrics import metrics_from_ranks
from mrrec_lib.eval.protocol import PAIRED_METRICS, headline, settings
from mrrec_lib.results.compare import IncomparableRecordsError, check_same_requests, check_same_rule
from mrrec_lib.results.layout import read_borrowed_stage_hashes, read_config, read_per_query, read_stage_hashes
from mrrec_lib.results.recompute import headline_column

_SAME_INPUTS = ("01", "02")  # the requests, their targets and the pool every row was ranked against


def _system_rows(rows: pd.DataFrame, system: str) -> pd.DataFrame:
    return rows[rows["system"] == system].set_index("qid")


def _agreement(ra: pd.DataFrame, rb: pd.DataFrame, cfg: Any, column_a: str, column_b: str) -> dict[str, Any]:
    common = ra.index.intersection(rb.index)
    check_same_requests(ra, rb, common)
    a, b = ra.loc[common], rb.loc[common]
    out: dict[str, Any] = {"shared": len(common)}
    if "malformed" in a and "malformed" in b:
        out["malformed_equal"] = int((a["malformed"].astype(bool) == b["malformed"].astype(bool)).sum())
    for s in settings(cfg):
        if s.column in a and s.column in b:
            out[f"{s.column}_equal"] = int(np.sum(a[s.column].to_numpy(dtype=float) == b[s.column].to_numpy(dtype=float)))
    for side, rows, column in (("a", a, column_a), ("b", b, column_b)):
        values = metrics_from_ranks(rows[column].to_numpy(dtype=float), cfg.eval_ks)
        for m in PAIRED_METRICS:
            out[f"{m}_{side}"] = float(np.mean(values[m]))
    return out


def _stage_hashes(record: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """The hashes of the stages behind a record's rows, its own first, then those of a borrowed policy's run."""
    own = read_stage_hashes(record)
    run, borrowed = read_borrowed_stage_hashes(record)
    added = sorted(set(borrowed) - set(own))
    return {**borrowed, **own}, ({"run": run, "stages": added} if added else {})


def row_agreement(a: str | Path, b: str | Path, systems: list[str] | None = None) -> dict[str, Any]:
    """Per system recorded in both `a` and `b` (or only `systems`): equal malformed flags and ranks, and the means.

    Counts are over the requests both scored; `*_equal` counts exact equality, so a tie broken the other way by a
    float-level score change counts as a difference. Refused when the records ranked other requests or another
    pool, or scored a different headline setting.
    """
    a, b = Path(a), Path(b)
    (ha, borrowed_a), (hb, borrowed_b) = _stage_hashes(a), _stage_hashes(b)
    for stage in _SAME_INPUTS:
        if ha.get(stage) is None or ha.get(stage) != hb.get(stage):
            raise IncomparableRecordsError(
                f"{a} and {b} differ in stage {stage} (hashes {ha.get(stage)} vs {hb.get(stage)}): other requests "
                "or pool, so their rows cannot be matched"
            )
    cfg_a, cfg_b = read_config(a), read_config(b)
    check_same_rule(a, cfg_a, b, cfg_b)
    rows_a, rows_b = read_per_query(a), read_per_query(b)
    both = sorted(set(rows_a["system"]) & set(rows_b["system"]))
    chosen = systems or both
    missing = [s for s in chosen if s not in both]
    if missing:
        raise KeyError(f"system(s) {missing} not recorded in both {a.name} and {b.name}; both have {both}")
    per_system = []
    for system in chosen:
        ra, rb = _system_rows(rows_a, system), _system_rows(rows_b, system)
        row = _agreement(ra, rb, cfg_a, headline_column(ra, cfg_a), headline_column(rb, cfg_b))
        per_system.append({"system": system, "requests_a": len(ra), "requests_b": len(rb), **row})
    stages = sorted(set(ha) | set(hb))
    return {
        "a": a.name,
        "b": b.name,
        "stages_differ": [s for s in stages if ha.get(s) != hb.get(s)],
        "borrowed": {side: info for side, info in (("a", borrowed_a), ("b", borrowed_b)) if info},
        "setting": headline(cfg_a).column,
        "systems": per_system,
    }


def format_agreement(result: dict[str, Any]) -> str:
    """A header naming the records and the stages they differ in, then one table row per system."""
    differ = ", ".join(result["stages_differ"]) or "none"
    for side, borrowed in result.get("borrowed", {}).items():
        differ += f"; {side}'s stages {', '.join(borrowed['stages'])} are those of {borrowed['run']}, whose policy it borrowed"
    header = (
        f"{result['a']} (a) vs {result['b']} (b): same requests and pool; stage hashes that differ: {differ}; "
        f"means under the headline setting {result['setting']}"
    )
    table = pd.DataFrame(result["systems"]).set_index("system")
    return header + "\n" + table.to_string(float_format=lambda v: f"{v:.4f}")
