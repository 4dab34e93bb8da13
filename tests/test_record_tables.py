"""Notebook 06's view of the committed ablation records: recomputed from results/, pinned to the CLI's comparisons."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

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
