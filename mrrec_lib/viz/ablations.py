"""Ablation tables and figures (the paper's Fig. 3, 5, 6 and Table 2) from the ablation summary.

`mrrec ablate` writes one summary row per (ablation, evaluated system). Rows are
assigned to a figure by *what the ablation changed* — the difference between its
run's config and the base run's, ignoring names and evaluation bookkeeping — not
by its file name, so a user's own delta (say `memory_top_k: 8`) lands on the
top-k curve by itself. Every panel keeps the rows the paper's figure has even
when they were not run, as a gap plus a note naming the delta file that fills it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import yaml

from mrrec_lib import stages

BASE = "base"
PRIMARY = "mrrec"
SFT = "mrrec_sft"
RECR1 = "recr1"
ALL_LEVELS = ("record", "pattern", "profile")
RETRIEVER_KEYS = frozenset({"memory_retriever", "item_retriever", "encoder_model", "encoder_query_instruction"})
# Keys that say how a run was evaluated or reported, not what was trained or measured.
_BOOKKEEPING = frozenset({"eval_systems", "eval_reference_system", "eval_table_categories", "eval_recr1_run", "eval_recr1_params", "eval_models_run",
                          "case_study_n", "bootstrap_samples"})

# (label, config change vs the base, system, the shipped delta that produces it)
COMPONENTS = (
    ("MR.Rec (full)", {}, PRIMARY, "the base run"),
    ("w/o global memory", {"global_memory": False}, PRIMARY, "no_global_memory.yaml"),
    ("w/o local memory", {"local_memory": False}, PRIMARY, "no_local_memory.yaml"),
    ("w/o RL (SFT only)", {}, SFT, "the base run's mrrec_sft system"),
    ("w/o any memory (Rec-R1)", {"policy_uses_memory": False}, RECR1, "recr1.yaml"),
)
LEVELS = (
    ("none (w/o local memory)", {"local_memory": False}, "no_local_memory.yaml"),
    ("behaviour records only", {"memory_levels": ["record"]}, "local_records_only.yaml"),
    ("preference patterns only", {"memory_levels": ["pattern"]}, "local_patterns_only.yaml"),
    ("user profile only", {"memory_levels": ["profile"]}, "local_profile_only.yaml"),
    ("all three levels (full)", {}, "the base run"),
)
EXPECTED_TOPK = (1, 2, 3, 4, 5)
# Run-to-run panels by the one key their replicas change: a data seed (new split) or a GRPO seed (RL alone).
SEED_PANELS = {"seeds": "seed", "grpo_seeds": "grpo_seed"}


@dataclass
class Panel:
    """The rows of one figure/table (absent ones kept, with NaN metrics and a status) and what is missing."""

    table: pd.DataFrame
    missing: list[str] = field(default_factory=list)

    def ok(self) -> pd.DataFrame:
        return self.table[self.table["status"] == "ok"] if len(self.table) else self.table


# ---- reading the summary --------------------------------------------------------------------------


def load_summary(path: Path) -> pd.DataFrame | None:
    """The ablation summary CSV, or None when `mrrec ablate` has not written it yet."""
    if not path.exists():
        return None
    df = pd.read_csv(path)
    missing = {"ablation", "system"} - set(df.columns)
    if missing and len(df):
        raise KeyError(f"{path}: ablation summary lacks column(s) {sorted(missing)}")
    return df


def summary_from_run(run_dir: Path) -> pd.DataFrame:
    """This run's own metrics in the summary's shape (ablation "base"): the fallback without a batch."""
    from mrrec_lib.ablate import flatten_metrics

    base = {"ablation": BASE, "run": run_dir.name, "run_status": "ok"}
    rows = [{**base, **r} for r in flatten_metrics(run_dir)]
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=[*base, "system", "status"])


def _ignored(key: str) -> bool:
    return key in stages.IGNORED_KEYS or key in _BOOKKEEPING or stages.first_stage(key) in ("06", "07")


def config_delta(base: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """The keys whose values differ, minus names, paths and evaluation bookkeeping."""
    return {k: v for k, v in other.items() if not _ignored(k) and base.get(k) != v}


def _read_yaml(path: Path) -> dict[str, Any] | None:
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else None


def _run_of(summary: pd.DataFrame, ablation: str) -> str | None:
    runs = summary.loc[summary["ablation"] == ablation, "run"].dropna() if "run" in summary else pd.Series([], dtype=str)
    return str(runs.iloc[0]) if len(runs) else None


def base_settings(summary: pd.DataFrame, outputs: Path, fallback: dict[str, Any]) -> dict[str, Any]:
    """The base run's config as recorded in its folder, else `fallback` (the notebook's own config)."""
    run = _run_of(summary, BASE)
    found = _read_yaml(outputs / run / "config.yaml") if run else None
    return found if found is not None else dict(fallback)


def ablation_deltas(
    summary: pd.DataFrame, outputs: Path, base: dict[str, Any], deltas_dir: Path
) -> dict[str, dict | None]:
    """What each ablation changed: its run's config vs the base's, else its delta file `deltas_dir/<name>.yaml`.

    None when neither exists (e.g. a run that failed before writing its config, from a delta kept elsewhere).
    """
    out: dict[str, dict | None] = {}
    for name in dict.fromkeys(summary["ablation"].astype(str)) if len(summary) else []:
        if name == BASE:
            out[name] = {}
            continue
        run = _run_of(summary, name)
        cfg = _read_yaml(outputs / run / "config.yaml") if run else None
        if cfg is None:
            delta = _read_yaml(deltas_dir / f"{name}.yaml")
            cfg = None if delta is None else {**base, **delta}
        out[name] = None if cfg is None else config_delta(base, cfg)
    return out


def batch_costs(summary_file: Path, outputs: Path) -> pd.DataFrame:
    """Wall time each ablation spent on the stages it ran itself (not those reused from a donor run).

    Read from the batch's `<summary>.runs.json` and each run's `stages.json`; empty before a batch has run.
    """
    from mrrec_lib.runs import RunPaths, read_json

    runs_file = summary_file.with_suffix(".runs.json")
    rows = []
    for r in read_json(runs_file) if runs_file.exists() else []:
        if not r.get("run"):
            continue
        records = stages.read_records(RunPaths(outputs / r["run"]))
        own = {s: rec["seconds"] for s, rec in records.items() if s not in (r.get("shared_stages") or [])}
        rows.append({"ablation": r["ablation"], "stages run": ",".join(sorted(own)) or "—",
                     "minutes": round(sum(own.values()) / 60, 1)})
    return pd.DataFrame(rows, columns=["ablation", "stages run", "minutes"])


# ---- assembling panels ----------------------------------------------------------------------------


def metric_columns(summary: pd.DataFrame, metrics: list[str]) -> list[str]:
    return [c for m in metrics for c in (m, f"{m}_lo", f"{m}_hi") if c in summary.columns]


def _lookup(summary: pd.DataFrame, ablation: str | None, system: str) -> tuple[dict | None, str]:
    """(row, "ok") or (None, why it is absent)."""
    if ablation is None:
        return None, "not run yet"
    rows = summary[summary["ablation"] == ablation]
    if rows.empty:
        return None, "not run yet"
    if "run_status" in rows and (rows["run_status"] == "failed").all():
        err = rows["error"].iloc[0] if "error" in rows else ""
        return None, f"run failed ({err})" if isinstance(err, str) and err else "run failed"
    rows = rows[rows["system"] == system] if "system" in rows else rows.iloc[0:0]
    if rows.empty:
        return None, f"ablation '{ablation}' ran but did not evaluate system '{system}'"
    row = rows.iloc[0].to_dict()
    status = row.get("status", "ok")
    if status != "ok":
        return None, f"system '{system}' {status}"
    return row, "ok"


def _find(deltas: dict[str, dict | None], want: dict[str, Any]) -> str | None:
    """The first ablation whose change is exactly `want` ({} is the base)."""
    return next((name for name, d in deltas.items() if d == want), None)


def _panel_row(label: str, summary: pd.DataFrame, ablation: str | None, system: str, cols: list[str], **extra) -> dict:
    row, why = _lookup(summary, ablation, system)
    base = {"label": label, "ablation": ablation, "system": system, "status": why, **extra}
    return {**base, **{c: (row or {}).get(c, np.nan) for c in cols}}


def _missing(rows: list[dict], hints: dict[str, str]) -> list[str]:
    out = []
    for r in rows:
        if r["status"] != "ok":
            hint = hints.get(r["label"], "")
            out.append(f"{r['label']}: {r['status']}" + (f" (from {hint})" if hint and r["status"] == "not run yet" else ""))
    return out


def component_panel(summary: pd.DataFrame, deltas: dict[str, dict | None], metrics: list[str]) -> Panel:
    """Fig. 3: full vs without global / local memory / RL (and without any memory, Rec-R1)."""
    cols = metric_columns(summary, metrics)
    rows = [_panel_row(label, summary, _find(deltas, want), system, cols) for label, want, system, _ in COMPONENTS]
    return Panel(pd.DataFrame(rows), _missing(rows, {c[0]: c[3] for c in COMPONENTS}))


def levels_panel(summary: pd.DataFrame, deltas: dict[str, dict | None], metrics: list[str], base: dict[str, Any]) -> Panel:
    """Table 2: which local-memory levels the policy may retrieve."""
    cols = metric_columns(summary, metrics)
    rows = []
    for label, want, _ in LEVELS:
        if not want and tuple(base.get("memory_levels", ALL_LEVELS)) != ALL_LEVELS:
            label = f"{'+'.join(base['memory_levels'])} (the base run)"
        rows.append(_panel_row(label, summary, _find(deltas, want), PRIMARY, cols))
    for name, d in deltas.items():  # user-defined level combinations beyond the paper's rows
        if set(d or {}) == {"memory_levels"} and d not in [w for _, w, _ in LEVELS]:
            rows.append(_panel_row("+".join(d["memory_levels"]), summary, name, PRIMARY, cols))
    return Panel(pd.DataFrame(rows), _missing(rows, {lab: hint for lab, _, hint in LEVELS}))


def topk_panel(summary: pd.DataFrame, deltas: dict[str, dict | None], metrics: list[str], base: dict[str, Any]) -> Panel:
    """Fig. 6: memory top-k; the base run sits at its own k."""
    cols = metric_columns(summary, metrics)
    base_k = int(base.get("memory_top_k", 3))
    runs = {base_k: BASE} | {int(d["memory_top_k"]): n for n, d in deltas.items() if set(d or {}) == {"memory_top_k"}}
    ks = sorted(set(EXPECTED_TOPK) | set(runs))
    rows = [_panel_row(f"top-{k}", summary, runs.get(k), PRIMARY, cols, k=k) for k in ks]
    hints = {f"top-{k}": "the base run" if k == base_k else f"topk_{k}.yaml" for k in ks}
    return Panel(pd.DataFrame(rows), _missing(rows, hints))


def retriever_label(settings: dict[str, Any]) -> str:
    """BM25, the dense encoder's short name, or a mixed memory/items description."""
    def one(kind: str) -> str:
        return "BM25" if kind == "bm25" else Path(str(settings.get("encoder_model", "dense"))).name

    mem, items = one(settings.get("memory_retriever", "dense")), one(settings.get("item_retriever", "dense"))
    return mem if mem == items else f"memory {mem} / items {items}"


def retriever_panel(summary: pd.DataFrame, deltas: dict[str, dict | None], metrics: list[str], base: dict[str, Any]) -> Panel:
    """Fig. 5: the retriever behind memory and item search (the base's encoder vs BM25 vs any other encoder run)."""
    cols = metric_columns(summary, metrics)
    found = {retriever_label(base): BASE}
    for name, d in deltas.items():
        if d and set(d) <= RETRIEVER_KEYS:
            found.setdefault(retriever_label({**base, **d}), name)
    if "BM25" not in found:
        found["BM25"] = None
    rows = [_panel_row(label, summary, abl, PRIMARY, cols) for label, abl in found.items()]
    return Panel(pd.DataFrame(rows), _missing(rows, {"BM25": "retriever_bm25.yaml", retriever_label(base): "the base run"}))


def seeds_panel(
    summary: pd.DataFrame, deltas: dict[str, dict | None], metrics: list[str], base: dict[str, Any], key: str = "seed"
) -> Panel:
    """Run-to-run spread: the base and every delta that changed only `key`, plus their mean and standard deviation.

    `seed` redraws the split and retrains every stage (the spread of the whole pipeline); `grpo_seed` reruns RL alone
    on the same split, memory and SFT policy (the spread of one GRPO run, paired with the base on the same requests).
    The base's `grpo_seed` is None when it follows `seed`.
    """
    cols = metric_columns(summary, metrics)
    own = base.get(key) if base.get(key) is not None else base.get("seed", 0)
    runs = {int(own): BASE} | {int(d[key]): n for n, d in deltas.items() if set(d or {}) == {key}}
    rows = [_panel_row(f"{key} {s}", summary, abl, PRIMARY, cols, seed=s) for s, abl in sorted(runs.items())]
    table = pd.DataFrame(rows)
    ok = table[table["status"] == "ok"]
    if len(ok) >= 2:
        stats = {"label": f"mean ± sd over {len(ok)} {key}s", "status": "ok"}
        for m in metrics:
            if m in ok:
                stats[m], stats[f"{m}_sd"] = float(ok[m].mean()), float(ok[m].std(ddof=1))
        table = pd.concat([table, pd.DataFrame([stats])], ignore_index=True)
    missing = _missing(rows, {f"{key} {s}": "the base run" if abl == BASE else f"{abl}.yaml" for s, abl in runs.items()})
    if len(runs) < 2:
        missing.append(f"no {key} replicas yet (from {key}_1.yaml, {key}_2.yaml)")
    return Panel(table, missing)


def first_rerun_stage(base: dict[str, Any], delta: dict[str, Any] | None) -> str | None:
    """The first stage whose config hash the change alters (what `mrrec ablate` reruns from); None if none or unknown."""
    from mrrec_lib.config import FIELDS, Config

    if delta is None:
        return None
    known = {k: v for k, v in base.items() if k in FIELDS}
    a, b = Config(**known), Config(**{**known, **delta})
    return next((s for s in ("01", "02", "03", "04", "05") if stages.stage_hash(a, s) != stages.stage_hash(b, s)), None)


def describe(delta: dict[str, Any] | None) -> str:
    if delta is None:
        return "(unknown: no run config or delta file)"
    return ", ".join(f"{k}={v}" for k, v in delta.items()) or "(base)"


def overview_panel(summary: pd.DataFrame, deltas: dict[str, dict | None], metrics: list[str]) -> Panel:
    """Every (ablation, system) row of the batch with its change and the difference to the base's same system."""
    cols = metric_columns(summary, metrics)
    rows, missing = [], []
    for name, d in deltas.items():
        sub = summary[summary["ablation"] == name]
        for r in sub.to_dict("records"):
            if r.get("run_status") == "failed" or not isinstance(r.get("system"), str):
                missing.append(f"{name}: {r.get('error') or 'run failed'}")
                continue
            if r.get("status", "ok") != "ok":
                missing.append(f"{name}/{r['system']}: {r.get('status')}")
                continue
            ref, _ = _lookup(summary, BASE, r["system"]) if name != BASE else (None, "")
            row = {"ablation": name, "change": describe(d), "system": r["system"], "status": "ok",
                   **{c: r.get(c, np.nan) for c in cols}}
            for m in metrics:
                row[f"Δ{m}"] = (r.get(m, np.nan) - ref[m]) if ref and m in ref and m in r else np.nan
            rows.append(row)
    return Panel(pd.DataFrame(rows, columns=None if rows else ["ablation", "change", "system", "status"]), missing)


def _per_query(outputs: Path, run: str, system: str) -> pd.DataFrame | None:
    f = outputs / run / "metrics" / "05_per_query.parquet"
    if not f.exists():
        return None
    df = pd.read_parquet(f)
    return df[df["system"] == system].assign(qid=lambda d: d["qid"].astype(str)).set_index("qid")


def paired_vs_full(
    panels: dict[str, Panel],
    summary: pd.DataFrame,
    outputs: Path,
    metrics: list[str],
    n_samples: int = 2000,
    seed: int = 0,
    test: Callable | None = None,
) -> pd.DataFrame:
    """Each measured panel row minus the full model, paired by query, with users as the resampled unit.

    A user's requests share that user's history, memory and tastes, so they are not independent: the test
    (`eval.stats.paired_cluster_test`) resamples and sign-flips whole users, the full model's `user_id` of each
    paired request. Every row is one more comparison against the full model, so `p_holm` is the permutation
    p-value Holm-adjusted across all rows (as stage 05 adjusts its Table 1 tests), and `mdd` is the difference
    the test detects with 80% power: a non-significant Δ smaller than that says little either way.
    Only runs built from the same data as the base (equal stage-01 hash: same test queries) are paired; a seed
    run has another split, so its row says so instead. A GRPO-seed replica is paired but kept out of the Holm
    family (`replicate`): it measures noise, it does not test a setting.
    `test(a, b, clusters, n_samples, seed) -> {diff, lo, hi, p_bootstrap, p_permutation}`.
    """
    from mrrec_lib.eval.stats import holm, min_detectable_difference

    if test is None:
        from mrrec_lib.eval.stats import paired_cluster_test as test
    cols = ["label", "ablation", "system", "metric", "n", "n_users", "diff", "lo", "hi", "p_bootstrap",
            "p_permutation", "p_holm", "mdd", "replicate", "note"]  # fmt: skip
    base_run = _run_of(summary, BASE)
    full = _per_query(outputs, base_run, PRIMARY) if base_run else None
    if full is None:
        return pd.DataFrame(columns=cols)
    from mrrec_lib.runs import RunPaths

    data_hash = stages.read_records(RunPaths(outputs / base_run)).get("01", {}).get("hash")
    rows, seen = [], set()
    for name, p in panels.items():
        for r in p.ok().to_dict("records"):
            key = (r.get("ablation"), r.get("system"))
            if key in seen or key == (BASE, PRIMARY) or not isinstance(key[0], str):
                continue
            seen.add(key)
            run = _run_of(summary, key[0])
            other = _per_query(outputs, run, key[1]) if run else None
            base = {"label": r["label"], "ablation": key[0], "system": key[1], "replicate": SEED_PANELS.get(name) == "grpo_seed"}
            if other is None:
                rows.append({**base, "note": "no per-query results"})
                continue
            if stages.read_records(RunPaths(outputs / run)).get("01", {}).get("hash") != data_hash:
                rows.append({**base, "note": "other data/split than the base: not paired"})
                continue
            common = full.index.intersection(other.index)
            users = full.loc[common, "user_id"].astype(str).to_numpy()
            for i, m in enumerate(metrics):
                a, b = other.loc[common, m].to_numpy(float), full.loc[common, m].to_numpy(float)
                t = test(a, b, users, n_samples, seed + i)
                rows.append({**base, "metric": m, "n": len(common), "n_users": len(set(users)),
                             **{k: t[k] for k in ("diff", "lo", "hi", "p_bootstrap", "p_permutation")},
                             "mdd": min_detectable_difference(a - b, users), "note": ""})  # fmt: skip
    out = pd.DataFrame(rows, columns=cols)
    tested = ~out["replicate"].astype(bool)
    out["p_holm"] = np.nan
    if tested.any():
        out.loc[tested, "p_holm"] = holm(out.loc[tested, "p_permutation"].to_numpy(float))
    return out


def format_table(panel: Panel, metrics: list[str], digits: int = 3) -> pd.DataFrame:
    """Display version: "mean [lo, hi]" per metric, "—" with the reason for rows that are not there."""
    out = []
    for r in panel.table.to_dict("records"):
        row = {"setting": r["label"]}
        for m in metrics:
            v = r.get(m, np.nan)
            if r["status"] != "ok" or pd.isna(v):
                row[m] = "—"
            elif f"{m}_sd" in r and pd.notna(r.get(f"{m}_sd")):
                row[m] = f"{v:.{digits}f} ± {r[f'{m}_sd']:.{digits}f}"
            elif pd.notna(r.get(f"{m}_lo", np.nan)):
                row[m] = f"{v:.{digits}f} [{r[f'{m}_lo']:.{digits}f}, {r[f'{m}_hi']:.{digits}f}]"
            else:
                row[m] = f"{v:.{digits}f}"
        row["status"] = r["status"]
        out.append(row)
    return pd.DataFrame(out)


def json_records(df: pd.DataFrame) -> list[dict]:
    """Rows for a metrics JSON with NaN as null (json.dumps would write the invalid token NaN)."""
    return df.astype(object).where(df.notna(), None).to_dict("records")


def records(panel: Panel, metrics: list[str]) -> list[dict]:
    """The panel's numbers for the metrics JSON."""
    keep = ["label", "ablation", "system", "status", "k", "seed", *metric_columns(panel.table, metrics),
            *[f"{m}_sd" for m in metrics]]
    return json_records(panel.table[[c for c in keep if c in panel.table.columns]])


def findings(panels: dict[str, Panel], metric: str, paired: pd.DataFrame | None = None) -> list[str]:
    """One sentence per measured variant: its `metric` against the full model's, with the paired test when there is one."""
    comp = panels["component"].table
    full = comp[(comp["label"] == COMPONENTS[0][0]) & (comp["status"] == "ok")]
    if full.empty or metric not in comp:
        return [f"the full model's {metric} is not available: nothing to compare against"]
    f = full.iloc[0]

    def ci(r) -> str:
        lo, hi = r.get(f"{metric}_lo", np.nan), r.get(f"{metric}_hi", np.nan)
        return f" [{lo:.3f}, {hi:.3f}]" if pd.notna(lo) and pd.notna(hi) else ""

    out = [f"MR.Rec (full): {metric} {f[metric]:.3f}{ci(f)}"]
    for name in ("component", "levels", "topk", "retriever"):
        t = panels[name].table
        for r in t[t["status"] == "ok"].to_dict("records") if metric in t else []:
            if r.get("ablation") == BASE and r.get("system") == PRIMARY:
                continue
            line = f"{name} / {r['label']}: {metric} {r[metric]:.3f}{ci(r)} ({r[metric] - f[metric]:+.3f} vs full"
            out.append(line + _paired_text(paired, r.get("ablation"), r.get("system"), metric) + ")")
    for name in SEED_PANELS:
        seeds = panels[name].table if name in panels else pd.DataFrame()
        sd = seeds[seeds["label"].astype(str).str.startswith("mean ±")] if len(seeds) else seeds
        if len(sd) and f"{metric}_sd" in sd:
            out.append(f"{name}: {metric} {sd[metric].iloc[0]:.3f} ± {sd[f'{metric}_sd'].iloc[0]:.3f} ({sd['label'].iloc[0]})")
    return out


def _paired_text(paired: pd.DataFrame | None, ablation: str | None, system: str | None, metric: str) -> str:
    if paired is None or paired.empty:
        return ""
    hit = paired[(paired["ablation"] == ablation) & (paired["system"] == system)]
    with_metric = hit[hit["metric"] == metric]
    if len(with_metric):
        t = with_metric.iloc[0]
        return f"; paired Δ {t['diff']:+.3f} [{t['lo']:+.3f}, {t['hi']:+.3f}], p={t['p_bootstrap']:.3f}, n={int(t['n'])}"
    return f"; {hit['note'].iloc[0]}" if len(hit) and hit["note"].iloc[0] else ""


# ---- figures --------------------------------------------------------------------------------------


def _note(fig: plt.Figure, missing: list[str]) -> None:
    if missing:
        text = "missing: " + "; ".join(missing)
        fig.text(0.01, -0.02, text, fontsize=7, color="gray", wrap=True, va="top")


def plot_bars(panel: Panel, metrics: list[str], title: str) -> plt.Figure:
    """Grouped bars, one group per setting, one bar per metric, 95% CI whiskers; absent settings marked."""
    t = panel.table
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * max(1, len(t))), 4.2))
    x = np.arange(len(t))
    width = 0.8 / max(1, len(metrics))
    colors = plt.get_cmap("tab10")
    for i, m in enumerate(metrics):
        vals = t[m].to_numpy(float) if m in t else np.full(len(t), np.nan)
        lo = vals - (t[f"{m}_lo"].to_numpy(float) if f"{m}_lo" in t else vals)
        hi = (t[f"{m}_hi"].to_numpy(float) if f"{m}_hi" in t else vals) - vals
        ax.bar(x + (i - (len(metrics) - 1) / 2) * width, vals, width, yerr=[lo, hi], capsize=3, label=m, color=colors(i))
    top = ax.get_ylim()[1]
    for xi, status in zip(x, t["status"] if len(t) else [], strict=True):
        if status != "ok":
            ax.text(xi, top * 0.02, "not available", rotation=90, ha="center", va="bottom", fontsize=8, color="gray")
    ax.set_xticks(x, t["label"] if len(t) else [], rotation=15, ha="right")
    ax.set_ylabel("mean over queries (95% bootstrap CI)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    _note(fig, panel.missing)
    fig.tight_layout()
    return fig


def plot_topk(panel: Panel, ks: list[int]) -> plt.Figure:
    """Two panels (Recall@k, nDCG@k over memory top-k), one line per cutoff, CI whiskers; gaps where not run."""
    t = panel.table
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colors = plt.get_cmap("tab10")
    ok = panel.ok()
    for ax, prefix, name in ((axes[0], "R", "Recall"), (axes[1], "N", "nDCG")):
        for i, k in enumerate(ks):
            m = f"{prefix}@{k}"
            if m not in ok or ok.empty:
                continue
            y = ok[m].to_numpy(float)
            err = [y - ok[f"{m}_lo"].to_numpy(float), ok[f"{m}_hi"].to_numpy(float) - y] if f"{m}_lo" in ok else None
            ax.errorbar(ok["k"], y, yerr=err, marker="o", capsize=3, label=m, color=colors(i))
        ax.set_xticks(t["k"] if len(t) else [])
        ax.set_xlabel("memory entries per tool call (top-k)")
        ax.set_title(f"{name} vs memory top-k")
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no top-k run available", ha="center", va="center", transform=ax.transAxes, color="gray")
    _note(fig, panel.missing)
    fig.tight_layout()
    return fig


def plot_contribution(summary: dict, judge: dict | None = None) -> plt.Figure:
    """MPC and MRC pooled over retrieved entries, overall and per memory level, with the LLM judge's when it ran."""
    levels = summary.get("per_level", {})
    groups = {f"all\n(n={summary.get('n_entries', 0)})": {"mpc": summary.get("mpc_micro"), "mrc": summary.get("mrc_micro")}}
    order = [lvl for lvl in ALL_LEVELS if lvl in levels] + [lvl for lvl in levels if lvl not in ALL_LEVELS]
    groups |= {f"{lvl}\n(n={levels[lvl]['n_entries']})": levels[lvl] for lvl in order}
    if judge:
        groups["LLM judge"] = {"mpc": judge.get("mpc_judge"), "mrc": judge.get("mrc_judge")}
    fig, ax = plt.subplots(figsize=(max(5.0, 1.5 * len(groups)), 3.8))
    x = np.arange(len(groups))
    for i, (key, name) in enumerate((("mpc", "MPC: entry in profile"), ("mrc", "MRC: entry matches target"))):
        vals = [np.nan if g.get(key) is None else g[key] for g in groups.values()]
        ax.bar(x + (i - 0.5) * 0.38, np.nan_to_num(vals), 0.38, label=name)
    ax.set_xticks(x, list(groups))
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of retrieved entries")
    ax.set_title(f"Memory contribution ({summary.get('n_queries_with_memory', 0)} queries retrieved memory)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
