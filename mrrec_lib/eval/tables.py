"""Display versions of stage 05's numeric tables: "mean [lo, hi]" cells, "not run" rows, Markdown."""

from __future__ import annotations

import math

import pandas as pd

from mrrec_lib.config import Config
from mrrec_lib.eval.protocol import PAIRED_METRICS

NOT_RUN = "not run"
EMPTY = "—"  # a system that ran, but on no request of this subset


def efficiency_metric(ks: list[int]) -> str:
    """The recall behind the token-efficiency column: R@100 as in the paper, else the largest cutoff."""
    return "R@100" if 100 in ks else f"R@{max(ks)}"


def fmt_ci(mean: float, lo: float, hi: float, digits: int = 3) -> str:
    if mean != mean:
        return ""
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def fmt(x: float | None, spec: str) -> str:
    return "" if x is None or x != x else format(x, spec)


def _n_cell(r: dict) -> str:
    return f"{int(r['n'])} / {int(r['n_users'])}"


def table1(summary: pd.DataFrame, categories: pd.DataFrame, top: list[str], cfg: Config) -> pd.DataFrame:
    """Table 1: label x memory rows; metrics with user-level CIs, top categories, cost columns."""
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
        row["n (req. / users)"] = _n_cell(r) if ok else NOT_RUN
        for m in metrics:
            row[m] = fmt_ci(r[m], r[f"{m}_lo"], r[f"{m}_hi"]) if ok else NOT_RUN
        for c in top:
            for m in cat_metrics:
                key = (r["system"], c, m)
                val = (
                    cat_index.loc[key, "mean"] if ok and cat_index is not None and key in cat_index.index else math.nan
                )
                row[f"{c} {m}"] = fmt(val, ".3f") if ok else NOT_RUN
        row["Mem. tokens"] = fmt(r.get("memory_tokens", math.nan), ".1f") if ok else NOT_RUN
        row[f"{eff} / 100 mem. tok."] = fmt(r.get("efficiency", math.nan), ".3f") if ok else NOT_RUN
        row["Latency (s/query)"] = fmt(r.get("latency_s", math.nan), ".2f") if ok else NOT_RUN
        row["Malformed"] = fmt(r.get("malformed_rate", math.nan), ".0%") if ok else NOT_RUN
        rows.append(row)
    out = pd.DataFrame(rows)
    rename = {f"{c} {m}": f"{c} (n={counts.get(c, 0)}) {m}" for c in top for m in cat_metrics}
    return out.rename(columns=rename)


def compact_table(summary: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """System, n (requests / users) and "mean [lo, hi]" per metric: the other settings and the subsets."""
    rows = []
    for r in summary.to_dict("records"):
        row = {"System": r["method"]}
        if r["status"] != "ok":
            rows.append({**row, "n (req. / users)": NOT_RUN, **dict.fromkeys(metrics, NOT_RUN)})
            continue
        row["n (req. / users)"] = _n_cell(r)
        for m in metrics:
            row[m] = fmt_ci(r[m], r[f"{m}_lo"], r[f"{m}_hi"]) if r["n"] else EMPTY
        rows.append(row)
    return pd.DataFrame(rows, columns=["System", "n (req. / users)", *metrics])


def tests_table(tests: pd.DataFrame) -> pd.DataFrame:
    """Paired tests for display: difference with its user-level CI, raw and Holm-adjusted p, MDD, n."""
    cols = ["Reference", "vs", "Metric", "n (req. / users)", "Diff [95% CI]", "p (perm.)", "p (Holm)", "MDD (80%)"]
    if tests.empty:
        return pd.DataFrame(columns=cols)
    return pd.DataFrame(
        {
            "Reference": tests["reference"],
            "vs": tests["system"],
            "Metric": tests["metric"],
            "n (req. / users)": [f"{n} / {u}" for n, u in zip(tests["n"], tests["n_users"], strict=True)],
            "Diff [95% CI]": [
                fmt_ci(d, lo, hi, 4) for d, lo, hi in zip(tests["diff"], tests["lo"], tests["hi"], strict=True)
            ],
            "p (perm.)": tests["p_permutation"].map(lambda p: fmt(p, ".3f")),
            "p (Holm)": tests["p_holm"].map(lambda p: fmt(p, ".3f")),
            "MDD (80%)": tests["mdd"].map(lambda x: fmt(x, ".4f")),
        },
        columns=cols,
    )


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
