"""Notebook 06 on a fake ablation batch written in the real formats.

Run folders get the merged config.yaml and a metrics/05_eval.json shaped like stage 05's; the summary comes
from `ablate.summarise`, exactly as `mrrec ablate` writes it. One ablation failed, several were never run.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mrrec_lib import stages
from mrrec_lib.ablate import summarise
from mrrec_lib.config import load_config
from mrrec_lib.runs import RunPaths, write_json, write_parquet
from mrrec_lib.viz import ablations as ab

ROOT = Path(__file__).resolve().parents[1]
METRICS = ["R@10", "R@100", "R@1000", "N@10", "N@100", "N@1000"]
RECALL = {  # R@100 of the evaluated systems per ablation; None: the system is listed but did not run
    "base": {"query_dense": 0.20, "mrrec_sft": 0.25, "mrrec": 0.30, "recr1": None},
    "no_global_memory": {"mrrec_sft": 0.24, "mrrec": 0.27},
    "topk_1": {"mrrec": 0.26},
    "topk_5": {"mrrec": 0.29},
    "local_records_only": {"mrrec": 0.28},
    "retriever_bm25": {"mrrec": 0.22},
    "seed_1": {"mrrec": 0.31},
    "recr1": {"recr1": 0.24},
}


def _eval_json(systems: dict) -> dict:
    out = {}
    for name, r in systems.items():
        if r is None:
            out[name] = {"status": "not run", "reason": "models/recr1 holds no trained policy", "metrics": {}}
            continue
        m = {}
        for k, f in ((10, 0.4), (100, 1.0), (1000, 1.8)):
            m[f"R@{k}"] = {"mean": r * f, "lo": r * f * 0.8, "hi": r * f * 1.2}
            m[f"N@{k}"] = {"mean": r * f / 2.5, "lo": r * f / 2.5 * 0.8, "hi": r * f / 2.5 * 1.2}
        out[name] = {"status": "ok", "metrics": {**m, "memory_tokens": 90.0}}
    return {"systems": out}


def _per_query(systems: dict) -> pd.DataFrame:
    """Four queries per system; R@100 = r + 0.01 * i, so a variant's paired difference to the full model is exact.

    The first query retrieved two memory entries (u1's snapshot), for the contribution section.
    """
    return pd.DataFrame([
        {"system": name, "qid": f"q{i}", "R@100": r + 0.01 * i, "N@100": (r + 0.01 * i) / 2.5, "user_id": "u1",
         "target_timestamp": 1, "target_item_id": "i1", "profile": "smooth coffee beans for espresso" if i == 0 else "",
         "memory_ids": ["rec:0", "pref:c:0"] if i == 0 else []}
        for name, r in systems.items() if r is not None for i in range(4)
    ])


def make_fake_batch(outputs: Path) -> Path:
    results = []
    for name, systems in RECALL.items():
        run = "default" if name == "base" else f"abl-{name}"
        files = [ROOT / "params" / "default.yaml"] + ([] if name == "base" else [ROOT / "params" / "ablations" / f"{name}.yaml"])
        cfg = load_config(*files, overrides={"run_name": run, "outputs_dir": str(outputs)})
        paths = RunPaths(outputs / run).ensure()
        paths.config_file.write_text(yaml.safe_dump(cfg.model_dump()))
        write_json(paths.metrics_file("05_eval"), _eval_json(systems))
        write_parquet(_per_query(systems), paths.metrics / "05_per_query.parquet")
        for stage in ("01", "02", "03", "04", "05"):
            stages.record_stage(paths, stage, cfg, 60.0)
        shared = [] if name == "base" else ["01", "02"]
        results.append({"ablation": name, "run": run, "status": "ok", "shared_stages": shared})
    results.append({"ablation": "no_local_memory", "run": None, "status": "failed", "error": "StageFailed: stage 03"})
    base = RunPaths(outputs / "default")
    items = pd.DataFrame({"item_id": ["i1", "i2"], "category": "c", "subcategory": "", "title": ["coffee", "tea"],
                          "description": "", "store": "", "price": np.nan, "source": "s",
                          "text": ["Lavazza whole bean coffee, smooth espresso", "green tea bags"]})
    write_parquet(items, base.data / "items.parquet")
    entries = pd.DataFrame([("u1@1", "u1", "rec:0", "record", "c", "Lavazza coffee beans, smooth"),
                            ("u1@1", "u1", "pref:c:0", "pattern", "c", "likes dark roast")],
                           columns=["snapshot", "user_id", "entry_id", "level", "category", "text"])
    write_parquet(entries, base.memory / "local_entries.parquet")
    summary = outputs / "ablations" / "summary.csv"
    summarise(results, outputs, summary)
    return summary


def test_panels_from_a_summarised_batch(tmp_path):
    summary_file = make_fake_batch(tmp_path)
    summary = ab.load_summary(summary_file)
    base = ab.base_settings(summary, tmp_path, fallback={})
    assert base["run_name"] == "default"
    deltas = ab.ablation_deltas(summary, tmp_path, base, tmp_path / "no-delta-files")  # from run configs only
    assert deltas["retriever_bm25"] == {"item_retriever": "bm25", "memory_retriever": "bm25"}
    comp = ab.component_panel(summary, deltas, METRICS)
    assert comp.table.set_index("label")["R@100"].round(3).dropna().to_dict() == {
        "MR.Rec (full)": 0.30, "w/o global memory": 0.27, "w/o RL (SFT only)": 0.25, "w/o any memory (Rec-R1)": 0.24}
    # The failed run wrote no config: without its delta file what it changed is unknown, with it the failure shows.
    assert deltas["no_local_memory"] is None and comp.missing == ["w/o local memory: not run yet (from no_local_memory.yaml)"]
    deltas = ab.ablation_deltas(summary, tmp_path, base, ROOT / "params" / "ablations")
    comp = ab.component_panel(summary, deltas, METRICS)
    assert comp.missing == ["w/o local memory: run failed (StageFailed: stage 03)"]
    assert ab.describe(None).startswith("(unknown") and ab.first_rerun_stage(base, None) is None

    def mean_diff(a, b, clusters, n_samples, seed):
        d = float(np.mean(a - b))
        return {"diff": d, "lo": d, "hi": d, "p_bootstrap": 1.0, "p_permutation": 1.0}

    panels = {"component": comp, "seeds": ab.seeds_panel(summary, deltas, METRICS, base)}
    paired = ab.paired_vs_full(panels, summary, tmp_path, ["R@100"], test=mean_diff).set_index("label")
    assert paired.loc["w/o global memory", "diff"] == pytest.approx(-0.03)
    assert paired.loc["w/o RL (SFT only)", "diff"] == pytest.approx(-0.05) and paired.loc["w/o RL (SFT only)", "n"] == 4
    assert paired.loc["seed 1", "note"] == "other data/split than the base: not paired"
    assert "MR.Rec (full)" not in paired.index


@pytest.mark.notebooks
def test_notebook_06_on_a_fake_batch(tmp_path):
    import papermill as pm

    summary = make_fake_batch(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"run_name": "default", "outputs_dir": str(tmp_path), "ablation_summary": str(summary)}))
    pm.execute_notebook(str(ROOT / "notebooks" / "06_ablations.ipynb"), str(tmp_path / "06.ipynb"),
                        parameters={"config_file": str(params), "run_name": "default"}, kernel_name="python3",
                        cwd=str(ROOT), progress_bar=False)
    out = tmp_path / "default" / "metrics" / "06_ablations.json"
    rec = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c} in {out}"))
    assert rec["from_batch"] is True and rec["base_differs_from_this_run"] == ""
    topk = {r["k"]: r["R@100"] for r in rec["tables"]["topk"] if r["status"] == "ok"}
    assert topk == pytest.approx({1: 0.26, 3: 0.30, 5: 0.29})
    assert "top-2: not run yet (from topk_2.yaml)" in rec["missing"]["topk"]
    assert rec["ablations"]["seed_1"]["reruns_from"] == "01"
    costs = {c["ablation"]: c for c in rec["costs"]}
    assert costs["base"] == {"ablation": "base", "stages run": "01,02,03,04,05", "minutes": 5.0}
    assert costs["topk_1"]["stages run"] == "03,04,05" and rec["batch_minutes"] == pytest.approx(5 + 7 * 3)
    paired = {(r["label"], r["metric"]): r for r in rec["paired_vs_full"]}
    assert paired[("top-1", "R@100")]["diff"] == pytest.approx(-0.04) and paired[("top-1", "R@100")]["n"] == 4
    assert any("paired Δ -0.040" in f for f in rec["findings"])
    assert rec["contribution"]["n_entries"] == 2 and rec["contribution"]["mpc_micro"] == pytest.approx(0.5)
    committed = rec["committed"]["sft_ablations"]
    assert committed["reference"] == "default-sft-320:mrrec_sft" and committed["requests"] == 320
    assert {r["row"] for r in committed["rows"]} >= {"sft-320-no_global_memory:mrrec_sft", "default-sft-320:mrrec_sft"}
    assert {r["retriever"] for r in rec["committed_retriever"]["grpo_ablations"]} == {"BM25", "all-MiniLM-L6-v2"}
    assert rec["committed_seeds"]["data_seeds"][0]["run"] == "default-grpo-probe"
    parsed = {(r["a"], r["b"]): r["requests"] for r in rec["committed_pairs"]["both_parsed"]}
    assert parsed[("default:mrrec", "abl-no_local_memory:mrrec")] < 801  # only where both answers parsed
    for fig in ("06_components", "06_topk", "06_retriever", "06_contribution", "06_committed_ablations",
                "06_retriever_grpo_ablations", "06_pairs_both_parsed"):
        assert (tmp_path / "default" / "figures" / f"{fig}.png").exists()
