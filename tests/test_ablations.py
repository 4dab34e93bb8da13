"""Ablation deltas (params/ablations/*.yaml) and the stage-06 panels built from an ablation summary."""

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

from mrrec_lib import stages
from mrrec_lib.config import load_config
from mrrec_lib.viz import ablations as ab

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parents[1]
DELTAS = ROOT / "params" / "ablations"
DEFAULT = ROOT / "params" / "default.yaml"

# The first stage each shipped delta reruns: everything before it is shared with the base run.
FIRST_CHANGED = {
    "no_global_memory": "03",
    "no_local_memory": "03",
    "local_records_only": "03",
    "local_patterns_only": "03",
    "local_profile_only": "03",
    "topk_1": "03",
    "topk_2": "03",
    "topk_4": "03",
    "topk_5": "03",
    "retriever_bm25": "02",
    "memory_builder_llm": "02",
    "grpo_from_base": "03",
    "grpo_seed_1": "04",
    "grpo_seed_2": "04",
    "seed_1": "01",
    "seed_2": "01",
    "recr1": "03",
}
METRICS = ["R@10", "R@100", "N@10", "N@100"]


def test_every_delta_file_is_known():
    assert sorted(p.stem for p in DELTAS.glob("*.yaml")) == sorted(FIRST_CHANGED)


@pytest.mark.parametrize("name", sorted(FIRST_CHANGED))
def test_delta_reruns_from_its_stage_only(name):
    base, cfg = load_config(DEFAULT), load_config(DEFAULT, DELTAS / f"{name}.yaml")
    first = FIRST_CHANGED[name]
    for stage in ("01", "02", "03", "04", "05"):
        same = stages.stage_hash(base, stage) == stages.stage_hash(cfg, stage)
        assert same == (stage < first), f"{name}: stage {stage} hash {'shared' if same else 'changed'}"


@pytest.mark.parametrize("name", sorted(FIRST_CHANGED))
def test_delta_is_small_and_documented(name):
    text = (DELTAS / f"{name}.yaml").read_text()
    assert text.startswith("# "), f"{name}.yaml: first line must say what it ablates"
    base, cfg = load_config(DEFAULT), load_config(DEFAULT, DELTAS / f"{name}.yaml")
    change = ab.config_delta(base.model_dump(), cfg.model_dump())
    assert 1 <= len(change) <= 3, f"{name}: changes {change}"


def _row(ablation, system, r100, run_status="ok", status="ok", **extra):
    metrics = {}
    for m, v in (("R@10", r100 / 3), ("R@100", r100), ("N@10", r100 / 5), ("N@100", r100 / 2)):
        metrics |= {m: v, f"{m}_lo": v * 0.8, f"{m}_hi": v * 1.2}
    if status != "ok":
        metrics = {}
    return {"ablation": ablation, "run": f"abl-{ablation}", "run_status": run_status, "system": system,
            "status": status, **metrics, **extra}


def _summary_all_shipped() -> pd.DataFrame:
    rows = [_row("base", "mrrec", 0.30), _row("base", "mrrec_sft", 0.25), _row("base", "query_dense", 0.20)]
    rows += [_row(n, "recr1" if n == "recr1" else "mrrec", 0.1 + i / 100) for i, n in enumerate(sorted(FIRST_CHANGED))]
    return pd.DataFrame(rows)


def _panels(summary, tmp_path):
    base = load_config(DEFAULT).model_dump()
    deltas = ab.ablation_deltas(summary, tmp_path / "no-outputs", base, DELTAS)
    return deltas, {
        "component": ab.component_panel(summary, deltas, METRICS),
        "levels": ab.levels_panel(summary, deltas, METRICS, base),
        "topk": ab.topk_panel(summary, deltas, METRICS, base),
        "retriever": ab.retriever_panel(summary, deltas, METRICS, base),
        "seeds": ab.seeds_panel(summary, deltas, METRICS, base),
        "grpo_seeds": ab.seeds_panel(summary, deltas, METRICS, base, key="grpo_seed"),
    }


def test_shipped_deltas_land_in_their_figures(tmp_path):
    summary = _summary_all_shipped()
    _, panels = _panels(summary, tmp_path)
    for name, panel in panels.items():
        assert panel.missing == [], f"{name}: {panel.missing}"
    comp = panels["component"].table.set_index("label")
    assert comp.loc["w/o global memory", "ablation"] == "no_global_memory"
    assert comp.loc["w/o RL (SFT only)", "R@100"] == pytest.approx(0.25)
    assert comp.loc["w/o any memory (Rec-R1)", "system"] == "recr1"
    topk = panels["topk"].table
    assert topk["k"].tolist() == [1, 2, 3, 4, 5]
    assert topk.set_index("k").loc[3, "ablation"] == "base"
    levels = panels["levels"].table.set_index("label")
    assert levels.loc["behaviour records only", "ablation"] == "local_records_only"
    assert set(panels["retriever"].table["label"]) == {"all-MiniLM-L6-v2", "BM25"}
    seeds = panels["seeds"].table
    assert seeds["label"].iloc[-1].startswith("mean ± sd over 3")
    expected_sd = np.std([0.30, summary.set_index("ablation").loc["seed_1", "R@100"],
                          summary.set_index("ablation").loc["seed_2", "R@100"]], ddof=1)
    assert seeds["R@100_sd"].iloc[-1] == pytest.approx(expected_sd)
    grpo = panels["grpo_seeds"].table  # the base's grpo_seed is None: it follows seed 42
    assert grpo["label"].tolist() == ["grpo_seed 1", "grpo_seed 2", "grpo_seed 42", "mean ± sd over 3 grpo_seeds"]
    assert grpo.set_index("label").loc["grpo_seed 42", "ablation"] == "base"
    assert grpo.set_index("label").loc["grpo_seed 2", "ablation"] == "grpo_seed_2"


def test_missing_and_failed_rows_are_noted_and_plotted(tmp_path):
    summary = pd.DataFrame([
        _row("base", "mrrec", 0.30),
        _row("base", "mrrec_sft", 0.0, status="not run"),
        _row("topk_1", "mrrec", 0.2),
        {"ablation": "no_global_memory", "run": None, "run_status": "failed", "error": "StageFailed: boom"},
    ])
    deltas, panels = _panels(summary, tmp_path)
    comp = panels["component"]
    text = " | ".join(comp.missing)
    assert "w/o global memory: run failed (StageFailed: boom)" in text
    assert "w/o local memory: not run yet (from no_local_memory.yaml)" in text
    assert "w/o RL (SFT only): system 'mrrec_sft' not run" in text
    assert comp.table.set_index("label").loc["MR.Rec (full)", "status"] == "ok"
    topk = panels["topk"]
    assert topk.ok()["k"].tolist() == [1, 3]
    assert any(m == "top-5: not run yet (from topk_5.yaml)" for m in topk.missing)
    assert panels["seeds"].missing[-1].startswith("no seed replicas")
    assert panels["grpo_seeds"].missing[-1] == "no grpo_seed replicas yet (from grpo_seed_1.yaml, grpo_seed_2.yaml)"
    shown = ab.format_table(panels["levels"], METRICS)
    assert (shown.set_index("setting").loc["behaviour records only", "R@100"]) == "—"
    assert shown.set_index("setting").loc["all three levels (full)", "R@100"].startswith("0.300 [0.240, 0.360]")
    overview = ab.overview_panel(summary, deltas, METRICS)
    assert overview.table.set_index("ablation").loc["topk_1", "ΔR@100"] == pytest.approx(-0.1)
    assert any("no_global_memory" in m for m in overview.missing)
    figs = [ab.plot_bars(comp, ["R@100", "N@100"], "components"), ab.plot_topk(topk, [10, 100]),
            ab.plot_bars(panels["retriever"], ["R@100"], "retriever")]
    assert all(f.axes for f in figs)
    found = ab.findings(panels, "R@100")
    assert found[0].startswith("MR.Rec (full): R@100 0.300 [0.240, 0.360]")
    assert any("top-1" in f and "-0.100 vs full" in f for f in found)


def test_empty_summary_degrades_to_notes(tmp_path):
    summary = ab.summary_from_run(tmp_path / "run-without-metrics")
    deltas, panels = _panels(summary, tmp_path)
    assert deltas == {}
    assert all(p.ok().empty for p in panels.values())
    assert ab.findings(panels, "R@100") == ["the full model's R@100 is not available: nothing to compare against"]
    assert ab.plot_topk(panels["topk"], [10]).axes


def test_run_configs_take_precedence_over_delta_files(tmp_path):
    outputs = tmp_path / "outputs"
    base = load_config(DEFAULT)
    for run, cfg in (("abl-base", base), ("abl-mine", load_config(DEFAULT, overrides={"memory_top_k": 8}))):
        (outputs / run).mkdir(parents=True)
        (outputs / run / "config.yaml").write_text(__import__("yaml").safe_dump(cfg.model_dump()))
    summary = pd.DataFrame([_row("base", "mrrec", 0.3), _row("mine", "mrrec", 0.2)])
    settings = ab.base_settings(summary, outputs, fallback={})
    deltas = ab.ablation_deltas(summary, outputs, settings, DELTAS)
    assert deltas == {"base": {}, "mine": {"memory_top_k": 8}}
    topk = ab.topk_panel(summary, deltas, METRICS, settings)
    assert topk.ok()["k"].tolist() == [3, 8]


def test_first_rerun_stage_matches_stage_hashes():
    base = load_config(DEFAULT).model_dump()
    assert ab.first_rerun_stage(base, {"memory_top_k": 1}) == "03"
    assert ab.first_rerun_stage(base, {"item_retriever": "bm25"}) == "02"
    assert ab.first_rerun_stage(base, {}) is None


@pytest.mark.parametrize("name", sorted(FIRST_CHANGED))
def test_delta_evaluates_known_systems(name):
    from mrrec_lib.eval.systems import resolve_systems

    cfg = load_config(DEFAULT, DELTAS / f"{name}.yaml")
    assert resolve_systems(cfg.eval_systems)


def _paired_batch(outputs, per_user_diff: dict[str, float]) -> tuple[pd.DataFrame, dict]:
    """Base and two variants, 2 requests per user; a variant's R@100 is the full model's plus `per_user_diff[user]`."""
    from mrrec_lib.runs import RunPaths, write_parquet

    users = [u for u in per_user_diff for _ in range(2)]
    full = np.linspace(0.2, 0.6, len(users))
    cfg = load_config(DEFAULT)
    for run, shift in (("default", 0.0), ("abl-topk_1", 1.0), ("abl-no_global_memory", -0.5)):
        vals = full + shift * np.array([per_user_diff[u] for u in users])
        per_query = pd.DataFrame({"system": "mrrec", "qid": [f"q{i}" for i in range(len(users))], "user_id": users,
                                  "R@100": vals, "N@100": vals / 2})  # fmt: skip
        paths = RunPaths(outputs / run).ensure()
        write_parquet(per_query, paths.metrics / "05_per_query.parquet")
        stages.record_stage(paths, "01", cfg, 1.0)
    summary = pd.DataFrame([_row(a, "mrrec", 0.4) for a in ("base", "topk_1", "no_global_memory")])
    summary["run"] = ["default", "abl-topk_1", "abl-no_global_memory"]
    rows = pd.DataFrame({"label": ["top-1", "w/o global"], "ablation": ["topk_1", "no_global_memory"],
                         "system": "mrrec", "status": "ok"})  # fmt: skip
    return summary, {"p": ab.Panel(rows)}


def test_paired_vs_full_resamples_users_and_holm_adjusts(tmp_path):
    from mrrec_lib.eval.stats import holm, min_detectable_difference

    diffs = {"u1": 0.10, "u2": 0.02, "u3": 0.06, "u4": 0.04}
    summary, panels = _paired_batch(tmp_path, diffs)
    seen = []

    def fake(a, b, clusters, n_samples, seed):
        seen.append(list(clusters))
        d = float(np.mean(a - b))
        return {"diff": d, "lo": d, "hi": d, "p_bootstrap": 0.01 * (seed + 1), "p_permutation": 0.01 * (seed + 1)}

    paired = ab.paired_vs_full(panels, summary, tmp_path, ["R@100", "N@100"], n_samples=50, seed=0, test=fake)
    assert seen[0] == ["u1", "u1", "u2", "u2", "u3", "u3", "u4", "u4"]  # clusters: the user of each paired request
    top1 = paired[paired["ablation"] == "topk_1"].set_index("metric")
    assert top1.loc["R@100", "diff"] == pytest.approx(np.mean(list(diffs.values())))
    assert (paired["n"] == 8).all() and (paired["n_users"] == 4).all()
    user_diffs = np.repeat(list(diffs.values()), 2)
    assert top1.loc["R@100", "mdd"] == pytest.approx(min_detectable_difference(user_diffs, np.repeat(list(diffs), 2)))
    assert paired["p_holm"].to_numpy() == pytest.approx(holm(paired["p_permutation"].to_numpy()))
    assert (paired["p_holm"] >= paired["p_permutation"]).all() and paired["p_holm"].max() <= 1.0


def test_paired_vs_full_default_test_clusters_by_user(tmp_path):
    summary, panels = _paired_batch(tmp_path, {"u1": 0.10, "u2": 0.02, "u3": 0.06})
    paired = ab.paired_vs_full(panels, summary, tmp_path, ["R@100"], n_samples=200, seed=1).set_index("ablation")
    assert paired.loc["topk_1", "diff"] == pytest.approx(0.06)
    assert paired.loc["no_global_memory", "diff"] == pytest.approx(-0.03)
    assert paired.loc["topk_1", "n_users"] == 3 and paired.loc["topk_1", "mdd"] > 0
    # Whole users are flipped: of the 2**3 sign patterns of 3 users, at least 2 (none / all flipped) reach |diff|.
    assert paired.loc["topk_1", "p_permutation"] >= 0.2
    assert set(paired.columns) >= {"n_users", "mdd", "p_holm", "p_bootstrap"}


def test_paired_vs_full_keeps_grpo_seed_replicas_out_of_holm(tmp_path):
    from mrrec_lib.eval.stats import holm

    summary, panels = _paired_batch(tmp_path, {"u1": 0.10, "u2": 0.02, "u3": 0.06})
    rows = panels["p"].table
    panels = {"p": ab.Panel(rows.iloc[[1]]), "grpo_seeds": ab.Panel(rows.iloc[[0]])}

    def fake(a, b, clusters, n_samples, seed):
        d = float(np.mean(a - b))
        return {"diff": d, "lo": d, "hi": d, "p_bootstrap": 0.02 * (seed + 1), "p_permutation": 0.02 * (seed + 1)}

    paired = ab.paired_vs_full(panels, summary, tmp_path, ["R@100", "N@100"], test=fake)
    replica = paired[paired["replicate"]]
    assert set(replica["ablation"]) == {"topk_1"}
    assert replica["diff"].notna().all() and replica["p_holm"].isna().all()
    tested = paired[~paired["replicate"]]
    assert set(tested["ablation"]) == {"no_global_memory"}
    assert tested["p_holm"].to_numpy() == pytest.approx(holm(tested["p_permutation"].to_numpy()))
