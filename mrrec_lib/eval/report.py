"""From per-query results to the paper's tables: summaries with CIs, per category, paired tests, Table 1.

The evaluation sets here are a few hundred queries, so every mean carries a 95%
bootstrap interval and every "MR.Rec beats X" claim a paired test over the same
queries. Missing systems stay in every table as "not run" with their reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mrrec_lib.config import Config
from mrrec_lib.eval.evaluate import EvalResult
from mrrec_lib.eval.systems import memory_label, method_label
from mrrec_lib.runs import RunPaths, atomic_write_text, write_parquet

NOT_RUN = "not run"
PAIRED_METRICS = ("N@100", "R@100")


def efficiency_metric(ks: list[int]) -> str:
    """The recall behind the token-efficiency column: R@100 as in the paper, else the largest cutoff."""
    return "R@100" if 100 in ks else f"R@{max(ks)}"


def _ci(values: np.ndarray, cfg: Config, seed_offset: int = 0) -> tuple[float, float, float]:
    from mrrec_lib.eval.stats import bootstrap_ci

    if len(values) == 0:
        return (math.nan, math.nan, math.nan)
    mean, lo, hi = bootstrap_ci(np.asarray(values, dtype=float), cfg.bootstrap_samples, cfg.seed + seed_offset)
    return float(mean), float(lo), float(hi)


def _metric_cells(df: pd.DataFrame, metrics: list[str], cfg: Config) -> dict[str, float]:
    cells: dict[str, float] = {}
    for i, m in enumerate(metrics):
        cells[m], cells[f"{m}_lo"], cells[f"{m}_hi"] = _ci(df[m].to_numpy(), cfg, i)
    return cells


def system_summary(result: EvalResult) -> pd.DataFrame:
    """One row per requested system: metrics with CIs, n, malformed rate, memory tokens, efficiency, latency."""
    cfg = result.cfg
    metrics = result.metric_names()
    eff = efficiency_metric(cfg.eval_ks)
    rows = []
    for spec in result.systems:
        row = {"system": spec.name, "method": method_label(spec, cfg), "memory": memory_label(spec, cfg)}
        if spec.name in result.missing:
            rows.append({**row, "status": NOT_RUN, "reason": result.missing[spec.name], "n": 0})
            continue
        df = result.system_rows(spec.name)
        tokens = float(df["memory_tokens"].mean())
        row.update(status="ok", reason="", n=len(df), **_metric_cells(df, metrics, cfg))
        row.update(
            malformed_rate=float(df["malformed"].mean()),
            tool_calls=float(df["tool_calls"].mean()),
            memory_tokens=tokens,
            memory_tokens_global=float(df["memory_tokens_global"].mean()),
            efficiency=row[eff] / (tokens / 100) if tokens > 0 else math.nan,
            latency_s=float(df["latency_s"].mean()),
        )
        rows.append(row)
    return pd.DataFrame(rows)


def category_summary(result: EvalResult) -> pd.DataFrame:
    """Long table: system, category, n, metric, mean, lo, hi (bootstrap within the category)."""
    cfg = result.cfg
    rows = []
    for (system, category), df in result.per_query.groupby(["system", "category"], sort=True):
        for i, m in enumerate(result.metric_names()):
            mean, lo, hi = _ci(df[m].to_numpy(), cfg, i)
            rows.append(
                {"system": system, "category": category, "n": len(df), "metric": m, "mean": mean, "lo": lo, "hi": hi}
            )
    return pd.DataFrame(rows, columns=["system", "category", "n", "metric", "mean", "lo", "hi"])


def top_categories(result: EvalResult, n: int | None = None) -> list[str]:
    """The categories with the most evaluated queries (ties by name), `cfg.eval_table_categories` of them."""
    counts = result.queries["category"].value_counts()
    ordered = sorted(counts.index, key=lambda c: (-counts[c], c))
    return ordered[: result.cfg.eval_table_categories if n is None else n]


def paired_tests(
    result: EvalResult, reference: str | None = None, metrics: tuple[str, ...] = PAIRED_METRICS
) -> pd.DataFrame:
    """Reference system (default `cfg.eval_reference_system`) vs every other evaluated system, paired by query.

    diff = mean(reference - other); paired bootstrap CI and p-value, and a sign-flip permutation p-value.
    Empty when the reference did not run.
    """
    from mrrec_lib.eval.stats import paired_test

    cfg = result.cfg
    reference = reference or cfg.eval_reference_system
    cols = ["reference", "system", "metric", "n", "diff", "lo", "hi", "p_bootstrap", "p_permutation"]
    if reference not in result.evaluated:
        return pd.DataFrame(columns=cols)
    ref = result.system_rows(reference).set_index("qid")
    rows = []
    for other in result.evaluated:
        if other == reference:
            continue
        oth = result.system_rows(other).set_index("qid")
        common = ref.index.intersection(oth.index)
        for i, m in enumerate(metrics):
            t = paired_test(
                ref.loc[common, m].to_numpy(float),
                oth.loc[common, m].to_numpy(float),
                cfg.bootstrap_samples,
                cfg.seed + i,
            )
            rows.append(
                {"reference": reference, "system": other, "metric": m, "n": len(common), **{k: t[k] for k in cols[4:]}}
            )
    return pd.DataFrame(rows, columns=cols)


def _fmt_ci(mean: float, lo: float, hi: float, digits: int = 3) -> str:
    if mean != mean:
        return ""
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _fmt(x: float, spec: str) -> str:
    return "" if x is None or x != x else format(x, spec)


def table1(summary: pd.DataFrame, categories: pd.DataFrame, top: list[str], cfg: Config) -> pd.DataFrame:
    """Table 1 as display strings: system x memory rows; overall metrics with CIs, top categories, cost columns."""
    metrics = [f"R@{k}" for k in cfg.eval_ks] + [f"N@{k}" for k in cfg.eval_ks]
    eff = efficiency_metric(cfg.eval_ks)
    cat_metrics = [m for m in PAIRED_METRICS[::-1] if m in metrics] or metrics[:1]
    counts = (
        categories.drop_duplicates("category").set_index("category")["n"] if len(categories) else pd.Series(dtype=int)
    )
    cat_index = categories.set_index(["system", "category", "metric"]) if len(categories) else None
    rows = []
    for r in summary.to_dict("records"):
        row = {"System": r["method"], "Memory": r["memory"]}
        ok = r["status"] == "ok"
        row["n"] = str(r["n"]) if ok else NOT_RUN
        for m in metrics:
            row[m] = _fmt_ci(r[m], r[f"{m}_lo"], r[f"{m}_hi"]) if ok else NOT_RUN
        for c in top:
            for m in cat_metrics:
                key = (r["system"], c, m)
                val = (
                    cat_index.loc[key, "mean"] if ok and cat_index is not None and key in cat_index.index else math.nan
                )
                row[f"{c} {m}"] = _fmt(val, ".3f") if ok else NOT_RUN
        row["Mem. tokens"] = _fmt(r.get("memory_tokens", math.nan), ".1f") if ok else NOT_RUN
        row[f"{eff} / 100 mem. tok."] = _fmt(r.get("efficiency", math.nan), ".3f") if ok else NOT_RUN
        row["Latency (s/query)"] = _fmt(r.get("latency_s", math.nan), ".2f") if ok else NOT_RUN
        row["Malformed"] = _fmt(r.get("malformed_rate", math.nan), ".0%") if ok else NOT_RUN
        rows.append(row)
    out = pd.DataFrame(rows)
    rename = {f"{c} {m}": f"{c} (n={counts.get(c, 0)}) {m}" for c in top for m in cat_metrics}
    return out.rename(columns=rename)


def to_markdown(df: pd.DataFrame, footnotes: list[str] | None = None) -> str:
    """A GitHub pipe table (pandas' own needs the optional `tabulate` package)."""

    def cell(x: object) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    if footnotes:
        lines += [""] + footnotes
    return "\n".join(lines) + "\n"


def missing_footnotes(summary: pd.DataFrame) -> list[str]:
    return [f"- `{r.system}` not run: {r.reason}" for r in summary.itertuples() if r.status != "ok"]


def tests_table(tests: pd.DataFrame) -> pd.DataFrame:
    """Paired tests for display: difference with CI and both p-values."""
    if tests.empty:
        return pd.DataFrame(
            columns=["Reference", "vs", "Metric", "n", "Diff [95% CI]", "p (bootstrap)", "p (permutation)"]
        )
    return pd.DataFrame(
        {
            "Reference": tests["reference"],
            "vs": tests["system"],
            "Metric": tests["metric"],
            "n": tests["n"],
            "Diff [95% CI]": [
                _fmt_ci(d, lo, hi, 4) for d, lo, hi in zip(tests["diff"], tests["lo"], tests["hi"], strict=True)
            ],
            "p (bootstrap)": tests["p_bootstrap"].map(lambda p: _fmt(p, ".3f")),
            "p (permutation)": tests["p_permutation"].map(lambda p: _fmt(p, ".3f")),
        }
    )


def eval_metrics(result: EvalResult, summary: pd.DataFrame, categories: pd.DataFrame, tests: pd.DataFrame) -> dict:
    """The stage-05 record (metrics/05_eval.json): per system metrics with CIs or the reason it did not run.

    Scalar cost columns sit inside `metrics` too, so the ablation summary (`ablate.flatten_metrics`) picks them up.
    """
    cfg = result.cfg
    metrics = result.metric_names()
    systems = {}
    for r in summary.to_dict("records"):
        entry = {"status": r["status"], "method": r["method"], "memory": r["memory"], "n": int(r["n"])}
        if r["status"] != "ok":
            systems[r["system"]] = {**entry, "reason": r["reason"], "metrics": {}}
            continue
        m = {k: {"mean": r[k], "lo": r[f"{k}_lo"], "hi": r[f"{k}_hi"]} for k in metrics}
        for k in ("memory_tokens", "memory_tokens_global", "efficiency", "latency_s", "malformed_rate", "tool_calls"):
            m[k] = r[k]
        cats = categories[categories["system"] == r["system"]]
        per_cat = {
            c: {
                "n": int(g["n"].iloc[0]),
                **{row.metric: {"mean": row.mean, "lo": row.lo, "hi": row.hi} for row in g.itertuples()},
            }
            for c, g in cats.groupby("category")
        }
        systems[r["system"]] = {**entry, "metrics": m, "per_category": per_cat}
    return _finite(
        {
            "split": cfg.eval_split,
            "n_queries": len(result.queries),
            "ks": list(cfg.eval_ks),
            "bootstrap_samples": cfg.bootstrap_samples,
            "reference": cfg.eval_reference_system,
            "systems": systems,
            "paired_tests": tests.to_dict("records"),
        }
    )


def _finite(obj):
    """NaN/inf become null: `json.dumps` would write bare NaN, which strict JSON readers reject."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


@dataclass
class EvalReport:
    """Every table stage 05 shows and records, built once from an `EvalResult`."""

    summary: pd.DataFrame
    categories: pd.DataFrame
    tests: pd.DataFrame
    top: list[str]
    table: pd.DataFrame
    metrics: dict


def build_report(result: EvalResult) -> EvalReport:
    summary = system_summary(result)
    categories = category_summary(result)
    tests = paired_tests(result)
    top = top_categories(result)
    table = table1(summary, categories, top, result.cfg)
    return EvalReport(summary, categories, tests, top, table, eval_metrics(result, summary, categories, tests))


def write_report(report: EvalReport, result: EvalResult, paths: RunPaths) -> dict[str, Path]:
    """Table 1 (numeric CSV + display Markdown), per-category and test tables, per-query parquet.

    The metrics JSON is left to the notebook's final cell (`report.metrics`), by the notebook convention.
    """
    m = paths.metrics
    out = {
        "table1_csv": m / "05_table1.csv",
        "table1_md": m / "05_table1.md",
        "categories_csv": m / "05_categories.csv",
        "tests_csv": m / "05_paired_tests.csv",
        "per_query": m / "05_per_query.parquet",
    }
    atomic_write_text(out["table1_csv"], report.summary.to_csv(index=False))
    md = to_markdown(report.table, missing_footnotes(report.summary))
    atomic_write_text(out["table1_md"], md + "\n" + to_markdown(tests_table(report.tests)))
    atomic_write_text(out["categories_csv"], report.categories.to_csv(index=False))
    atomic_write_text(out["tests_csv"], report.tests.to_csv(index=False))
    write_parquet(result.per_query, out["per_query"])
    return out


def findings(rep: EvalReport, alpha: float = 0.05) -> list[str]:
    """Plain-language lines for the notebook narrative, computed from this run (never written by hand)."""
    ok = rep.summary[rep.summary["status"] == "ok"]
    lines = []
    for m in [x for x in PAIRED_METRICS if x in ok.columns]:
        best = ok.loc[ok[m].idxmax()] if len(ok) else None
        if best is not None:
            lines.append(f"Highest {m}: {best['system']} ({_fmt_ci(best[m], best[f'{m}_lo'], best[f'{m}_hi'])}).")
    for t in rep.tests.itertuples():
        verdict = "significant" if t.p_permutation < alpha else "not significant"
        lines.append(
            f"{t.reference} − {t.system} on {t.metric}: {t.diff:+.4f} [{t.lo:+.4f}, {t.hi:+.4f}], "
            f"permutation p = {t.p_permutation:.3f} ({verdict} at {alpha}, n = {t.n}, unadjusted)."
        )
    lines += [f"Not run: {r.system} ({r.reason})" for r in rep.summary.itertuples() if r.status != "ok"]
    return lines
