"""The committed ablation tables (results/tables/*.yaml) as forest plots and one-setting curves for notebook 06.

Why: the retrained study (`mrrec ablate`) needs far more 2-core CPU time than a session has, so what has been
measured are partial ablations recorded one run at a time in `results/` (a trained policy scored with a memory
component removed at test time; variants retrained up to the SFT stage). Notebook 06 shows them beside the batch
panels, recomputed from the committed per-request rows: each row's paired difference from its table's reference
with the user-level CI, the minimum detectable difference, and the malformed share, because at 135M removing a
component often changes how many answers parse, which moves the headline more than the component's content does.
A table counts as an ablation table when its spec declares `setting_keys` (its rows differ from the reference by a
config setting); the Table 1 specs compare systems and declare none. The paper's Fig. 6 (memory top-k) is such a
table read as a curve: the rows that changed one setting alone, placed at that setting's recorded value; its Fig. 5
(retriever) is read as bars: the policy rows that changed only the retriever, beside query-only retrieval with each.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from mrrec_lib.config import Config, changed_keys
from mrrec_lib.eval.systems import SYSTEMS
from mrrec_lib.results import pairs_table, seed_table
from mrrec_lib.results.combined import (
    TableSpec,
    combined_table,
    read_spec,
    run_to_run,
    seed_spread,
    spec_kind,
    within_noise,
)
from mrrec_lib.results.compare import ranked_by
from mrrec_lib.results.layout import read_config
from mrrec_lib.viz.ablations import RETRIEVER_KEYS, json_records, retriever_label


@dataclass(frozen=True)
class CommittedTable:
    """One ablation table recomputed from its records: the spec, the per-row table, and its request/user counts."""

    spec: TableSpec
    table: pd.DataFrame
    requests: int
    users: int

    @property
    def reference_row(self) -> str:
        return f"{self.spec.reference[0]}:{self.spec.reference[1]}"

    def ablated(self) -> pd.DataFrame:
        return self.table[self.table["row"] != self.reference_row]

    @property
    def reference_system(self) -> str:
        return self.spec.reference[1]

    def reference_malformed(self) -> float:
        return float(self.table.loc[self.table["row"] == self.reference_row, "malformed_rate"].iloc[0])


def spec_paths(results_dir: str | Path, kind: str) -> list[Path]:
    """The table specs of `kind` under `<results_dir>/tables/`, by file name."""
    folder = Path(results_dir) / "tables"
    if not folder.is_dir():
        raise FileNotFoundError(f"no table specs: {folder} does not exist (the committed results/ folder)")
    return [p for p in sorted(folder.glob("*.yaml")) if spec_kind(p) == kind]


def ablation_specs(results_dir: str | Path) -> list[TableSpec]:
    """The table specs under `<results_dir>/tables/` that declare `setting_keys`, by file name."""
    return [s for s in map(read_spec, spec_paths(results_dir, "combined")) if s.setting_keys]


def committed_seed_tables(results_dir: str | Path) -> dict[str, tuple[seed_table.SeedSpec, pd.DataFrame]]:
    """Every data-seed table (`kind: seeds` specs): each recorded replica against its own run's baseline."""
    specs = map(seed_table.read_seed_spec, spec_paths(results_dir, seed_table.KIND))
    return {s.name: (s, seed_table.seed_table(s, results_dir)) for s in specs}


def committed_pairs_tables(results_dir: str | Path) -> dict[str, tuple[pairs_table.PairsSpec, pd.DataFrame]]:
    """Every pairs table (`kind: pairs` specs, e.g. where both answers parsed): each recorded pair's `compare` test."""
    specs = map(pairs_table.read_pairs_spec, spec_paths(results_dir, pairs_table.KIND))
    return {s.name: (s, pairs_table.pairs_table(s, results_dir)) for s in specs}


def plot_pairs(spec: pairs_table.PairsSpec, table: pd.DataFrame) -> plt.Figure:
    """A pairs table as a forest: A minus B with its 95% user-cluster CI, each pair over its own MDD band, labelled
    with its n, since every pair stands on its own requests (a wide band says how little a small n can detect);
    replicates (A retrained with another seed) as orange diamonds, the noise the other pairs of that A are read against."""
    if table.empty:
        raise ValueError(f"pairs table {spec.name}: no pair recorded yet, nothing to plot")
    rows = table.reset_index(drop=True)
    y = np.arange(len(rows))[::-1]
    d, lo, hi, mdd = (rows[c].to_numpy(float) for c in ("diff", "lo", "hi", "mdd"))
    fig, ax = plt.subplots(figsize=(8.5, 1.2 + 0.55 * len(rows)))
    ax.barh(y, 2 * mdd, left=-mdd, height=0.5, color="0.88", label="±MDD (80% power)")
    ax.errorbar(d, y, xerr=[d - lo, hi - d], fmt="o", color="tab:blue", capsize=3, label="A minus B, 95% CI")
    replicate = rows["replicate"].to_numpy(bool)
    if replicate.any():
        ax.plot(d[replicate], y[replicate], "D", color="tab:orange", markersize=9, zorder=3,
                label="replicate: A with another seed")
    ax.axvline(0, color="0.3", lw=0.8)
    labels = [f"{r['a']}\n− {r['b']} (n={r['requests']}, {r['users']} users)" for r in rows.to_dict("records")]
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_title(", ".join(filter(None, (f"{spec.name}: {spec.metric}", pairs_table.narrowed_to(spec)))), fontsize=9,
                 pad=20)
    ax.set_xlabel(f"A minus B, {spec.metric} (positive: A ahead)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    fig.tight_layout()
    return fig


def committed_tables(results_dir: str | Path, subset: str = "all") -> dict[str, CommittedTable]:
    """Every ablation table recomputed from the per-request rows of its records, on the requests its rows share."""
    out = {}
    for spec in ablation_specs(results_dir):
        table, info = combined_table(spec, results_dir, subset)
        out[spec.name] = CommittedTable(spec, table, int(info["requests"]), int(info["users"]))
    return out


def row_label(row: dict, reference_malformed: float, reference_system: str) -> str:
    """What the row changed (its system when it changed no setting: another method on the reference's record; both
    when it changed a setting and is another system, e.g. the SFT policy of an ablated run), what its policy really
    is when GRPO kept its start (never drawn as an RL-trained row), and its malformed share beside the reference's
    (the format effect, made visible)."""
    what = row["setting"] if row["setting"] != "—" else row["label"]
    if what != row["label"] and row["row"].partition(":")[2] != reference_system:
        what += f"\n{row['label']}"
    if row["kept_start"] and what != row["label"]:
        what += f"\n{row['kept_start']}"
    return f"{what}\n({row['malformed_rate']:.0%} malformed vs {reference_malformed:.0%})"


def plot_forest(tables: dict[str, CommittedTable]) -> plt.Figure:
    """One panel per table: reference minus row on the table's headline metric, 95% user-cluster CI, and the
    row's MDD as a grey band (a difference inside it is not detectable at this n). A table with replicates (the
    reference retrained with another seed) marks them and draws ±their largest difference as dashed lines: a row
    inside them differs from the reference by no more than retraining it did."""
    if not tables:
        raise ValueError("no committed ablation tables to plot")
    heights = [max(1, len(t.ablated())) for t in tables.values()]
    fig, axes = plt.subplots(len(tables), 1, figsize=(8.5, 1.2 + 0.75 * sum(heights)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, (name, t) in zip(axes[:, 0], tables.items(), strict=True):
        m = t.spec.metrics[0]
        rows = t.ablated().reset_index(drop=True)
        y = np.arange(len(rows))[::-1]
        d = rows[f"d_{m}"].to_numpy(float)
        lo, hi = rows[f"d_{m}_lo"].to_numpy(float), rows[f"d_{m}_hi"].to_numpy(float)
        mdd = rows[f"mdd_{m}"].to_numpy(float)
        ax.barh(y, 2 * mdd, left=-mdd, height=0.5, color="0.88", label="±MDD (80% power)")
        ax.errorbar(d, y, xerr=[d - lo, hi - d], fmt="o", color="tab:blue", capsize=3, label="difference, 95% CI")
        ax.axvline(0, color="0.3", lw=0.8)
        replicate = rows["replicate"].to_numpy(bool)
        if replicate.any():
            spread = run_to_run(t.table, m)
            ax.plot(d[replicate], y[replicate], "D", color="tab:orange", markersize=9, zorder=3,
                    label="replicate: another seed")
            for x in (-spread, spread):
                ax.axvline(x, color="tab:orange", lw=0.8, ls="--")
        ref_bad = t.reference_malformed()
        ax.set_yticks(y, [row_label(r, ref_bad, t.reference_system) for r in rows.to_dict("records")], fontsize=8)
        ax.set_title(f"{name}: {t.reference_row} minus row, {m} ({t.requests} requests, {t.users} users)", fontsize=9,
                     pad=20 if ax is axes[0, 0] else 6)  # room for the legend above the first panel
        ax.grid(axis="x", alpha=0.3)
    entries: dict[str, object] = {}  # every panel's legend entries (replicates may be drawn in a later panel only)
    for ax in axes[:, 0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    axes[0, 0].legend(entries.values(), entries.keys(), fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0),
                      ncol=3, frameon=False)
    axes[-1, 0].set_xlabel("reference minus ablated (positive: the removed part helps)")
    fig.tight_layout()
    return fig


def _rows_with_configs(t: CommittedTable, results_dir: str | Path) -> Iterator[tuple[dict, str, Config]]:
    """Each table row with its system and its record's config."""
    for row in t.table.to_dict("records"):
        run, _, system = row["row"].partition(":")
        yield row, system, read_config(Path(results_dir) / run)


def sweep(t: CommittedTable, results_dir: str | Path, key: str) -> pd.DataFrame:
    """The points of a one-setting curve (Fig. 6: memory top-k): the reference and every row of its system whose
    record differs from the reference's in `key` alone among the table's setting keys, with the value of `key`; the
    reference's replicates (its configuration retrained with another seed) are added at the reference's value with
    `replicate` set, so the curve can be read against one retraining's spread at the one setting that has it.

    Why from the records' configs and not the rendered "setting" text: a row that changed nothing else is the
    condition for reading the curve as the effect of `key`, and the value is typed (k=1 sorts before k=10)."""
    if key not in t.spec.setting_keys:
        raise ValueError(f"table {t.spec.name}: {key!r} is not one of its setting_keys {t.spec.setting_keys}")
    ref_cfg = read_config(Path(results_dir) / t.spec.reference[0])
    m = t.spec.metrics[0]
    points = []
    for row, system, cfg in _rows_with_configs(t, results_dir):
        if system != t.reference_system:
            continue
        replicate = bool(row["replicate"])  # combined_table checked it changed a seed only
        if not replicate and set(changed_keys(ref_cfg, cfg, t.spec.setting_keys)) - {key}:
            continue
        points.append({"row": row["row"], key: getattr(cfg, key), "metric": m, "mean": row[m], "lo": row[f"{m}_lo"],
                       "hi": row[f"{m}_hi"], "d": row.get(f"d_{m}", float("nan")),
                       "malformed_rate": row["malformed_rate"], "reference": row["row"] == t.reference_row,
                       "replicate": replicate})
    return pd.DataFrame(points).sort_values(key, ignore_index=True) if points else pd.DataFrame(points)


def plot_sweep(curves: dict[str, pd.DataFrame], key: str) -> plt.Figure:
    """One line per table (e.g. retrained vs test-time), mean and 95% user-cluster CI over the setting's values,
    the reference setting ringed. Points of different tables are separate runs, so compare within a line.

    A curve with replicates of its reference draws them as diamonds off the line at the reference's value, and with
    two or more (three runs) a band of the runs' mean ± sd across the plot: a point inside the band differs from
    the reference setting by no more than retraining that setting does (`combined.seed_spread`)."""
    curves = {name: c for name, c in curves.items() if len(c)}
    if not curves:
        raise ValueError(f"no committed rows vary {key!r} alone: nothing to plot")
    metrics = {m for c in curves.values() for m in c["metric"]}
    if len(metrics) != 1:
        raise ValueError(f"the curves report different headline metrics {sorted(metrics)}: not one axis")
    metric = metrics.pop()
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for i, (name, c) in enumerate(curves.items()):
        rep = c["replicate"].to_numpy(bool)
        x = c[key].to_numpy(float) + (i - (len(curves) - 1) / 2) * 0.06  # side by side, centred on the value
        y = c["mean"].to_numpy(float)
        err = np.array([y - c["lo"].to_numpy(float), c["hi"].to_numpy(float) - y])
        line = ax.errorbar(x[~rep], y[~rep], yerr=err[:, ~rep], marker="o", capsize=3,
                           label=f"{name} ({int((~rep).sum())} runs)")
        color = line[0].get_color()
        ref = c["reference"].to_numpy(bool)
        ax.scatter(x[ref], y[ref], s=160, facecolors="none", edgecolors=color)
        if rep.any():
            ax.scatter(x[rep] + 0.12, y[rep], marker="D", s=36, facecolors="none", edgecolors=color,
                       label=f"{name}: reference retrained with another seed")
            mean, sd, n = seed_spread(c.assign(**{metric: c["mean"]}), metric, c.loc[ref, "row"].iloc[0])
            if not math.isnan(sd):
                ax.axhspan(mean - sd, mean + sd, color=color, alpha=0.12, lw=0,
                           label=f"{name}: reference setting over {n} seeds, mean ± sd")
    values = sorted({v for c in curves.values() for v in c[key]})
    ax.set_xticks(values)
    ax.set_xlabel(key)
    ax.set_ylabel(f"{metric} (95% CI, users resampled)")
    ax.set_title(f"{metric} vs {key}, from the committed records (ringed: the reference setting)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)  # below: the points stay visible
    fig.tight_layout()
    return fig


def retriever_rows(t: CommittedTable, results_dir: str | Path) -> pd.DataFrame:
    """Fig. 5 from a table: the reference, its system's rows that changed only retriever settings, and every
    query-only row, each labelled with the retriever it ranked with (a query row's own, a policy's run's)."""
    ref_cfg = read_config(Path(results_dir) / t.spec.reference[0])
    m = t.spec.metrics[0]
    out = []
    for row, system, cfg in _rows_with_configs(t, results_dir):
        spec = SYSTEMS.get(system)
        if spec is not None and spec.kind == "query":
            own = ranked_by(system, cfg)  # the request alone searches items and nothing else with its retriever
            label, kind = retriever_label({**cfg.model_dump(), "item_retriever": own, "memory_retriever": own}), "query only"
        elif system == t.reference_system and not row["replicate"] and not (
            set(changed_keys(ref_cfg, cfg, t.spec.setting_keys)) - RETRIEVER_KEYS
        ):
            label, kind = retriever_label(cfg.model_dump()), "policy"
        else:
            continue
        out.append({"row": row["row"], "kind": kind, "retriever": label, "mean": row[m], "lo": row[f"{m}_lo"],
                    "hi": row[f"{m}_hi"], "d": row.get(f"d_{m}", float("nan")), "metric": m,
                    "malformed_rate": row["malformed_rate"], "reference": row["row"] == t.reference_row})
    return pd.DataFrame(out)


_BAR_LABELS = {"policy": "MR.Rec policy, trained with this retriever", "query only": "the request alone (query-only)"}


def plot_retrievers(rows: pd.DataFrame, title: str) -> plt.Figure:
    """Grouped bars: one group per retriever, the policy and query-only retrieval side by side, 95% user CIs."""
    if rows.empty or (rows["kind"] == "policy").sum() < 2:
        raise ValueError("fewer than two policy rows that differ only in the retriever: nothing to compare")
    metric = rows["metric"].iloc[0]
    labels = list(dict.fromkeys(rows["retriever"]))
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, kind in enumerate(("policy", "query only")):
        part = rows[rows["kind"] == kind].drop_duplicates("retriever").set_index("retriever").reindex(labels)
        y = part["mean"].to_numpy(float)
        err = np.array([y - part["lo"].to_numpy(float), part["hi"].to_numpy(float) - y])
        ax.bar(np.arange(len(labels)) + (i - 0.5) * 0.38, y, 0.38, yerr=err, capsize=4, label=_BAR_LABELS[kind])
    ax.set_xticks(np.arange(len(labels)), labels)
    ax.set_ylabel(f"{metric} (95% CI, users resampled)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def topk_curves(committed: dict[str, CommittedTable], results_dir: str | Path) -> dict[str, pd.DataFrame]:
    """Fig. 6 per table that varies `memory_top_k`, where it has more than the reference (a lone point is no curve)."""
    curves = {name: sweep(t, results_dir, "memory_top_k") for name, t in committed.items()
              if "memory_top_k" in t.spec.setting_keys}  # fmt: skip
    return {name: c for name, c in curves.items() if len(c) > 1}


def retriever_bars(committed: dict[str, CommittedTable], results_dir: str | Path) -> dict[str, pd.DataFrame]:
    """Fig. 5 per table with at least two policy rows that differ only in the retriever."""
    bars = {name: retriever_rows(t, results_dir) for name, t in committed.items()}
    return {name: r for name, r in bars.items() if len(r) and (r["kind"] == "policy").sum() > 1}


def record_figures(
    committed: dict[str, CommittedTable],
    curves: dict[str, pd.DataFrame],
    bars: dict[str, pd.DataFrame],
    pairs: dict[str, tuple[pairs_table.PairsSpec, pd.DataFrame]],
) -> dict[str, plt.Figure]:
    """Every figure the committed records support, by file name: the forest plot, the top-k curves (`topk_curves`),
    the retriever bars (`retriever_bars`), one forest per pairs table (`committed_pairs_tables`), taken as built so
    notebook 06 tabulates and draws the same rows. Notebook 06 shows them; `mrrec readme --figures` writes them
    beside docs/results.md."""
    figures: dict[str, plt.Figure] = {}
    if committed:
        figures["06_committed_ablations"] = plot_forest(committed)
    if curves:
        figures["06_topk_committed"] = plot_sweep(curves, "memory_top_k")
    for name, rows in bars.items():
        figures[f"06_retriever_{name}"] = plot_retrievers(rows, f"{name}: retriever for memory and items (Fig. 5 form)")
    for name, (spec, table) in pairs.items():
        if not table.empty:
            figures[f"06_pairs_{name}"] = plot_pairs(spec, table)
    return figures


def display_table(t: CommittedTable) -> pd.DataFrame:
    """The rows with their setting, headline metric, paired difference, Holm p, MDD and malformed share."""
    m = t.spec.metrics[0]
    cols = ["row", "setting", m, f"d_{m}", f"d_{m}_lo", f"d_{m}_hi", f"holm_{m}", f"mdd_{m}", "malformed_rate", "tool_calls"]
    return t.table[[c for c in cols if c in t.table.columns]].round(3)


def json_record(t: CommittedTable) -> dict:
    """What notebook 06 writes for a table: where it came from, its rows (NaN as null) and, with replicates, the
    run-to-run spread and the ablated rows within it."""
    out = {"reference": t.reference_row, "title": t.spec.title, "requests": t.requests, "users": t.users,
           "rows": json_records(t.table)}
    if t.spec.replicates:
        m = t.spec.metrics[0]
        mean, sd, runs = seed_spread(t.table, m, t.reference_row)
        out["run_to_run"] = {"metric": m, "spread": run_to_run(t.table, m), "rows_within": within_noise(t.table, m),
                             "runs": runs, "mean": None if math.isnan(mean) else mean, "sd": None if math.isnan(sd) else sd}
    return out
