import pytest

from mrrec_lib import stages
from mrrec_lib.ablate import flatten_metrics, seed_from_donor
from mrrec_lib.config import FIELDS, Config
from mrrec_lib.runs import MissingStageError, RunPaths, append_jsonl, read_jsonl, write_json


def test_every_key_is_classified_or_ignored():
    for key in FIELDS:
        assert stages.first_stage(key) in {"01", "02", "03", "04", "05", "06", "07"}


def test_downstream_key_does_not_change_upstream_hash():
    a, b = Config(), Config(memory_top_k=5, grpo_lr=3e-5)
    assert stages.stage_hash(a, "01") == stages.stage_hash(b, "01")
    assert stages.stage_hash(a, "02") == stages.stage_hash(b, "02")
    assert stages.stage_hash(a, "03") != stages.stage_hash(b, "03")
    assert stages.stage_hash(Config(), "04") != stages.stage_hash(Config(grpo_lr=3e-5), "04")
    assert stages.stage_hash(Config(), "03") == stages.stage_hash(Config(grpo_lr=3e-5), "03")


def test_unclassified_upstream_key_invalidates_everything():
    a, b = Config(), Config(max_users=3)
    assert all(stages.stage_hash(a, s) != stages.stage_hash(b, s) for s in ("01", "02", "05"))


def test_run_name_does_not_matter():
    assert stages.stage_hash(Config(run_name="a"), "05") == stages.stage_hash(Config(run_name="b"), "05")


def test_hash_neutral_key_is_hashed_only_away_from_its_neutral_value():
    """policy_prompt: full is what every committed record ran, so it leaves their hashes alone; compact is a new run."""
    assert set(stages.HASH_NEUTRAL_DEFAULTS) <= FIELDS
    assert all(getattr(Config(), k) == v for k, v in stages.HASH_NEUTRAL_DEFAULTS.items())
    full, compact = Config(), Config(policy_prompt="compact")
    assert stages.first_stage("policy_prompt") == "03"
    neutral = set(stages.HASH_NEUTRAL_DEFAULTS)
    assert stages.stage_hash(full, "05") == full.digest([k for k in stages.stage_keys("05") if k not in neutral])
    assert all(stages.stage_hash(full, s) == stages.stage_hash(compact, s) for s in ("01", "02"))
    assert all(stages.stage_hash(full, s) != stages.stage_hash(compact, s) for s in ("03", "04", "05"))


def test_grpo_seed_reruns_rl_alone():
    """A GRPO seed replicate shares data, memory and SFT with the base run; unset, it is the base run."""
    base, replica = Config(), Config(grpo_seed=1)
    assert stages.first_stage("grpo_seed") == "04"
    assert stages.stage_hash(base, "05") == stages.stage_hash(Config(grpo_seed=None), "05")
    assert all(stages.stage_hash(base, s) == stages.stage_hash(replica, s) for s in ("01", "02", "03"))
    assert all(stages.stage_hash(base, s) != stages.stage_hash(replica, s) for s in ("04", "05"))


def test_resume_key_is_hash_neutral_too():
    from mrrec_lib.train.common import BUDGET_KEYS, resume_key

    own_budget = {k for k in BUDGET_KEYS if stages.first_stage(k) == "04"}
    keys = [k for k in stages.stage_keys("04") if k not in own_budget | set(stages.HASH_NEUTRAL_DEFAULTS)]
    assert resume_key(Config(), "04") == Config().digest(keys)
    assert resume_key(Config(), "04") != resume_key(Config(policy_prompt="compact"), "04")


def _finished_run(root, cfg, upto):
    paths = RunPaths(root).ensure()
    for s in upto:
        (paths.notebooks / f"{stages.STAGES[s]}.ipynb").write_text("{}")
        stages.record_stage(paths, s, cfg, 1.0)
    return paths


def test_is_current_and_forget(tmp_path):
    cfg = Config()
    paths = _finished_run(tmp_path / "r", cfg, ["01", "02", "03"])
    assert stages.is_current(paths, "02", cfg)
    assert not stages.is_current(paths, "02", Config(memory_builder="llm"))
    stages.forget_from(paths, "02")
    assert not stages.is_current(paths, "02", cfg) and stages.is_current(paths, "01", cfg)


def test_seed_from_donor_shares_matching_prefix_only(tmp_path):
    outputs = tmp_path / "outputs"
    base = Config(run_name="base")
    donor = _finished_run(outputs / "base", base, ["01", "02", "03", "04", "05"])
    (donor.data / "items.parquet").write_text("items")
    (donor.memory / "local_entries.parquet").write_text("mem")
    (donor.models / "sft").mkdir()
    (donor.models / "sft" / "adapter.bin").write_text("sft")
    write_json(donor.metrics_file("03_sft"), {"x": 1})
    (donor.logs / "03_sft_train.jsonl").write_text("{}\n")
    (donor.logs / "04_grpo_steps.jsonl").write_text("{}\n")
    (donor.figures / "04_rewards.png").write_text("png")
    abl = Config(run_name="abl", grpo_lr=3e-5)  # differs from stage 04 on
    paths = RunPaths(outputs / "abl").ensure()
    name, shared = seed_from_donor(abl, paths, outputs)
    assert name == "base" and shared == ["01", "02", "03"]
    assert (paths.data / "items.parquet").read_text() == "items"
    assert (paths.models / "sft" / "adapter.bin").exists()
    assert (paths.metrics / "03_sft.json").exists() and (paths.logs / "03_sft_train.jsonl").exists()
    assert not (paths.logs / "04_grpo_steps.jsonl").exists() and not (paths.figures / "04_rewards.png").exists()
    assert stages.is_current(paths, "03", abl) and not stages.is_current(paths, "04", abl)
    # A run that already has records is never overwritten by a donor.
    assert seed_from_donor(abl, paths, outputs) == (None, [])
    # An evaluation run (`mrrec evaluate --share`) takes data and memory only, never a trained stage.
    evaluation = RunPaths(outputs / "eval").ensure()
    assert seed_from_donor(abl, evaluation, outputs, last_stage="02")[1] == ["01", "02"]
    assert not (evaluation.models / "sft").exists() and not stages.is_current(evaluation, "03", abl)


def test_flatten_metrics(tmp_path):
    paths = RunPaths(tmp_path / "r").ensure()
    write_json(paths.metrics_file("05_eval"), {"systems": {"mrrec": {"metrics": {"N@100": {"mean": 0.1, "lo": 0.0, "hi": 0.2}}}}})
    rows = flatten_metrics(paths.root)
    assert rows == [{"system": "mrrec", "status": "ok", "N@100": 0.1, "N@100_lo": 0.0, "N@100_hi": 0.2}]


def test_require_names_the_stage(tmp_path):
    paths = RunPaths(tmp_path / "r").ensure()
    with pytest.raises(MissingStageError, match="01_data_prep"):
        paths.require(paths.data / "items.parquet", "01")


def test_jsonl_survives_torn_last_line(tmp_path):
    f = tmp_path / "x.jsonl"
    append_jsonl(f, [{"a": 1}, {"a": 2}])
    with open(f, "a") as fh:
        fh.write('{"a": 3')
    assert read_jsonl(f) == [{"a": 1}, {"a": 2}]


def test_memory_building_keys_are_stage_02_and_retrieval_knobs_stage_03():
    assert stages.first_stage("memory_builder") == "02"
    assert stages.first_stage("memory_chunk_chars") == "02"
    assert stages.first_stage("memory_top_k") == "03"
    assert stages.first_stage("ablation_summary") == "06"


def test_write_json_turns_nan_into_null(tmp_path):
    import json

    import numpy as np

    f = write_json(tmp_path / "m.json", {"a": float("nan"), "b": [np.float32("nan"), 1.0], "c": np.array([np.inf])})
    assert json.loads(f.read_text()) == {"a": None, "b": [None, 1.0], "c": [None]}


def test_recr1_companion_only_when_table_1_needs_it():
    from mrrec_lib.runner import _needs_recr1_companion

    on = Config(eval_recr1_run="abl-recr1", eval_recr1_params="params/ablations/recr1.yaml")
    assert _needs_recr1_companion(on)
    assert not _needs_recr1_companion(on.model_copy(update={"eval_systems": ["mrrec"]}))
    assert not _needs_recr1_companion(on.model_copy(update={"run_name": "abl-recr1"}))  # the companion itself
    assert not _needs_recr1_companion(Config(eval_recr1_run="abl-recr1"))  # no delta: the folder must exist


def test_recr1_companion_names_a_bad_delta(tmp_path):
    from mrrec_lib.ablate import train_recr1_companion

    base = tmp_path / "base.yaml"
    base.write_text(f"outputs_dir: {tmp_path / 'out'}\n")
    cfg = Config(outputs_dir=str(tmp_path / "out"), eval_recr1_run="r", eval_recr1_params=str(tmp_path / "nope.yaml"))
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        train_recr1_companion([base], None, cfg)
    memoryful = tmp_path / "memoryful.yaml"
    memoryful.write_text("seed: 3\n")
    with pytest.raises(ValueError, match="policy_uses_memory: false"):
        train_recr1_companion([base], None, cfg.model_copy(update={"eval_recr1_params": str(memoryful)}))


def test_paused_time_counts_toward_the_stage_under_its_own_config(tmp_path):
    """Time a stage spent before a deadline stopped it is added when it finishes, unless the config changed."""
    paths = RunPaths(tmp_path / "run").ensure()
    a, b = Config(), Config(memory_top_k=5)
    assert stages.record_pause(paths, "03", a, 60) == 60 and stages.record_pause(paths, "03", a, 40) == 100
    assert stages.record_pause(paths, "03", b, 10) == 10  # another config's partial outputs are not resumed
    stages.record_stage(paths, "03", a, 5)
    assert stages.read_records(paths)["03"]["seconds"] == 5 and "paused_seconds" not in stages.read_records(paths)["03"]
    assert stages.read_paused(paths) == {}
    stages.record_pause(paths, "04", a, 30)
    stages.record_stage(paths, "04", a, 5)
    assert stages.read_records(paths)["04"]["seconds"] == 35 and stages.read_records(paths)["04"]["paused_seconds"] == 30
