"""From per-query results to the paper's tables: summaries with user-level CIs, paired tests, subsets, the record.

Requests of one user are correlated (same history, memory and tastes), so every
interval and test resamples users, not requests (`eval.stats`), and every table
states both counts. Each table's paired tests (the reference row minus every
other row, on `PAIRED_METRICS`) form one family: their permutation p-values are
Holm-adjusted together, and each test prints the difference it could detect with
80% power (MDD), so "not significant" can be read as "too few requests" when the
MDD is larger than any plausible gain. Missing systems stay in every table as
"not run" with their reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mrrec_lib.eval.evaluate import EvalResult
from mrrec_lib.eval.metrics import metrics_from_ranks
from mrrec_lib.eval.protocol import PAIRED_METRICS, Setting, Subset, headline, settings, subsets
from mrrec_lib.eval.stats import cluster_bootstrap_ci, holm, paired_cluster_test
from mrrec_lib.eval.systems import memory_label, method_label
from mrrec_lib.eval.tables import (
    NOT_RUN,
    compact_table,
    efficiency_metric,
    fmt_ci,
    missing_footnotes,
    table1,
    tests_table,
    to_markdown,
)
from mrrec_lib.runs import RunPaths, atomic_write_text, write_parquet

TEST_COLUMNS = [
    "reference", "system", "metric", "n", "n_users", "diff", "lo", "hi",
    "p_bootstrap", "p_permutation", "p_holm", "se", "mdd",
]  # fmt: skip
COST_COLUMNS = ("memory_tokens", "memory_tokens_global", "efficiency", "latency_s", "malformed_rate", "tool_calls")


def _rows(result: EvalResult, system: str, qids: frozenset[str] | None = None) -> pd.DataFrame:
    df = result.system_rows(system)
    return df if qids is None else df[df["qid"].isin(qids)]


def setting_metrics(df: pd.DataFrame, setting: Setting, ks: list[int]) -> dict[str, np.ndarray]:
    """Per-request R@k / N@k of `df`'s rows under `setting` (its rank column)."""
    return metrics_from_ranks(df[setting.column].to_numpy(dtype=float), ks)


def _metric_cells(df: pd.DataFrame, setting: Setting, result: EvalResult) -> dict[str, float]:
    cfg = result.cfg
    users = df["user_id"].astype(str).to_numpy()
    cells: dict[str, float] = {}
    for i, (m, v) in enumerate(setting_metrics(df, setting, cfg.eval_ks).items()):
        cells[m], cells[f"{m}_lo"], cells[f"{m}_hi"] = cluster_bootstrap_ci(
            v, users, cfg.bootstrap_samples, cfg.seed + i
        )
    return cells


def setting_summary(
    result: EvalResult, setting: Setting | None = None, qids: frozenset[str] | None = None
) -> pd.DataFrame:
    """One row per requested system: label, memory, status, n requests / users, metrics with user-level CIs."""
    cfg = result.cfg
    setting = setting or headline(cfg)
    rows = []
    for spec in result.systems:
        row = {
            "system": spec.name,
            "method": result.labels.get(spec.name) or method_label(spec, cfg),
            "memory": memory_label(spec, cfg),
            "kind": spec.kind,
        }
        if spec.name in result.missing:
            rows.append({**row, "status": NOT_RUN, "reason": result.missing[spec.name], "n": 0, "n_users": 0})
            continue
        df = _rows(result, spec.name, qids)
        row.update(status="ok", reason="", n=len(df), n_users=int(df["user_id"].nunique()))
        rows.append({**row, **(_metric_cells(df, setting, result) if len(df) else {})})
    return pd.DataFrame(rows)


def system_summary(result: EvalResult) -> pd.DataFrame:
    """The headline summary over all requests plus cost columns: malformed rate, memory tokens, efficiency, latency."""
    summary = setting_summary(result)
    eff = efficiency_metric(result.cfg.eval_ks)
    costs = []
    for r in summary.to_dict("records"):
        if r["status"] != "ok":
            costs.append({})
            continue
        df = result.system_rows(r["system"])
        tokens = float(df["memory_tokens"].mean())
        costs.append(
            {
                "malformed_rate": float(df["malformed"].mean()),
                "tool_calls": float(df["tool_calls"].mean()),
                "memory_tokens": tokens,
                "memory_tokens_global": float(df["memory_tokens_global"].mean()),
                "efficiency": r[eff] / (tokens / 100) if tokens > 0 else math.nan,
                "latency_s": float(df["latency_s"].mean()),
            }
        )
    return pd.concat([summary, pd.DataFrame(costs, index=summary.index)], axis=1)


def group_summary(result: EvalResult, groups: Mapping[str, str], column: str = "group") -> pd.DataFrame:
    """Long table under the headline setting: system, <column>, n, n_users, metric, mean, lo, hi, per group of qids."""
    setting = headline(result.cfg)
    cols = ["system", column, "n", "n_users", "metric", "mean", "lo", "hi"]
    pq = result.per_query.assign(_group=result.per_query["qid"].map(groups))
    rows = []
    for (system, group), df in pq.dropna(subset=["_group"]).groupby(["system", "_group"], sort=True):
        cells = _metric_cells(df, setting, result)
        for m in result.metric_names():
            rows.append(
                {"system": system, column: group, "n": len(df), "n_users": int(df["user_id"].nunique()), "metric": m,
                 "mean": cells[m], "lo": cells[f"{m}_lo"], "hi": cells[f"{m}_hi"]}
            )  # fmt: skip
    return pd.DataFrame(rows, columns=cols)


def category_summary(result: EvalResult) -> pd.DataFrame:
    """Per category (headline setting), users resampled within the category."""
    q = result.queries
    return group_summary(result, dict(zip(q["qid"].astype(str), q["category"].astype(str), strict=True)), "category")


def top_categories(result: EvalResult, n: int | None = None) -> list[str]:
    """The categories with the most evaluated queries (ties by name), `cfg.eval_table_categories` of them."""
    counts = result.queries["category"].value_counts()
    ordered = sorted(counts.index, key=lambda c: (-counts[c], c))
    return ordered[: result.cfg.eval_table_categories if n is None else n]


def paired_tests(
    result: EvalResult,
    setting: Setting | None = None,
    qids: frozenset[str] | None = None,
    reference: str | None = None,
    metrics: tuple[str, ...] = PAIRED_METRICS,
) -> pd.DataFrame:
    """Reference (default `cfg.eval_reference_system`) minus every other evaluated system, paired by request.

    Users are the resampling unit (cluster bootstrap CI, cluster sign-flip permutation p); `p_holm` adjusts the
    permutation p-values of all rows returned together (one table = one family); `mdd` is the difference
    detectable with 80% power at alpha 0.05. Empty when the reference did not run.
    """
    cfg = result.cfg
    setting = setting or headline(cfg)
    reference = reference or cfg.eval_reference_system
    if reference not in result.evaluated:
        return pd.DataFrame(columns=TEST_COLUMNS)
    ref = _rows(result, reference, qids).set_index("qid")
    rows = []
    for other in result.evaluated:
        if other == reference:
            continue
        oth = _rows(result, other, qids).set_index("qid")
        common = ref.index.intersection(oth.index)
        if len(common) == 0:
            continue
        a = setting_metrics(ref.loc[common], setting, cfg.eval_ks)
        b = setting_metrics(oth.loc[common], setting, cfg.eval_ks)
        users = ref.loc[common, "user_id"].astype(str).to_numpy()
        for i, m in enumerate(metrics):
            t = paired_cluster_test(a[m], b[m], users, cfg.bootstrap_samples, cfg.seed + i)
            rows.append({"reference": reference, "system": other, "metric": m, **t, "n_users": t["n_clusters"]})
    out = pd.DataFrame(rows, columns=TEST_COLUMNS)
    out["p_holm"] = holm(out["p_permutation"].to_numpy(float)) if len(out) else []
    return out


@dataclass
class Block:
    """One table of stage 05: a setting on a subset of requests, its summary and its family of paired tests."""

    key: str
    setting: Setting
    subset: Subset
    summary: pd.DataFrame
    tests: pd.DataFrame
    n: int
    n_users: int

    @property
    def title(self) -> str:
        return f"{self.subset.description}; {self.setting.label}"


def build_blocks(result: EvalResult, summary: pd.DataFrame, tests: pd.DataFrame) -> dict[str, Block]:
    """Every setting on all requests (the headline one is `summary`/`tests`), and every subset under the headline."""
    cfg = result.cfg
    parts = subsets(result.queries, result.covered_categories)
    everything = parts[0]
    users = result.queries.assign(qid=result.queries["qid"].astype(str)).set_index("qid")["user_id"]
    blocks: dict[str, Block] = {}

    def add(key: str, setting: Setting, subset: Subset, s: pd.DataFrame, t: pd.DataFrame) -> None:
        ids = sorted(subset.qids or [])
        blocks[key] = Block(key, setting, subset, s, t, len(ids), int(users.loc[ids].nunique()) if ids else 0)

    for setting in settings(cfg):
        if setting.headline:
            add(f"setting:{setting.key}", setting, everything, summary, tests)
        else:
            add(f"setting:{setting.key}", setting, everything, setting_summary(result, setting),
                paired_tests(result, setting))  # fmt: skip
    main = headline(cfg)
    for subset in parts[1:]:
        if subset.available:
            add(f"subset:{subset.name}", main, subset, setting_summary(result, main, subset.qids),
                paired_tests(result, main, subset.qids))  # fmt: skip
        else:
            add(f"subset:{subset.name}", main, subset, pd.DataFrame(), pd.DataFrame(columns=TEST_COLUMNS))
    return blocks


def _system_cells(summary: pd.DataFrame, metrics: list[str]) -> dict[str, dict]:
    out = {}
    for r in summary.to_dict("records"):
        if r["status"] != "ok":
            out[r["system"]] = {"status": r["status"], "n": 0, "n_users": 0, "metrics": {}}
            continue
        cells = {m: {"mean": r[m], "lo": r[f"{m}_lo"], "hi": r[f"{m}_hi"]} for m in metrics if m in r}
        out[r["system"]] = {"status": "ok", "n": int(r["n"]), "n_users": int(r["n_users"]), "metrics": cells}
    return out


def _block_record(block: Block, metrics: list[str], covered: list[str]) -> dict:
    rec = {
        "description": block.subset.description,
        "setting": block.setting.key,
        "setting_label": block.setting.label,
        "available": block.subset.available,
        "n_requests": block.n,
        "n_users": block.n_users,
    }
    if not block.subset.available:
        return {**rec, "reason": block.subset.reason}
    if block.subset.name in ("covered", "uncovered"):
        rec["covered_categories"] = covered
    return {**rec, "systems": _system_cells(block.summary, metrics), "paired_tests": block.tests.to_dict("records")}


def protocol_record(result: EvalResult) -> dict:
    """How every number of the record was made, stated once next to them."""
    cfg = result.cfg
    main = headline(cfg)
    return {
        "headline_setting": main.key,
        "headline_label": main.label,
        "malformed_rule": cfg.eval_malformed,
        "exclude_history": cfg.eval_exclude_history,
        "malformed_rule_scope": "every LLM row (zero-shot, trained policies, templates) follows the same rule",
        "history": "the user's interactions with timestamp < the query's target_timestamp, removed from the ranking",
        "ci": f"95% percentile bootstrap, users resampled with replacement ({cfg.bootstrap_samples} draws)",
        "paired_test": "reference minus row, paired by request; cluster bootstrap CI and p; cluster sign-flip "
        "permutation p",
        "multiple_comparisons": "Holm over the permutation p-values of one table's tests (systems x "
        f"{', '.join(PAIRED_METRICS)})",
        "mdd": "(z_0.975 + z_0.8) x user-clustered SE of the paired difference (80% power, alpha 0.05, two-sided)",
        "reference_rows": [s.name for s in result.systems if s.kind == "template"],
    }


def eval_metrics(
    result: EvalResult,
    summary: pd.DataFrame,
    categories: pd.DataFrame,
    tests: pd.DataFrame,
    blocks: dict[str, Block] | None = None,
) -> dict:
    """The stage-05 record (metrics/05_eval.json): headline per system (with cost scalars inside `metrics`, which
    the ablation summary `ablate.flatten_metrics` reads), per category, tests, every setting and subset."""
    cfg = result.cfg
    metrics = result.metric_names()
    systems = {}
    for r in summary.to_dict("records"):
        entry = {
            "status": r["status"], "method": r["method"], "memory": r["memory"], "kind": r["kind"],
            "reference_row": r["kind"] == "template", "n": int(r["n"]), "n_users": int(r["n_users"]),
        }  # fmt: skip
        if r["status"] != "ok":
            systems[r["system"]] = {**entry, "reason": r["reason"], "metrics": {}}
            continue
        m = {k: {"mean": r[k], "lo": r[f"{k}_lo"], "hi": r[f"{k}_hi"]} for k in metrics}
        m.update({k: r[k] for k in COST_COLUMNS})
        cats = categories[categories["system"] == r["system"]]
        per_cat = {
            c: {
                "n": int(g["n"].iloc[0]),
                "n_users": int(g["n_users"].iloc[0]),
                **{row.metric: {"mean": row.mean, "lo": row.lo, "hi": row.hi} for row in g.itertuples()},
            }
            for c, g in cats.groupby("category")
        }
        systems[r["system"]] = {**entry, "metrics": m, "per_category": per_cat}
    blocks = blocks or {}
    first = result.per_query.drop_duplicates("qid")
    record = {
        "split": cfg.eval_split,
        "n_queries": len(result.queries),
        "n_users": int(result.queries["user_id"].nunique()),
        "ks": list(cfg.eval_ks),
        "bootstrap_samples": cfg.bootstrap_samples,
        "reference": cfg.eval_reference_system,
        "protocol": protocol_record(result),
        "labels": dict(result.labels),
        "systems": systems,
        "paired_tests": tests.to_dict("records"),
        "settings": {
            b.setting.key: {**_block_record(b, metrics, result.covered_categories), "headline": b.setting.headline}
            for b in blocks.values()
            if b.key.startswith("setting:")
        },
        "subsets": {
            b.subset.name: _block_record(b, metrics, result.covered_categories)
            for b in blocks.values()
            if b.key.startswith("subset:")
        },
        "history": {
            "requests_with_history": int((first["n_history"] > 0).sum()) if "n_history" in first else 0,
            "mean_items": float(first["n_history"].mean()) if "n_history" in first and len(first) else None,
        },
    }
    return _finite(record)


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
    blocks: dict[str, Block]
    metrics: dict

    def block_tables(self, prefix: str) -> list[tuple[Block, pd.DataFrame]]:
        """(block, display table) of the settings ("setting:") or subsets ("subset:"), in order."""
        ks = self.metrics["ks"]
        metrics = [f"R@{k}" for k in ks] + [f"N@{k}" for k in ks]
        return [
            (b, compact_table(b.summary, metrics) if b.subset.available else pd.DataFrame())
            for b in self.blocks.values()
            if b.key.startswith(prefix)
        ]


def build_report(result: EvalResult) -> EvalReport:
    summary = system_summary(result)
    categories = category_summary(result)
    tests = paired_tests(result)
    top = top_categories(result)
    table = table1(summary, categories, top, result.cfg)
    blocks = build_blocks(result, summary, tests)
    return EvalReport(
        summary, categories, tests, top, table, blocks, eval_metrics(result, summary, categories, tests, blocks)
    )


def block_markdown(block: Block, table: pd.DataFrame) -> str:
    """One setting/subset: heading with its n, the compact table and its paired tests (or why it is absent)."""
    head = f"### {block.title} (n = {block.n} requests, {block.n_users} users)\n\n"
    if not block.subset.available:
        return head + f"Not available: {block.subset.reason}.\n"
    return head + to_markdown(table) + "\n" + to_markdown(tests_table(block.tests))


def report_markdown(rep: EvalReport) -> str:
    """Table 1 with its tests, then the other settings and the subsets, each with its own tests."""
    parts = [to_markdown(rep.table, missing_footnotes(rep.summary)), to_markdown(tests_table(rep.tests))]
    parts += [block_markdown(b, t) for b, t in rep.block_tables("setting:") if not b.setting.headline]
    parts += [block_markdown(b, t) for b, t in rep.block_tables("subset:")]
    return "\n".join(parts)


def write_report(report: EvalReport, result: EvalResult, paths: RunPaths) -> dict[str, Path]:
    """Table 1 (numeric CSV + Markdown with every block), per-category, block and test tables, per-query parquet.

    The metrics JSON is left to the notebook's final cell (`report.metrics`), by the notebook convention.
    """
    m = paths.metrics
    out = {
        "table1_csv": m / "05_table1.csv",
        "table1_md": m / "05_table1.md",
        "categories_csv": m / "05_categories.csv",
        "blocks_csv": m / "05_settings_subsets.csv",
        "tests_csv": m / "05_paired_tests.csv",
        "per_query": m / "05_per_query.parquet",
    }
    atomic_write_text(out["table1_csv"], report.summary.to_csv(index=False))
    atomic_write_text(out["table1_md"], report_markdown(report))
    atomic_write_text(out["categories_csv"], report.categories.to_csv(index=False))
    blocks = [b.summary.assign(block=b.key) for b in report.blocks.values() if len(b.summary)]
    atomic_write_text(out["blocks_csv"], pd.concat(blocks, ignore_index=True).to_csv(index=False) if blocks else "")
    tests = [b.tests.assign(block=b.key) for b in report.blocks.values() if len(b.tests)]
    atomic_write_text(out["tests_csv"], pd.concat(tests, ignore_index=True).to_csv(index=False) if tests else "")
    write_parquet(result.per_query, out["per_query"])
    return out


def findings(rep: EvalReport, alpha: float = 0.05) -> list[str]:
    """Plain-language lines for the notebook narrative, computed from this run (never written by hand)."""
    ok = rep.summary[rep.summary["status"] == "ok"]
    lines = []
    for m in [x for x in PAIRED_METRICS if x in ok.columns]:
        best = ok.loc[ok[m].idxmax()] if len(ok) and ok[m].notna().any() else None
        if best is not None:
            lines.append(f"Highest {m}: {best['method']} ({fmt_ci(best[m], best[f'{m}_lo'], best[f'{m}_hi'])}).")
    for t in rep.tests.itertuples():
        verdict = "significant" if t.p_holm < alpha else "not significant"
        lines.append(
            f"{t.reference} − {t.system} on {t.metric}: {t.diff:+.4f} [{t.lo:+.4f}, {t.hi:+.4f}], "
            f"permutation p = {t.p_permutation:.3f}, Holm p = {t.p_holm:.3f} ({verdict} at {alpha}); "
            f"MDD {t.mdd:.4f}; n = {t.n} requests / {t.n_users} users."
        )
    lines += [f"Not run: {r.system} ({r.reason})" for r in rep.summary.itertuples() if r.status != "ok"]
    return lines
