from pathlib import Path

import pytest

from mrrec_lib.config import FIELDS, Config, ConfigError, load_config, merge_params, notebook_config, save_config


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_are_valid_and_digest_is_stable():
    assert Config().digest() == Config().digest()
    assert Config(memory_top_k=5).digest() != Config().digest()


def test_files_merge_left_to_right(tmp_path):
    a = write(tmp_path, "a.yaml", "memory_top_k: 2\nseed: 1\n")
    b = write(tmp_path, "b.yaml", "memory_top_k: 5\n")
    cfg = load_config(a, b)
    assert cfg.memory_top_k == 5 and cfg.seed == 1


def test_unknown_key_is_named(tmp_path):
    p = write(tmp_path, "bad.yaml", "memory_topk: 2\n")
    with pytest.raises(ConfigError, match="memory_topk"):
        load_config(p)


def test_nested_params_rejected(tmp_path):
    p = write(tmp_path, "nested.yaml", "grpo:\n  lr: 1\n")
    with pytest.raises(ConfigError, match="flat"):
        load_config(p)


def test_bad_type_and_missing_file(tmp_path):
    p = write(tmp_path, "t.yaml", "memory_top_k: many\n")
    with pytest.raises(ConfigError, match="memory_top_k"):
        load_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_unknown_override_rejected():
    with pytest.raises(ConfigError, match="bogus"):
        merge_params([], {"bogus": 1})


def test_save_roundtrip(tmp_path):
    cfg = Config(memory_top_k=4, sources=["agenticshop"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_notebook_config_takes_injected_keys(tmp_path):
    p = write(tmp_path, "a.yaml", "memory_top_k: 2\n")
    ns = {"config_file": str(p), "run_name": "x", "memory_top_k": 4, "unrelated": 1}
    cfg = notebook_config(ns)
    assert cfg.memory_top_k == 4 and cfg.run_name == "x"


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parents[1].glob("params/**/*.yaml")))
def test_every_shipped_params_file_loads(path):
    # Ablation deltas are merged over the default, like `mrrec ablate` does.
    base = path.parents[1] / "default.yaml" if path.parent.name == "ablations" else None
    cfg = load_config(*(p for p in (base, path) if p))
    assert set(cfg.model_dump()) == FIELDS


def test_smoke_recr1_companion_is_the_recr1_delta_plus_no_validation():
    """The smoke run's companion must stay Rec-R1: every key of the shipped delta, with the same value."""
    params = Path(__file__).resolve().parents[1] / "params"
    recr1 = merge_params([params / "ablations" / "recr1.yaml"])
    smoke = merge_params([params / "smoke_recr1.yaml"])
    assert load_config(params / "smoke.yaml").eval_recr1_params == "params/smoke_recr1.yaml"
    assert {k: smoke.get(k) for k in recr1} == recr1
    assert {k: v for k, v in smoke.items() if k not in recr1} == {"sft_eval_queries": 0, "grpo_eval_queries": 0}


def test_notebook_config_empty_run_name_keeps_the_configs(tmp_path):
    p = write(tmp_path, "a.yaml", "run_name: mine\n")
    assert notebook_config({"config_file": str(p), "run_name": ""}).run_name == "mine"


def test_policy_prompt_names_its_choices(tmp_path):
    assert Config().policy_prompt == "full"
    p = write(tmp_path, "p.yaml", "policy_prompt: tiny\n")
    with pytest.raises(ConfigError, match=r"policy_prompt\n.*'full' or 'compact'"):
        load_config(p)
