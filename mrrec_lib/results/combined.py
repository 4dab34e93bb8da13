"""One table from rows of several records that scored the same requests on the same pool.

Why: on 2 CPU cores every LLM row is its own run (an SFT policy, a GRPO probe, Rec-R1, the zero-shot rows), each
recorded on the same seeded test requests. A reader wants them side by side, with each row's CI and its paired
difference from one reference row, computed from the committed per-request rows and never typed. The table spec is
a small YAML file (rows as RUN:SYSTEM, a reference, subsets), so the README block can be re-rendered at any time.

Every row is restricted to the requests all rows share; each row's mean and CI are computed as stage 05 does
(`recompute.metric_cells`, the row's own record config for seed and draws), and each paired test is
`compare.compare_records` against the reference, which refuses rows from another pool, request set or headline
rule. Holm's correction runs over the table's rows (one family per metric and subset).

A row listed under `replicates` retrains the reference's own configuration with another seed (`grpo_seed: 1`). Its
difference from the reference is not an ablation's effect but one draw of the run-to-run training noise that the
user-bootstrap CI of every other row leaves out, so it is shown beside the rows, kept out of the Holm family, and
the rendered block says which rows' differences are within it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from mrrec_lib.config import FIELDS, changed_keys
from mrrec_lib.eval.stats import holm
from mrrec_lib.eval.systems import kept_start_note
from mrrec_lib.eval.tables import fmt, fmt_ci, to_markdown
from mrrec_lib.results.compare import SUBSETS, compare_records, select_subset
from mrrec_lib.results.layout import read_config, read_eval_metrics, read_per_query
from mrrec_lib.results.recompute import headline_column, metric_cells
from mrrec_lib.stages import IGNORED_KEYS


@dataclass(frozen=True)
class TableSpec:
    """What a combined table shows: `rows` and `reference` as (record name, system), metrics and subsets."""

    name: str
    title: str
    rows: list[tuple[str, str]]
    reference: tuple[str, str]
    metrics: list[str]
    subsets: list[str]
    setting_keys: list[str] = field(default_factory=list)  # config keys shown where a row's record differs from the reference's
    replicates: list[tuple[str, str]] = field(default_factory=list)  # reruns of the reference with another seed


DIGITS = 3  # the decimals the tables print: a Δ, its CI and "within run-to-run noise" are all judged at this precision
REPLICATE_KEYS = ("grpo_seed",)  # the only keys a replicate may change: another seed on the same split, memory and SFT


def run_system(spec: str, where: str) -> tuple[str, str]:
    """A spec's RUN:SYSTEM string as (record name, system)."""
    run, sep, system = str(spec).partition(":")
    if not sep or not run or not system:
        raise ValueError(f"{where}: expected RUN:SYSTEM, got {spec!r}")
    return run, system


def changed_beyond(ref_cfg: Any, cfg: Any, allowed: tuple[str, ...]) -> list[str]:
    """The config keys (run-naming keys ignored) in which `cfg` differs from `ref_cfg`, other than `allowed`: what a
    replicate must not change, or it would pass an ablation off as noise."""
    keys = [k for k in FIELDS if k not in IGNORED_KEYS]
    return sorted(set(changed_keys(ref_cfg, cfg, keys)) - set(allowed))


def inside_spread(diffs: pd.Series, spread: float) -> pd.Series:
    """Which differences are no larger than a replicate spread, compared at the DIGITS decimals the tables print: a
    row shown with the same |Δ| as the widest replicate (0.0374 vs 0.0369, both "0.037") is inside it, as read."""
    return diffs.abs().round(DIGITS) <= round(spread, DIGITS)


def _kind(data: dict) -> str:
    """A loaded table spec's `kind`: "combined" (this module, the default), "seeds" (`results.seed_table`) or
    "pairs" (`results.pairs_table`)."""
    return str(data.get("kind", "combined"))


def spec_kind(path: str | Path) -> str:
    """The `kind` of the table spec at `path` (see `_kind`)."""
    return _kind(yaml.safe_load(Path(path).read_text()) or {})


def load_spec(path: Path, kind: str, required: tuple[str, ...]) -> dict:
    """A table spec's YAML, refused with its path named when missing, of another `kind` or lacking a `required` key."""
    if not path.exists():
        raise FileNotFoundError(f"table spec not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if _kind(data) != kind:
        raise ValueError(f"{path}: kind {_kind(data)!r} is not a {kind} table")
    missing = [k for k in required if k not in data]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}")
    return data


def read_spec(path: str | Path) -> TableSpec:
    """A table spec YAML: `title`, `rows` (RUN:SYSTEM list), `reference` (one of them), `metrics`, `subsets`,
    `setting_keys` (config keys shown where a row's record differs from the reference's), `replicates` (rows that
    rerun the reference with another seed)."""
    path = Path(path)
    data = load_spec(path, "combined", ("title", "rows", "reference"))
    rows = [run_system(r, str(path)) for r in data["rows"]]
    reference = run_system(data["reference"], str(path))
    if reference not in rows:
        raise ValueError(f"{path}: reference {data['reference']!r} is not one of the rows")
    subsets = list(data.get("subsets", ["all"]))
    unknown = [s for s in subsets if s not in SUBSETS]
    if unknown:
        raise ValueError(f"{path}: unknown subset(s) {unknown}; choose from {sorted(SUBSETS)}")
    keys = list(data.get("setting_keys", []))
    unknown_keys = [k for k in keys if k not in FIELDS]
    if unknown_keys:
        raise ValueError(f"{path}: setting_keys {unknown_keys} are not config keys")
    metrics = list(data.get("metrics", ["N@100", "R@100"]))
    replicates = [run_system(r, str(path)) for r in data.get("replicates", [])]
    stray = [f"{r}:{s}" for r, s in replicates if (r, s) not in rows or (r, s) == reference or s != reference[1]]
    if stray:
        raise ValueError(f"{path}: replicates {stray} must be rows of the reference's system, other than the reference")
    return TableSpec(path.stem, str(data["title"]), rows, reference, metrics, subsets, keys, replicates)


def _setting(cfg: Any, ref_cfg: Any, keys: list[str]) -> str:
    """The `keys` whose value in a row's record differs from the reference record's, as key=value."""
    return ", ".join(f"{k}={new}" for k, (_, new) in changed_keys(ref_cfg, cfg, keys).items()) or "—"


def row_label(record: Path, system: str) -> tuple[str, str]:
    """Stage 05's method label and memory kind of a system (the zero-shot rows differ only in memory)."""
    meta = read_eval_metrics(record).get("systems", {}).get(system, {})
    return str(meta.get("method") or system), str(meta.get("memory") or "")


def combined_table(spec: TableSpec, results_dir: str | Path, subset: str = "all") -> tuple[pd.DataFrame, dict[str, Any]]:
    """One row per spec row on the requests every row shares (within `subset`): mean [CI] per metric, the
    malformed share and tool calls, and the paired difference from the reference with its CI, Holm p and MDD."""
    results = Path(results_dir)
    per_row, qids = [], None
    for run, system in spec.rows:
        record = results / run
        rows = read_per_query(record)
        mine = rows[rows["system"] == system].set_index("qid")
        if mine.empty:
            raise KeyError(f"{record}: no per-request rows for system {system!r}")
        per_row.append((record, system, mine))
        qids = mine.index if qids is None else qids.intersection(mine.index)
    ref_record = results / spec.reference[0]
    shared = select_subset(per_row[spec.rows.index(spec.reference)][2], qids, subset, ref_record)
    ref_cfg = read_config(ref_record)
    out = []
    for record, system, mine in per_row:
        cfg = read_config(record)
        df = mine.loc[shared].reset_index()
        cells = metric_cells(df, headline_column(df, cfg), cfg)
        label, memory = row_label(record, system)
        row: dict[str, Any] = {"row": f"{record.name}:{system}", "label": label, "memory": memory}
        row["kept_start"] = kept_start_note(label)
        if spec.setting_keys:
            row["setting"] = _setting(cfg, ref_cfg, spec.setting_keys)
        row["replicate"] = (record.name, system) in spec.replicates
        if row["replicate"]:
            _check_replicate(cfg, ref_cfg, spec, record)
        for m in spec.metrics:
            row.update({m: cells[m], f"{m}_lo": cells[f"{m}_lo"], f"{m}_hi": cells[f"{m}_hi"]})
        row["malformed_rate"] = float(df["malformed"].mean()) if "malformed" in df else float("nan")
        row["tool_calls"] = float(df["tool_calls"].mean()) if "tool_calls" in df else float("nan")
        if (record.name, system) != spec.reference:
            result = compare_records(ref_record, spec.reference[1], record, system, tuple(spec.metrics), qids=shared)
            for t in result["tests"]:
                m = t["metric"]
                row.update({f"d_{m}": t["diff"], f"d_{m}_lo": t["lo"], f"d_{m}_hi": t["hi"]})
                row.update({f"p_{m}": t["p_permutation"], f"mdd_{m}": t["mdd"]})
        out.append(row)
    table = pd.DataFrame(out)
    for m in spec.metrics:
        tested = table[f"p_{m}"].notna() & ~table["replicate"] if f"p_{m}" in table else pd.Series(False, index=table.index)
        table[f"holm_{m}"] = float("nan")
        if tested.any():
            table.loc[tested, f"holm_{m}"] = holm(table.loc[tested, f"p_{m}"].tolist())
    users = per_row[0][2].loc[shared, "user_id"].nunique()
    return table, {"subset": subset, "requests": len(shared), "users": int(users)}


def _check_replicate(cfg: Any, ref_cfg: Any, spec: TableSpec, record: Path) -> None:
    """A replicate that changed more than a seed would pass an ablation off as noise."""
    moved = set(changed_keys(ref_cfg, cfg, [*spec.setting_keys, *REPLICATE_KEYS])) - set(REPLICATE_KEYS)
    if moved:
        raise ValueError(f"{record}: listed as a replicate of {spec.reference[0]} but its config also changes {sorted(moved)}")


def run_to_run(table: pd.DataFrame, metric: str) -> float:
    """The largest |reference minus replicate| on `metric` (NaN without replicates): one retraining's spread."""
    rep = table[table["replicate"]]
    return float(rep[f"d_{metric}"].abs().max()) if len(rep) else float("nan")


def seed_spread(table: pd.DataFrame, metric: str, reference: str) -> tuple[float, float, int]:
    """Mean and standard deviation of `metric` over the reference and its replicates, and how many runs that is.

    The sd is the spread of one retraining's score; with a single replicate (two runs, one degree of freedom) it says
    no more than |Δ| does, so mean and sd are NaN until there are two replicates.
    """
    scores = table.loc[table["replicate"] | (table["row"] == reference), metric]
    if len(scores) < 3:
        return float("nan"), float("nan"), len(scores)
    return float(scores.mean()), float(scores.std(ddof=1)), len(scores)


def _compared(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The rows compared with the reference that are not replicates: ablations and other systems."""
    return table[table[f"d_{metric}"].notna() & ~table["replicate"]]


def within_noise(table: pd.DataFrame, metric: str) -> list[str]:
    """The other rows (ablations, other systems) whose |difference| from the reference is no larger than the
    replicates' spread (`inside_spread`)."""
    spread = run_to_run(table, metric)
    if math.isnan(spread):
        return []
    rows = _compared(table, metric)
    return rows.loc[inside_spread(rows[f"d_{metric}"], spread), "row"].tolist()


def record_links(results: Path, runs: Iterable[str], link_base: Path) -> str:
    """Markdown links to the records `runs`, relative to the document at `link_base`."""
    return ", ".join(f"[`{run}`]({Path(os.path.relpath(results / run, link_base)).as_posix()}/)" for run in runs)


def table_markdown(spec: TableSpec, results_dir: str | Path, link_base: Path) -> str:
    """The Markdown block: provenance line, then one table per subset (reference row first in bold)."""
    results = Path(results_dir)
    links = record_links(results, dict.fromkeys(r for r, _ in spec.rows), link_base)
    ref = f"{spec.reference[0]}:{spec.reference[1]}"
    lines = [
        f"{spec.title} Rendered by `mrrec readme --table results/tables/{spec.name}.yaml` from the per-request rows of "
        f"{links}: mean [95% CI, users resampled]; Δ = reference (`{ref}`) minus the row, paired by request "
        "(user-cluster bootstrap CI), sign-flip p Holm-adjusted over the rows, MDD at 80% power.",
    ]
    for subset in spec.subsets:
        table, info = combined_table(spec, results, subset)
        what = "all shared requests" if subset == "all" else f"subset `{subset}`"
        lines += ["", f"{what}: {info['requests']} requests from {info['users']} users", ""]
        lines.append(to_markdown(_display(table, spec)).rstrip("\n"))
        if spec.replicates:
            lines += ["", _noise_line(table, spec.metrics[0], ref)]
    return "\n".join(lines) + "\n"


def _noise_line(table: pd.DataFrame, m: str, reference: str) -> str:
    reps = table[table["replicate"]]
    each = "; ".join(f"`{r['row']}` {signed_ci(r[f'd_{m}'], r[f'd_{m}_lo'], r[f'd_{m}_hi'])}" for r in reps.to_dict("records"))
    inside = within_noise(table, m)
    mean, sd, runs = seed_spread(table, m, reference)
    spread = "" if math.isnan(sd) else (
        f" Over the {runs} runs of this configuration {m} has mean {mean:.{DIGITS}f} and sd {sd:.{DIGITS}f}: two single runs differ "
        f"by about {math.sqrt(2) * sd:.{DIGITS}f} (sd) from training alone, on top of each Δ's CI.")
    return (f"Run-to-run: reference minus replicate (the same configuration retrained with another seed), {m}: {each}. "
            f"{len(inside)} of {len(_compared(table, m))} other rows differ from the "
            f"reference by no more than the largest of these (|Δ| ≤ {run_to_run(table, m):.{DIGITS}f})"
            + (f": {', '.join(f'`{r}`' for r in inside)}." if inside else ".") + spread)


def _display(table: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    rows = []
    for r in table.to_dict("records"):
        reference = r["row"] == f"{spec.reference[0]}:{spec.reference[1]}"
        row = {
            "System": f"**{r['label']}** (reference)" if reference else r["label"] + (" — replicate" if r["replicate"] else ""),
            "Memory": r["memory"],
            "Record": f"`{r['row']}`",
        }
        if spec.setting_keys:
            row["Changed vs reference"] = r["setting"]
        for m in spec.metrics:
            row[m] = fmt_ci(r[m], r[f"{m}_lo"], r[f"{m}_hi"], DIGITS)
        m = spec.metrics[0]
        row[f"Δ {m} [CI]"] = "—" if reference else signed_ci(r[f"d_{m}"], r[f"d_{m}_lo"], r[f"d_{m}_hi"])
        row["Holm p"] = "—" if reference or r["replicate"] else fmt(r[f"holm_{m}"], ".3f")
        row["MDD"] = "—" if reference else fmt(r[f"mdd_{m}"], f".{DIGITS}f")
        row["Malformed"] = fmt(r["malformed_rate"], ".0%")
        rows.append(row)
    return pd.DataFrame(rows)


def signed_ci(d: float, lo: float, hi: float) -> str:
    return f"{d:+.{DIGITS}f} [{lo:+.{DIGITS}f}, {hi:+.{DIGITS}f}]"
