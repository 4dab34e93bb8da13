from mrrec_lib.cli import main
from mrrec_lib.estimate import estimate, format_estimate


def test_paper_config_scales_with_the_pool(root):
    paper = estimate([root / "params" / "paper.yaml"])
    smoke = estimate([root / "params" / "smoke.yaml"])
    emb = {r["stage"]: r["bytes"] for r in paper["rows"]}["02 memory"]
    assert emb >= 1_058_417 * 1024 * 4  # one float32 copy of the 1M x 1024 pool at least
    assert paper["sizes"]["items"] > 100 * smoke["sizes"]["items"]
    assert "no GPU measurement" in format_estimate(paper)


def test_cli_estimate_prints_every_stage(root, capsys):
    assert main(["estimate", str(root / "params" / "smoke.yaml")]) == 0
    out = capsys.readouterr().out
    assert all(s in out for s in ("01 data", "02 memory", "03 sft", "04 grpo", "05 eval", "total"))


def _write_record(results, name, cfg, seconds, latency, counts=None):
    """A minimal committed record: merged config, stage records, per-request latencies, stage-01 counts."""
    import gzip

    import yaml

    from mrrec_lib.runs import write_json
    from mrrec_lib.stages import stage_hash

    rec = results / name
    (rec / "metrics").mkdir(parents=True)
    (rec / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    write_json(rec / "stages.json", {s: {"hash": stage_hash(cfg, s), "seconds": sec} for s, sec in seconds.items()})
    write_json(rec / "metrics" / "05_eval.json", {})
    if counts:
        write_json(rec / "metrics" / "01_data.json", counts)
    rows = ["system,qid,user_id,category,target_item_id,latency_s"]
    rows += [f"{system},q{i},u{i},c,t{i},{lat}" for system, lat in latency.items() for i in range(3)]
    with gzip.open(rec / "per_query.csv.gz", "wt") as f:
        f.write("\n".join(rows) + "\n")


def test_records_price_the_stages_they_measured(root, tmp_path):
    from mrrec_lib.config import load_config

    smoke = root / "params" / "smoke.yaml"
    cfg = load_config(smoke)
    counts = {"counts": {"queries": 500, "users": 50, "categories": 4, "candidate items": 20_000, "interactions": 900},
              "queries_per_split": {"train": 300, "val": 50, "test": 150}}
    _write_record(tmp_path, "a", cfg, {"01": 7.0, "02": 300.0, "05": 50.0}, {"mrrec": 2.0, "query_dense": 0.01}, counts)
    systems = tmp_path / "systems.yaml"
    systems.write_text("eval_systems: [query_dense, mrrec]\neval_max_queries: 0\n")
    est = estimate([smoke, systems], results_dir=tmp_path)
    rows = {r["stage"][:2]: r for r in est["rows"]}
    assert est["sizes"]["items"] == 20_000 and est["sizes"]["test_queries"] == 150
    assert rows["01"]["seconds"] == 7.0 and rows["02"]["seconds"] == 300.0
    assert rows["02"]["basis"].startswith("measured: results/a")
    # Stage 05 was not recorded with these params: each system's recorded seconds per request prices it.
    assert 150 * 2.01 <= rows["05"]["seconds"] < 150 * 2.01 + 60
    assert rows["05"]["basis"] == "records' s/request of 2 systems"
    # Without records every row falls back to the benchmark speeds.
    bare = {r["stage"][:2]: r for r in estimate([smoke], results_dir=tmp_path / "none")["rows"]}
    assert all(r["basis"] == "benchmarks" for r in bare.values())
    assert bare["02"]["seconds"] != 300.0


def test_records_of_another_policy_model_price_nothing(root, tmp_path):
    from mrrec_lib.config import load_config

    smoke = root / "params" / "smoke.yaml"
    other = load_config(smoke, overrides={"policy_model": "Qwen/Qwen2.5-3B-Instruct"})
    _write_record(tmp_path, "qwen", other, {"01": 7.0, "05": 50.0}, {"mrrec": 90.0})
    rows = estimate([smoke], results_dir=tmp_path)["rows"]
    assert all(r["basis"] == "benchmarks" for r in rows)


def test_training_speeds_leave_validation_out(root, tmp_path):
    from mrrec_lib.config import load_config
    from mrrec_lib.recorded_costs import recorded_costs

    cfg = load_config(root / "params" / "smoke.yaml", overrides={
        "sft_max_steps": 10, "grpo_max_steps": 4, "grpo_num_generations": 4, "grpo_batch_prompts": 1,
        "grpo_eval_every": 4, "grpo_eval_queries": 16})
    # Validation at steps 0 and 4 decodes 2 x 16 requests at the recorded 2 s each; the rest is 16 completions.
    _write_record(tmp_path, "run", cfg, {"03": 500.0, "04": 2 * 16 * 2.0 + 16 * 10.0, "05": 9.0}, {"mrrec": 2.0})
    costs = recorded_costs(tmp_path)
    assert costs.sft_seconds_per_step == 50.0
    assert costs.grpo_seconds_per_completion == 10.0
