"""A table of data-seed replicas: one configuration run on several splits, each row on its own requests.

Why: `seed` redraws the split, the memory sample and every training stage, so a replica shares no request with the
base run and cannot be paired with it (`compare.compare_records` refuses other stage-01 data). What each run can say
is its own paired result against a baseline scored in the same run (MR.Rec minus query-only retrieval on that run's
requests, users resampled); what the runs say together is how much both move across splits — the whole pipeline's
run-to-run noise, beside which an ablation's Δ on one split is read. The spec is a YAML file with `kind: seeds`
under results/tables/, rendered like a combined table (`mrrec readme --table`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mrrec_lib.eval.tables import fmt, fmt_ci, to_markdown
from mrrec_lib.results.combined import DIGITS, changed_beyond, load_spec, record_links, row_label, signed_ci
from mrrec_lib.results.compare import compare_records
from mrrec_lib.results.layout import read_config, read_per_query
from mrrec_lib.results.recompute import headline_column, metric_cells

KIND = "seeds"
# What a replica may change besides `seed`: which rows its stage 05 scored (the compared two must be among them).
REPLICA_KEYS = ("seed", "eval_systems")


@dataclass(frozen=True)
class SeedSpec:
    """`runs` (record names; the first is the base), the `system` compared with `baseline` inside each run."""

    name: str
    title: str
    runs: list[str]
    system: str
    baseline: str
    metrics: list[str]


def read_seed_spec(path: str | Path) -> SeedSpec:
    path = Path(path)
    data = load_spec(path, KIND, ("title", "runs", "system", "baseline"))
    runs = [str(r) for r in data["runs"]]
    if len(runs) < 2 or len(set(runs)) != len(runs):
        raise ValueError(f"{path}: `runs` needs at least two distinct records, got {runs}")
    metrics = list(data.get("metrics", ["N@100", "R@100"]))
    return SeedSpec(path.stem, str(data["title"]), runs, str(data["system"]), str(data["baseline"]), metrics)


def _check_replica(cfg: Any, base_cfg: Any, record: Path, base: str) -> None:
    """A replica that changed more than the seed would pass a different configuration off as a new split."""
    moved = changed_beyond(base_cfg, cfg, REPLICA_KEYS)
    if moved:
        raise ValueError(f"{record}: listed as a seed replica of {base} but its config also changes {moved}")


def seed_table(spec: SeedSpec, results_dir: str | Path) -> pd.DataFrame:
    """One row per recorded run: its seed, n, the system's and the baseline's mean [CI] and their paired difference.

    Replicas not recorded yet are left out (`unrecorded` names them): a study adds them a session at a time.
    """
    results = Path(results_dir)
    if not (results / spec.runs[0]).is_dir():
        raise FileNotFoundError(f"{results / spec.runs[0]}: the base run of seed table {spec.name} is not recorded")
    base_cfg = read_config(results / spec.runs[0])
    out, missing = [], unrecorded(spec, results)
    for run in spec.runs:
        if run in missing:
            continue
        record = results / run
        cfg = read_config(record)
        _check_replica(cfg, base_cfg, record, spec.runs[0])
        rows = read_per_query(record)
        row: dict[str, Any] = {"run": run, "seed": cfg.seed}
        for role, system in (("system", spec.system), ("baseline", spec.baseline)):
            df = rows[rows["system"] == system]
            if df.empty:
                raise KeyError(f"{record}: no per-request rows for system {system!r}")
            cells = metric_cells(df, headline_column(df, cfg), cfg)
            for m in spec.metrics:
                row.update({f"{role}_{m}": cells[m], f"{role}_{m}_lo": cells[f"{m}_lo"], f"{role}_{m}_hi": cells[f"{m}_hi"]})
            if role == "system":
                row["malformed_rate"] = float(df["malformed"].mean()) if "malformed" in df else float("nan")
        result = compare_records(record, spec.system, record, spec.baseline, tuple(spec.metrics))
        row.update({"requests": result["shared_requests"], "users": result["shared_users"]})
        for t in result["tests"]:
            m = t["metric"]
            row.update({f"d_{m}": t["diff"], f"d_{m}_lo": t["lo"], f"d_{m}_hi": t["hi"], f"p_{m}": t["p_permutation"],
                        f"mdd_{m}": t["mdd"]})  # fmt: skip
        out.append(row)
    return pd.DataFrame(out)


def unrecorded(spec: SeedSpec, results_dir: str | Path) -> list[str]:
    return [r for r in spec.runs if not (Path(results_dir) / r).is_dir()]


def spread(table: pd.DataFrame, column: str) -> tuple[float, float]:
    """Mean and sample sd of `column` over the runs (sd NaN with fewer than three: one degree of freedom says no
    more than the two values do)."""
    values = table[column].astype(float)
    return float(values.mean()), (float(values.std(ddof=1)) if len(values) >= 3 else float("nan"))


def seed_markdown(spec: SeedSpec, results_dir: str | Path, link_base: Path) -> str:
    """The Markdown block: provenance line, the per-run table, and the spread over the runs."""
    results = Path(results_dir)
    table = seed_table(spec, results)
    sys_label, base_label = (row_label(results / spec.runs[0], s)[0] for s in (spec.system, spec.baseline))
    missing = unrecorded(spec, results)
    links = record_links(results, (r for r in spec.runs if r not in missing), link_base)
    m = spec.metrics[0]
    rows = []
    for r in table.to_dict("records"):
        row = {"Record": f"`{r['run']}`", "seed": r["seed"], "n (req. / users)": f"{r['requests']} / {r['users']}"}
        for met in spec.metrics:
            row[f"{sys_label} {met}"] = fmt_ci(r[f"system_{met}"], r[f"system_{met}_lo"], r[f"system_{met}_hi"], DIGITS)
        row[f"{base_label} {m}"] = fmt_ci(r[f"baseline_{m}"], r[f"baseline_{m}_lo"], r[f"baseline_{m}_hi"], DIGITS)
        row[f"Δ {m} [CI]"] = signed_ci(r[f"d_{m}"], r[f"d_{m}_lo"], r[f"d_{m}_hi"])
        row["p (perm.)"] = fmt(r[f"p_{m}"], ".4f")  # never 0: (1 + count) / (1 + draws)
        row["MDD"] = fmt(r[f"mdd_{m}"], f".{DIGITS}f")
        row["Malformed"] = fmt(r["malformed_rate"], ".0%")
        rows.append(row)
    mean, sd = spread(table, f"system_{m}")
    d_mean, d_sd = spread(table, f"d_{m}")
    if math.isnan(sd):
        over = f"Only {len(table)} run{'s' * (len(table) > 1)} so far: the spread over splits (sd) needs at least three."
    else:
        over = (f"Over the {len(table)} splits: {sys_label} {m} mean {mean:.{DIGITS}f}, sd {sd:.{DIGITS}f}; Δ mean "
                f"{d_mean:+.{DIGITS}f}, sd {d_sd:.{DIGITS}f}. An ablation's Δ on one split is read against this sd.")
    lines = [
        f"{spec.title} Rendered by `mrrec readme --table results/tables/{spec.name}.yaml` from the per-request rows of "
        f"{links}: each run on its own split (its own test requests, so runs are not paired with each other); mean "
        f"[95% CI, users resampled]; Δ = `{spec.system}` minus `{spec.baseline}` within the run, paired by request "
        "(user-cluster bootstrap CI, sign-flip p unadjusted), MDD at 80% power.",
        "",
        to_markdown(pd.DataFrame(rows)).rstrip("\n"),
        "",
        over + (f" Not recorded yet: {', '.join(f'`{r}`' for r in missing)}." if missing else ""),
    ]
    return "\n".join(lines) + "\n"
