"""Table 1 from a record's per-request rows alone, computed the way stage 05 computed it.

Stage 05 (`eval.report.setting_summary` / `system_summary`) takes each system's rows in order,
turns the headline setting's rank column into per-request R@k / N@k (`eval.metrics`), and gives
metric number i (R@k for every k, then N@k) its mean and user-cluster bootstrap CI with seed
`seed + i` (`eval.stats.cluster_bootstrap_ci`). Repeating exactly that on the same rows in the
same order reproduces its numbers bit for bit, so a record whose recomputation disagrees with
its metrics/05_eval.json is reported instead of trusted.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mrrec_lib.config import Config
from mrrec_lib.eval.evaluate import metric_names
from mrrec_lib.eval.metrics import metrics_from_ranks
from mrrec_lib.eval.protocol import headline
from mrrec_lib.eval.report import COST_COLUMNS
from mrrec_lib.eval.stats import cluster_bootstrap_ci
from mrrec_lib.eval.tables import NOT_RUN, efficiency_metric
from mrrec_lib.results.layout import PER_QUERY_FILE, read_config, read_eval_metrics, read_per_query


def headline_column(rows: pd.DataFrame, cfg: Config) -> str:
    """The rank column of the recorded headline setting; `rank` for runs that kept only the headline ranks.

    Where both exist they must agree: `rank` is what stage 05 scored, the setting column is what the
    recorded `eval_malformed` / `eval_exclude_history` say it scored.
    """
    column = headline(cfg).column
    if column not in rows.columns:
        return "rank"
    if not np.array_equal(rows[column].to_numpy(dtype=float), rows["rank"].to_numpy(dtype=float)):
        raise ValueError(
            f"{PER_QUERY_FILE}: column `rank` differs from `{column}`, the headline of the recorded config "
            f"(eval_malformed={cfg.eval_malformed}, eval_exclude_history={cfg.eval_exclude_history})"
        )
    return column


def metric_cells(df: pd.DataFrame, column: str, cfg: Config) -> dict[str, float]:
    """Mean, lo, hi of every R@k / N@k, seeds as in `eval.report._metric_cells`."""
    users = df["user_id"].astype(str).to_numpy()
    cells: dict[str, float] = {}
    for i, (m, v) in enumerate(metrics_from_ranks(df[column].to_numpy(dtype=float), cfg.eval_ks).items()):
        cells[m], cells[f"{m}_lo"], cells[f"{m}_hi"] = cluster_bootstrap_ci(
            v, users, cfg.bootstrap_samples, cfg.seed + i
        )
    return cells


def cost_cells(df: pd.DataFrame, recall: float) -> dict[str, float]:
    """The cost columns of `eval.report.system_summary` whose per-request source column was recorded."""
    cells = {"malformed_rate": float(df["malformed"].mean())} if "malformed" in df else {}
    cells.update({c: float(df[c].mean()) for c in ("tool_calls", "memory_tokens", "memory_tokens_global", "latency_s")
                  if c in df})  # fmt: skip
    if "memory_tokens" in cells:
        tokens = cells["memory_tokens"]
        cells["efficiency"] = recall / (tokens / 100) if tokens > 0 else math.nan
    return cells


def _systems(metrics: dict[str, Any], rows: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Stage 05's system order and labels (text, not numbers), then any system only the rows know."""
    systems = dict(metrics.get("systems", {}))
    for name in rows["system"].unique():
        systems.setdefault(str(name), {})
    return systems


def recompute_table(record_dir: str | Path) -> pd.DataFrame:
    """One row per system: label, status, n, n_users, headline R/N@k with CI (`m`, `m_lo`, `m_hi`), cost columns.

    Numbers come only from per_query.csv.gz and the recorded config (seed, bootstrap_samples, eval_ks,
    headline setting); 05_eval.json gives the row order, labels and why a system did not run.
    """
    record = Path(record_dir)
    cfg = read_config(record)
    rows = read_per_query(record)
    column = headline_column(rows, cfg)
    eff = efficiency_metric(cfg.eval_ks)
    out = []
    for system, meta in _systems(read_eval_metrics(record), rows).items():
        df = rows[rows["system"] == system]
        row = {
            "system": system,
            "method": meta.get("method", system),
            "memory": meta.get("memory", ""),
            "kind": meta.get("kind", ""),
        }
        if not len(df):
            reason = meta.get("reason") or f"no rows in {PER_QUERY_FILE}"
            out.append({**row, "status": NOT_RUN, "reason": reason, "n": 0, "n_users": 0})
            continue
        cells = metric_cells(df, column, cfg)
        row.update(status="ok", reason="", n=len(df), n_users=int(df["user_id"].nunique()))
        out.append({**row, **cells, **cost_cells(df, cells[eff])})
    return pd.DataFrame(out)


def _same(a: Any, b: Any, tol: float) -> bool:
    """Equal within `tol`, with None (JSON's NaN) and NaN equal to each other."""
    a = math.nan if a is None else float(a)
    b = math.nan if b is None else float(b)
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol


def compare_with_metrics(table: pd.DataFrame, metrics: dict[str, Any], tol: float = 1e-9) -> list[str]:
    """Where `table` departs from stage 05's record: means, n and costs must be equal, CI bounds within `tol`."""
    problems = []
    recorded = metrics.get("systems", {})
    for r in table.to_dict("records"):
        name, rec = r["system"], recorded.get(r["system"])
        if rec is None:
            problems.append(f"{name}: has per-request rows but is not in 05_eval.json")
            continue
        if (rec["status"] == "ok") != (r["status"] == "ok"):
            problems.append(f"{name}: status {r['status']!r} recomputed, {rec['status']!r} recorded")
        if rec["status"] != "ok" or r["status"] != "ok":
            continue
        problems += [f"{name}: {k} {r[k]} recomputed, {rec[k]} recorded" for k in ("n", "n_users") if r[k] != rec[k]]
        cells = rec["metrics"]
        for m in metric_names(metrics["ks"]):
            if m not in cells or m not in r:
                problems.append(f"{name}: {m} missing from the {'record' if m not in cells else 'recomputation'}")
                continue
            for part, key, t in (("mean", m, 0.0), ("lo", f"{m}_lo", tol), ("hi", f"{m}_hi", tol)):
                if not _same(r[key], cells[m][part], t):
                    problems.append(f"{name}: {m} {part} {r[key]!r} recomputed, {cells[m][part]!r} recorded")
        for c in COST_COLUMNS:
            if c in cells and c in r and not _same(r[c], cells[c], 0.0):
                problems.append(f"{name}: {c} {r[c]!r} recomputed, {cells[c]!r} recorded")
    return problems


def verify_record(record_dir: str | Path, tol: float = 1e-9) -> list[str]:
    """`compare_with_metrics` of the record's recomputed Table 1 against its own metrics/05_eval.json."""
    record = Path(record_dir)
    return compare_with_metrics(recompute_table(record), read_eval_metrics(record), tol)
