"""Notebook 06's view of the committed ablation records: recomputed from results/, pinned to the CLI's comparisons."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

from mrrec_lib.results.combined import seed_spread  # noqa: E402
from mrrec_lib.viz import record_tables as rt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"


@pytest.fixture(scope="module")
def committed():
    return rt.committed_tables(RESULTS)


def test_only_specs_with_setting_keys_are_ablation_tables():
    names = {s.name for s in rt.ablation_specs(RESULTS)}
    assert {"probe_testtime", "sft_ablations"} <= names
    assert not names & {"llm_320", "llm_801"}


def test_committed_difference_matches_the_recorded_comparison(committed):
    """The SFT-stage row equals what `mrrec compare` wrote to docs/comparisons (a separate code path and file)."""
    cli = json.loads((ROOT / "docs/comparisons/sft_retrained_no-global_vs_full.json").read_text())["tests"][0]
    table = committed["sft_ablations"]
    row = table.table.set_index("row").loc["sft-320-no_global_memory:mrrec_sft"]
    assert row["d_N@100"] == pytest.approx(cli["diff"])
    assert (row["d_N@100_lo"], row["d_N@100_hi"]) == pytest.approx((cli["lo"], cli["hi"]))
    assert row["mdd_N@100"] == pytest.approx(cli["mdd"])
    assert table.requests == cli["n"] == 320 and table.users == cli["n_clusters"]
    assert table.reference_malformed() > row["malformed_rate"]


def test_forest_plot_has_one_point_per_ablated_row(committed):
    fig = rt.plot_forest(committed)
    axes = fig.get_axes()
    assert len(axes) == len(committed)
    for ax, table in zip(axes, committed.values(), strict=True):
        ablated = table.ablated()
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert len(labels) == len(ablated)
        assert all("malformed vs" in label for label in labels)
        points = ax.lines[0].get_xdata()
        assert sorted(points) == pytest.approx(sorted(ablated["d_N@100"]))


def test_json_record_has_no_nan(committed):
    text = json.dumps(rt.json_record(committed["probe_testtime"]), allow_nan=False)
    assert "default-grpo-probe-on-no_local_memory:mrrec" in text


def test_missing_results_folder_and_empty_plot_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="tables"):
        rt.ablation_specs(tmp_path)
    with pytest.raises(ValueError, match="no committed ablation tables"):
        rt.plot_forest({})


def test_topk_sweep_reads_k_from_the_records_and_keeps_only_rows_that_changed_k_alone(committed):
    """Test-time top-k 1 and 5 and the reference (k=3) form the curve; no-global/levels rows and other systems do not."""
    curve = rt.sweep(committed["probe_testtime"], RESULTS, "memory_top_k")
    assert curve["memory_top_k"].tolist() == [1, 3, 5]
    assert curve["row"].tolist() == ["default-grpo-probe-on-topk_1:mrrec", "default-grpo-probe:mrrec",
                                     "default-grpo-probe-on-topk_5:mrrec"]
    assert curve["reference"].tolist() == [False, True, False] and not curve["replicate"].any()
    table = committed["probe_testtime"].table.set_index("row")
    assert curve.loc[0, "mean"] == pytest.approx(table.loc["default-grpo-probe-on-topk_1:mrrec", "N@100"])
    assert curve.loc[0, "d"] == pytest.approx(table.loc["default-grpo-probe-on-topk_1:mrrec", "d_N@100"])
    assert (curve["lo"] <= curve["mean"]).all() and (curve["mean"] <= curve["hi"]).all()
    with pytest.raises(ValueError, match="not one of its setting_keys"):
        rt.sweep(committed["probe_testtime"], RESULTS, "seed")


def test_retrained_topk_sweep_places_the_reference_seeds_at_its_k_and_bands_their_spread(committed):
    """Retrained k = 1..5 form the line; the reference retrained with other GRPO seeds sits at k = 3 off the line,
    and the band is their mean ± sd (`combined.seed_spread`), the yardstick for every other k."""
    t = committed["grpo_ablations"]
    curve = rt.sweep(t, RESULTS, "memory_top_k")
    line = curve[~curve["replicate"]]
    assert line["memory_top_k"].tolist() == [1, 2, 3, 4, 5] and line["reference"].sum() == 1
    seeds = curve[curve["replicate"]]
    assert sorted(seeds["row"]) == sorted(f"{r}:{s}" for r, s in t.spec.replicates)
    assert set(seeds["memory_top_k"]) == {3}
    mean, sd, n = seed_spread(t.table, "N@100", t.reference_row)
    fig = rt.plot_sweep({"retrained": curve}, "memory_top_k")
    ax = fig.get_axes()[0]
    assert list(ax.lines[0].get_ydata()) == pytest.approx(line["mean"].tolist())  # the seeds are not on the line
    band = ax.patches[0]
    assert (band.get_y(), band.get_y() + band.get_height()) == pytest.approx((mean - sd, mean + sd))
    assert n == 1 + len(seeds) and any(f"{n} seeds, mean ± sd" in x.get_text() for x in ax.get_legend().get_texts())


def test_sweep_plot_draws_each_curve_and_refuses_nothing_or_mixed_metrics(committed):
    curve = rt.sweep(committed["probe_testtime"], RESULTS, "memory_top_k")
    fig = rt.plot_sweep({"test-time": curve}, "memory_top_k")
    ax = fig.get_axes()[0]
    assert list(ax.lines[0].get_ydata()) == pytest.approx(curve["mean"].tolist())
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "3", "5"]
    with pytest.raises(ValueError, match="nothing to plot"):
        rt.plot_sweep({"empty": curve.iloc[:0]}, "memory_top_k")
    with pytest.raises(ValueError, match="different headline metrics"):
        rt.plot_sweep({"a": curve, "b": curve.assign(metric="R@100")}, "memory_top_k")


def test_grpo_table_replicates_set_the_run_to_run_spread(committed):
    """The GRPO-seed replicates are drawn apart; the largest |Δ| bounds (at the printed 3 decimals) the rows called
    within noise and the sd is taken over the reference and its replicates (from the records)."""
    table = committed["grpo_ablations"]
    rows = table.table.set_index("row")
    reps = rows[rows["replicate"]]
    assert list(reps.index) == ["grpo-probe-grpo_seed_1:mrrec", "grpo-probe-grpo_seed_2:mrrec"]
    assert reps["setting"].tolist() == ["grpo_seed=1", "grpo_seed=2"] and reps["holm_N@100"].isna().all()
    noise = rt.json_record(table)["run_to_run"]
    assert noise["spread"] == pytest.approx(reps["d_N@100"].abs().max())
    assert noise["runs"] == 3
    runs = rows.loc[[table.reference_row, *reps.index], "N@100"]
    assert noise["sd"] == pytest.approx(runs.std(ddof=1)) and noise["mean"] == pytest.approx(runs.mean())
    assert all(round(abs(rows.loc[r, "d_N@100"]), 3) <= round(noise["spread"], 3) for r in noise["rows_within"])
    assert "grpo-probe-local_profile_only:mrrec" not in noise["rows_within"]
    fig = rt.plot_forest({"grpo_ablations": table})
    diamonds = [line for line in fig.get_axes()[0].lines if line.get_marker() == "D"]
    assert len(diamonds) == 1 and list(diamonds[0].get_xdata()) == pytest.approx(reps["d_N@100"].tolist())
    # a row whose GRPO kept its start policy says so in the figure too, as in the table
    ticks = [t.get_text() for t in fig.get_axes()[0].get_yticklabels()]
    kept = rows[rows["label"].str.contains("GRPO kept step 0")]
    assert len(kept) >= 1 and kept["kept_start"].str.endswith("GRPO kept step 0").all()
    assert sum("GRPO kept step 0" in t for t in ticks) == len(kept) == (rows["kept_start"] != "").sum()


def test_retriever_bars_are_the_recorded_comparison(committed):
    """Fig. 5 from records: the BM25-retrained policy's Δ is what `mrrec compare` wrote; query rows keep their own
    retriever; rows that changed anything besides the retriever (top-k, levels) are not bars."""
    rows = rt.retriever_rows(committed["grpo_ablations"], RESULTS).set_index("row")
    cli = json.loads((ROOT / "docs/comparisons/grpo-probe_retrained_full_vs_retriever-bm25.json").read_text())
    assert cli["items_ranked_by"] == ["dense", "bm25"]
    bm25 = rows.loc["grpo-probe-retriever_bm25:mrrec"]
    assert (bm25["kind"], bm25["retriever"]) == ("policy", "BM25")
    assert bm25["d"] == pytest.approx(cli["tests"][0]["diff"])
    assert rows.loc["default:query_bm25", "retriever"] == "BM25"
    assert rows.loc["default-grpo-probe:query_dense", "retriever"] == rows.loc["default-grpo-probe:mrrec", "retriever"]
    assert not any("topk" in r or "local_" in r or "seed" in r for r in rows.index)
    fig = rt.plot_retrievers(rows.reset_index(), "t")
    heights = sorted(p.get_height() for p in fig.get_axes()[0].patches)
    assert heights == pytest.approx(sorted(rows["mean"]))
    with pytest.raises(ValueError, match="fewer than two policy rows"):
        rt.plot_retrievers(rt.retriever_rows(committed["probe_testtime"], RESULTS), "t")


def test_seed_tables_read_the_committed_records():
    tables = rt.committed_seed_tables(RESULTS)
    spec, table = tables["data_seeds"]
    assert table["run"].iloc[0] == spec.runs[0] and table["requests"].iloc[0] == 320
    base = json.loads((RESULTS / "default-grpo-probe/metrics/05_eval.json").read_text())["paired_tests"]
    recorded = next(t for t in base if t["system"] == "query_dense" and t["metric"] == "N@100")
    assert table["d_N@100"].iloc[0] == pytest.approx(recorded["diff"])


def test_both_parsed_table_reproduces_the_committed_comparisons():
    """The rendered where-both-parsed rows are what `mrrec compare --a-format --b-format` wrote to docs/comparisons."""
    from mrrec_lib.results import pairs_table as pt

    spec = pt.read_pairs_spec(RESULTS / "tables/both_parsed.yaml")
    table = pt.pairs_table(spec, RESULTS)
    bands = rt.plot_pairs(spec, table).get_axes()[0].patches  # each pair over its own ±MDD band
    assert [p.get_width() for p in bands] == pytest.approx((2 * table["mdd"]).tolist())
    noise = pt.noise_lines(table)  # the probe reference's parsed profiles against its GRPO-seed replicates
    assert noise[0].startswith("Run-to-run noise of `default-grpo-probe:mrrec`") and "`grpo-probe-no_global_memory" in noise[0]
    for ablation in ("no_global_memory", "no_local_memory", "local_records_only", "local_patterns_only"):
        cli = json.loads((ROOT / f"docs/comparisons/both-parsed_full_default_vs_{ablation}.json").read_text())
        assert (cli["a_format"], cli["b_format"]) == ("wellformed", "wellformed")
        row = table.set_index(["a", "b"]).loc[("default:mrrec", f"abl-{ablation}:mrrec")]
        test = cli["tests"][0]
        assert row["requests"] == cli["shared_requests"] and row["users"] == cli["shared_users"]
        assert (row["diff"], row["lo"], row["hi"]) == pytest.approx((test["diff"], test["lo"], test["hi"]))


@pytest.mark.parametrize("doc", ["README.md", "docs/results.md"])
def test_committed_docs_are_what_the_records_render(doc):
    """Every rendered block (Table 1, table specs, study plans) is current: re-render with the command named."""
    from mrrec_lib.results.readme import outdated_blocks

    assert outdated_blocks(ROOT / doc, RESULTS) == []


def test_readme_figures_writes_every_record_figure(tmp_path):
    from mrrec_lib.cli import main

    assert main(["readme", "--figures", str(tmp_path / "figures"), "--results-dir", str(RESULTS)]) == 0
    written = sorted(p.name for p in (tmp_path / "figures").glob("*.png"))
    committed = rt.committed_tables(RESULTS)
    pairs = rt.committed_pairs_tables(RESULTS)
    figures = rt.record_figures(committed, rt.topk_curves(committed, RESULTS), rt.retriever_bars(committed, RESULTS), pairs)
    assert written == sorted(f"{n}.png" for n in figures)
    assert {"06_committed_ablations.png", "06_topk_committed.png", "06_retriever_grpo_ablations.png",
            "06_pairs_both_parsed.png"} <= set(written)
    assert not list((tmp_path / "figures").glob(".*"))  # no temporary file left behind
    matplotlib.pyplot.close("all")
