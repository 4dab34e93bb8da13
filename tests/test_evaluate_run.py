"""`mrrec evaluate`: a trained run's policies scored on another data configuration, without retraining.

Fast tests fake the trained run (config.yaml, policy metadata, stage records) and replace papermill
with a recorder, as tests/test_ablate_batch.py does; the real end-to-end check on the smoke run is in
tests/test_notebooks.py (it needs that module's smoke run).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mrrec_lib import runner, stages
from mrrec_lib.cli import build_parser, main
from mrrec_lib.config import Config, ConfigError, save_config
from mrrec_lib.data.schema import QUERY_COLUMNS
from mrrec_lib.eval.context import EvalContext
from mrrec_lib.eval.evaluate import system_fingerprint
from mrrec_lib.eval.systems import resolve_systems
from mrrec_lib.evaluate_run import EVALUATED_FROM, evaluate_run, notes, plan_evaluation
from mrrec_lib.runs import STAGES, MissingStageError, RunPaths, read_json, write_parquet
from mrrec_lib.train.checkpoints import write_policy_meta


def _queries(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    """A valid queries table from (user_id, target_item_id, split) rows."""
    df = pd.DataFrame(rows, columns=["user_id", "target_item_id", "split"])
    df["qid"] = [f"q{i}-{u}" for i, u in enumerate(df["user_id"])]
    for col, dtype in QUERY_COLUMNS.items():
        if col not in df:
            df[col] = "x" if dtype == "string" else 0
    return df


TRAINED_QUERIES = _queries([("u1", "i1", "train"), ("u2", "i2", "val"), ("u3", "i3", "test")])
NEW_QUERIES = _queries([("u1", "i1", "test"), ("u1", "i9", "test"), ("u3", "i3", "test"), ("u4", "i4", "test")])


def _trained_run(out: Path, name: str = "trained", policies: tuple[str, ...] = ("sft", "grpo"), **cfg_kw) -> RunPaths:
    """A finished training run folder: config, stage records 01-04, published policies, its queries."""
    cfg = Config(run_name=name, outputs_dir=str(out), **cfg_kw)
    paths = RunPaths(out / name).ensure()
    save_config(cfg, paths.config_file)
    for stage in ("01", "02", "03", "04"):
        (paths.notebooks / f"{STAGES[stage]}.ipynb").write_text("{}")
        stages.record_stage(paths, stage, cfg, 1.0)
    for which in policies:
        final = paths.models / which / "final"
        final.mkdir(parents=True)
        write_policy_meta(final, base={"model": cfg.policy_model}, adapter=True, info={})
    write_parquet(TRAINED_QUERIES, paths.data / "queries.parquet")
    return paths


def _delta(tmp_path: Path, text: str = "sources: [agenticshop]\neval_max_queries: 2\n", name: str = "shop") -> Path:
    f = tmp_path / f"{name}.yaml"
    f.write_text(text)
    return f


@pytest.fixture
def recorder(monkeypatch):
    """Replaces papermill: records (run, stage); stage 01 writes the new queries table."""
    calls: list[tuple[str, str]] = []

    def execute_stage(stage, cfg, paths: RunPaths, log_output=False):
        calls.append((cfg.run_name, stage))
        if stage == "01":
            write_parquet(NEW_QUERIES, paths.data / "queries.parquet")
        (paths.notebooks / f"{STAGES[stage]}.ipynb").write_text("{}")
        return 0.01

    monkeypatch.setattr(runner, "execute_stage", execute_stage)
    return calls


# ---- planning: config merge, names, refusals ----------------------------------------------------


def test_plan_merges_params_over_the_trained_config_and_links_the_runs(tmp_path):
    out = tmp_path / "outputs"
    trained = _trained_run(out, seed=7, eval_recr1_run="trained-recr1", eval_recr1_params="params/ablations/recr1.yaml")
    plan = plan_evaluation(trained.root, [_delta(tmp_path, "sources: [agenticshop]\nrun_name: default\n")])
    cfg = plan.cfg
    assert (cfg.run_name, cfg.outputs_dir) == ("trained-on-shop", str(out))
    assert cfg.sources == ["agenticshop"] and cfg.seed == 7  # the delta on top of the trained run's config
    assert (cfg.eval_models_run, cfg.eval_recr1_run) == ("trained", "trained-recr1")
    assert plan.replaced == {"run_name": "default"}  # a full params file's run_name does not rename the evaluation
    assert plan.files == [trained.config_file, tmp_path / "shop.yaml"]
    assert not plan.training_keys


def test_run_name_from_the_flag_or_an_override(tmp_path):
    trained = _trained_run(tmp_path)
    delta = _delta(tmp_path)
    assert plan_evaluation(trained.root, [delta], run_name="x").cfg.run_name == "x"
    assert plan_evaluation(trained.root, [delta], {"run_name": "y"}).cfg.run_name == "y"
    assert plan_evaluation(trained.root, [], {"eval_max_queries": 3}, run_name="z").cfg.eval_max_queries == 3
    with pytest.raises(ConfigError, match="--run-name"):
        plan_evaluation(trained.root, [], {"eval_max_queries": 3})


def test_rec_r1_trained_in_the_run_itself_comes_from_it(tmp_path):
    trained = _trained_run(tmp_path)  # eval_recr1_run "": Rec-R1 was expected in the run itself
    assert plan_evaluation(trained.root, [_delta(tmp_path)]).cfg.eval_recr1_run == "trained"


def test_unknown_keys_are_errors_as_in_merge_params(tmp_path):
    trained = _trained_run(tmp_path)
    with pytest.raises(ConfigError, match="memroy_top_k"):
        plan_evaluation(trained.root, [_delta(tmp_path, "memroy_top_k: 3\n")])
    with pytest.raises(ConfigError, match="nope"):
        plan_evaluation(trained.root, [_delta(tmp_path)], {"nope": 1})


def test_refuses_a_folder_without_config_or_policies(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        plan_evaluation(tmp_path / "nothing", [_delta(tmp_path)])
    trained = _trained_run(tmp_path, policies=("sft",))
    with pytest.raises(MissingStageError, match=r"models/grpo/final \(stage 04_rl_training\)"):
        plan_evaluation(trained.root, [_delta(tmp_path)])
    no_sft = _trained_run(tmp_path, name="paper", policies=("grpo",), sft_enabled=False, grpo_start="base")
    assert plan_evaluation(no_sft.root, [_delta(tmp_path)]).cfg.eval_models_run == "paper"


def test_refuses_to_write_into_a_training_run(tmp_path):
    trained = _trained_run(tmp_path)
    _trained_run(tmp_path, name="busy")
    with pytest.raises(ConfigError, match="holds a training run"):
        plan_evaluation(trained.root, [_delta(tmp_path)], run_name="busy")
    with pytest.raises(ConfigError, match="policies come from"):
        plan_evaluation(trained.root, [_delta(tmp_path)], run_name="trained")


def test_training_keys_are_reported_not_applied(tmp_path):
    trained = _trained_run(tmp_path)
    delta = _delta(tmp_path, "sources: [agenticshop]\ngrpo_lr: 0.5\nmemory_top_k: 9\nnaive_memory_n: 2\n")
    plan = plan_evaluation(trained.root, [delta])
    assert set(plan.training_keys) == {"grpo_lr", "memory_top_k"}  # not sources (01), not naive_memory_n (05)
    assert plan.training_keys["memory_top_k"] == (Config().memory_top_k, 9)
    assert any("grpo_lr" in line and "not retrained" in line for line in notes(plan))


# ---- stage 05 loads the borrowed policies -------------------------------------------------------


def test_policy_paths_resolve_eval_models_run(tmp_path):
    cfg = Config(outputs_dir=str(tmp_path), run_name="eval", eval_models_run="trained", eval_recr1_run="rr")
    ctx = EvalContext(cfg, RunPaths(tmp_path / "eval").ensure())
    assert ctx.policy_paths("sft").root == ctx.policy_paths("grpo").root == tmp_path / "trained"
    assert ctx.policy_paths("recr1").root == tmp_path / "rr"
    no_recr1_run = EvalContext(cfg.model_copy(update={"eval_recr1_run": ""}), ctx.paths)
    assert no_recr1_run.policy_paths("recr1").root == tmp_path / "trained"
    assert EvalContext(Config(outputs_dir=str(tmp_path), run_name="eval"), ctx.paths).policy_paths("sft") == ctx.paths


def test_borrowed_policy_is_loaded_and_fingerprinted_from_the_trained_run(tmp_path):
    trained = _trained_run(tmp_path, max_users=3)  # other data than the evaluation's
    cfg = Config(outputs_dir=str(tmp_path), run_name="eval", eval_models_run="trained")
    ctx = EvalContext(cfg, RunPaths(tmp_path / "eval").ensure())
    assert ctx.policy_dir("grpo") == trained.models / "grpo" / "final"  # no same-data refusal for borrowed policies
    spec = resolve_systems(["mrrec"])[0]
    before = system_fingerprint(spec, ctx)
    (trained.models / "grpo" / "final" / "adapter_model.safetensors").write_bytes(b"retrained")
    assert system_fingerprint(spec, ctx) != before


# ---- the runner: stages 01, 02, 05 only -----------------------------------------------------------


def test_runner_never_trains_in_a_run_with_borrowed_policies(tmp_path, recorder):
    from mrrec_lib.runner import _needs_recr1_companion

    linked = Config(eval_recr1_run="abl-recr1", eval_recr1_params="params/ablations/recr1.yaml")
    assert _needs_recr1_companion(linked) and not _needs_recr1_companion(
        linked.model_copy(update={"eval_models_run": "t"})
    )
    params = _delta(tmp_path, f"run_name: e\noutputs_dir: {tmp_path}\neval_models_run: t\n")
    runner.run([params])
    assert [s for _, s in recorder] == [s for s in runner.available_stages() if s not in runner.TRAINING_STAGES]


def test_evaluate_run_builds_data_and_memory_then_table_1(tmp_path, recorder):
    out = tmp_path / "outputs"
    trained = _trained_run(out, eval_recr1_run="trained-recr1", eval_recr1_params="params/ablations/recr1.yaml")
    _trained_run(out, name="trained-recr1", policies=("sft", "recr1"), policy_uses_memory=False)
    trained_records = stages.read_records(trained)

    paths = evaluate_run(trained.root, [_delta(tmp_path)])

    assert paths.root == out / "trained-on-shop"
    assert recorder == [("trained-on-shop", "01"), ("trained-on-shop", "02"), ("trained-on-shop", "05")]
    assert stages.read_records(trained) == trained_records  # the trained run is only read
    record = read_json(paths.root / EVALUATED_FROM)
    assert (record["trained_run"], record["recr1_run"]) == ("trained", "trained-recr1")
    assert record["trained_stages"] == trained_records and set(record["recr1_stages"]) == {"01", "02", "03", "04"}
    assert record["seen_in_training"]["evaluated_requests"] == 2  # eval_max_queries of the delta

    recorder.clear()
    evaluate_run(trained.root, [_delta(tmp_path)])
    assert recorder == []  # everything current
    stages.record_stage(trained, "04", Config(run_name="trained", outputs_dir=str(out)), 2.0)  # GRPO retrained
    evaluate_run(trained.root, [_delta(tmp_path)])
    assert recorder == [("trained-on-shop", "05")]


def test_seen_in_training_counts_users_and_targets(tmp_path, recorder):
    trained = _trained_run(tmp_path)
    paths = evaluate_run(trained.root, [_delta(tmp_path, "sources: [agenticshop]\n")])  # every test request
    seen = read_json(paths.root / EVALUATED_FROM)["seen_in_training"]
    # u1's two requests (one with its trained target i1); u3 was a test user there, u4 is new.
    assert seen == {"evaluated_requests": 4, "users_trained_on": 2, "targets_trained_on": 1}


# ---- command line ---------------------------------------------------------------------------------


def test_cli_evaluate_arguments_and_errors(tmp_path, capsys):
    args = build_parser().parse_args(["evaluate", "--run", "outputs/x", "-f", "a.yaml", "-f", "b.yaml", "-p", "k=1"])
    assert (args.run, args.file, args.set, args.run_name) == ("outputs/x", ["a.yaml", "b.yaml"], ["k=1"], None)
    assert main(["evaluate", "--run", str(tmp_path / "missing"), "-f", str(_delta(tmp_path))]) == 2
    assert "config.yaml" in capsys.readouterr().err
