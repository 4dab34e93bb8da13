"""GRPO stage: config building (CPU and paper-scale dry run), tool-result masking, a 2-step smoke run."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from train_support import (
    ANSWER_TEXT,
    TOOL_CALL_TEXT,
    TOOL_RESULT,
    boxed_reward,
    fake_tool_factory,
    grpo_rows,
    smol_tokenizer,
    tiny_model,
)

from mrrec_lib.config import Config, load_config
from mrrec_lib.deadline import DeadlineReached
from mrrec_lib.runs import RunPaths, read_jsonl
from mrrec_lib.train.callbacks import SaveBeforeDeadline, StepLogger, ValidationCallback
from mrrec_lib.train.environment import make_memory_env, tool_schema
from mrrec_lib.train.grpo import batch_layout, before_after, build_grpo_config, build_grpo_trainer


def _cfg(tmp_path, **kw) -> Config:
    base = dict(
        outputs_dir=str(tmp_path),
        run_name="t",
        device="cpu",
        grpo_num_generations=2,
        grpo_batch_prompts=2,
        grpo_max_steps=2,
        grpo_max_completion_length=256,
        max_tool_calls=2,
        grpo_save_every=100,
        lora_r=4,
        lora_alpha=8,
        grpo_micro_batch=0,
    )
    base.update(kw)
    return Config(**base)


def _paths(tmp_path) -> RunPaths:
    return RunPaths(tmp_path / "t").ensure()


def test_batch_layout_counts_completions():
    cfg = Config(grpo_batch_prompts=256, grpo_num_generations=5, grpo_micro_batch=8)
    assert batch_layout(cfg, processes=4) == (8, 40)
    assert batch_layout(Config(grpo_batch_prompts=2, grpo_num_generations=4, grpo_micro_batch=0), 1) == (8, 1)
    assert batch_layout(Config(grpo_batch_prompts=2, grpo_num_generations=4, grpo_micro_batch=2), 1) == (2, 4)
    assert batch_layout(Config(grpo_batch_prompts=1, grpo_num_generations=2, grpo_micro_batch=8), 1) == (2, 1)
    with pytest.raises(ValueError, match="grpo_micro_batch"):
        batch_layout(Config(grpo_batch_prompts=2, grpo_num_generations=4, grpo_micro_batch=3), 1)
    with pytest.raises(ValueError, match="processes"):
        batch_layout(Config(grpo_batch_prompts=1, grpo_num_generations=5), 2)


def test_cpu_config_is_cpu_safe(tmp_path):
    cfg = _cfg(tmp_path)
    args = build_grpo_config(cfg, _paths(tmp_path))
    assert args.use_cpu and not args.bf16 and not args.activation_checkpointing
    assert args.num_generations == 2 and args.per_device_train_batch_size == 4
    assert args.max_tool_calling_iterations == 2
    assert args.epsilon == cfg.grpo_epsilon and args.beta == cfg.grpo_beta and args.learning_rate == cfg.grpo_lr
    assert (
        build_grpo_config(_cfg(tmp_path, policy_uses_memory=False), _paths(tmp_path)).max_tool_calling_iterations
        is None
    )
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="use_vllm"):
            build_grpo_config(_cfg(tmp_path, use_vllm=True), _paths(tmp_path))


def test_paper_settings_dry_run_builds_trainer(tmp_path, root):
    """params/paper.yaml (4 GPUs, vLLM, ZeRO-3) checked on CPU: the config builds and a trainer constructs."""
    cfg = load_config(
        root / "params" / "paper.yaml",
        overrides={"outputs_dir": str(tmp_path), "run_name": "t", "device": "cpu", "grpo_micro_batch": 8},
    )
    assert cfg.use_vllm and cfg.accelerate_config and (root / cfg.accelerate_config).exists()
    args = build_grpo_config(cfg, _paths(tmp_path), processes=4, dry_run=True)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (8, 40)
    assert args.num_generations == 5 and args.max_completion_length == 768 and args.learning_rate == 1e-6
    tok = smol_tokenizer()
    trainer = build_grpo_trainer(
        cfg, args, tiny_model(tok), tok, grpo_rows(4), [boxed_reward], make_memory_env(None, 3, fake_tool_factory)
    )
    assert [t.__name__ for t in trainer.tools] == ["memory_retrieval_tool"]


def _scripted_generation(trainer, tok):
    """Replace model sampling: turn 1 emits a tool call, turn 2 (after the tool result) the boxed answer."""
    eos = tok.eos_token_id
    call = tok(TOOL_CALL_TEXT, add_special_tokens=False)["input_ids"] + [eos]
    answer = tok(ANSWER_TEXT, add_special_tokens=False)["input_ids"] + [eos]
    tool_response_ids = tok("<tool_response>", add_special_tokens=False)["input_ids"]

    def generate(prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        def after_tool(ids):
            n = len(tool_response_ids)
            return any(ids[i : i + n] == tool_response_ids for i in range(len(ids) - n + 1))

        return [answer if after_tool(ids) else call for ids in prompt_ids], None

    trainer._generate_single_turn = generate
    return call, answer


def test_tool_result_tokens_are_excluded_from_the_loss(tmp_path):
    cfg = _cfg(tmp_path)
    tok = smol_tokenizer()
    args = build_grpo_config(cfg, _paths(tmp_path))
    rows = grpo_rows(2)
    trainer = build_grpo_trainer(
        cfg, args, tiny_model(tok), tok, rows, [boxed_reward], make_memory_env(None, 3, fake_tool_factory)
    )
    call, answer = _scripted_generation(trainer, tok)
    trainer.model.train()
    inputs = [r for r in rows for _ in range(cfg.grpo_num_generations)]
    batch = trainer._generate_and_score_completions(inputs)

    ids, mask = batch["completion_ids"][0], batch["completion_mask"][0]
    tool_mask = batch["tool_mask"][0]
    n = int(mask.sum())
    masked_text = tok.decode(ids[:n][tool_mask[:n] == 0])
    kept_text = tok.decode(ids[:n][tool_mask[:n] == 1])
    # the tool result (and its chat-template framing) is exactly what is masked; the model's own turns are kept
    assert TOOL_RESULT in masked_text and "<tool_response>" in masked_text
    assert "snapshot u0@100" in masked_text  # the environment searched this row's memory snapshot
    assert "memory_retrieval_tool" not in masked_text and "ideal_item_profile" not in masked_text
    assert tok.decode(call) in kept_text and tok.decode(answer) in kept_text
    assert int(tool_mask[:n].sum()) == len(call) + len(answer)

    # gradient proof: d(loss)/d(log-prob) is zero at every tool-result position, nonzero at the model's own tokens
    captured = {}
    original = trainer._get_per_token_logps_and_entropies

    def spy(*a, **kw):
        logps, entropies, aux = original(*a, **kw)
        logps = logps.detach().requires_grad_(True)
        captured["logps"] = logps
        return logps, entropies, aux

    trainer._get_per_token_logps_and_entropies = spy
    batch["advantages"] = torch.tensor([1.0, -1.0, 0.5, -0.5])  # nonzero, so the policy term has a gradient
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which this test bypasses
    loss = trainer._compute_loss(trainer.model, batch)
    loss.backward()
    grad = captured["logps"].grad
    valid = batch["completion_mask"].bool()
    tool_pos = valid & (batch["tool_mask"] == 0)
    model_pos = valid & (batch["tool_mask"] == 1)
    assert tool_pos.any() and torch.all(grad[tool_pos] == 0)
    assert torch.all(grad[model_pos] != 0)


def test_tool_schema_matches_what_trl_renders(tmp_path):
    schema = tool_schema()
    assert schema["function"]["name"] == "memory_retrieval_tool"
    assert list(schema["function"]["parameters"]["properties"]) == ["query"]
    tok = smol_tokenizer()
    env = make_memory_env(None, 3, fake_tool_factory)()
    msgs = [{"role": "user", "content": "hi"}]
    rendered_from_method = tok.apply_chat_template(msgs, tools=[env.memory_retrieval_tool], tokenize=False)
    assert rendered_from_method == tok.apply_chat_template(msgs, tools=[schema], tokenize=False)


def test_grpo_smoke_two_steps_with_validation_and_logs(tmp_path):
    cfg = _cfg(tmp_path, grpo_max_steps=2)
    paths = _paths(tmp_path)
    tok = smol_tokenizer()
    args = build_grpo_config(cfg, paths)
    evaluations = []

    def evaluate(model):
        evaluations.append(model.training)
        return {"ndcg@100": 0.5 - 0.1 * len(evaluations), "format_rate": 0.0}

    saved = []
    validator = ValidationCallback(evaluate, saved.append, paths.logs / "val.jsonl", every=1, patience=1)
    trainer = build_grpo_trainer(
        cfg,
        args,
        tiny_model(tok),
        tok,
        grpo_rows(4),
        [boxed_reward],
        make_memory_env(None, 3, fake_tool_factory),
        [StepLogger(paths.logs / "steps.jsonl"), validator],
    )
    _scripted_generation(trainer, tok)
    trainer.train()
    val = read_jsonl(paths.logs / "val.jsonl")
    # step 0 is the best (the metric only falls), patience 1 stops after the first worse evaluation
    assert [r["step"] for r in val] == [0, 1] and saved == [0]
    assert trainer.state.global_step == 1
    assert evaluations == [False, False]  # evaluated in eval mode
    steps = read_jsonl(paths.logs / "steps.jsonl")
    logged = {k for row in steps for k in row}
    assert {"reward", "tools/call_frequency", "completions/mean_length", "step_seconds"} <= logged
    assert steps[0]["tools/call_frequency"] == pytest.approx(1.0)
    assert steps[0]["reward"] == pytest.approx(1.0)
    assert (paths.logs / "steps.csv").exists()
    # a resumed callback replays its history: patience already used up, best stays at step 0
    again = ValidationCallback(evaluate, saved.append, paths.logs / "val.jsonl", every=1, patience=1)
    assert (again.best_step, again.bad_evals) == (0, 1)


def test_script_entry_reads_the_run_config(tmp_path):
    """`python -m mrrec_lib.train.grpo --config ...` (what `accelerate launch` runs) fails clearly on a bad config."""
    from mrrec_lib.config import ConfigError
    from mrrec_lib.train.grpo import main

    with pytest.raises(ConfigError, match="not found"):
        main(["--config", str(tmp_path / "missing.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("grpo_num_generation: 4\n")  # misspelled key
    with pytest.raises(ConfigError, match="grpo_num_generation"):
        main(["--config", str(bad)])


class _ScriptedPolicy:
    """A TokenPolicy that calls the tool on its first turn and answers after the tool result."""

    def __init__(self, model, tok):
        self.model, self.tokenizer = model, tok
        self.call = tok(TOOL_CALL_TEXT, add_special_tokens=False)["input_ids"]
        self.answer = tok(ANSWER_TEXT, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        self.marker = tok("<tool_response>", add_special_tokens=False)["input_ids"]

    def generate_ids(self, contexts, max_new_tokens, temperature, top_p, seed):
        def after_tool(ids):
            n = len(self.marker)
            return any(ids[i : i + n] == self.marker for i in range(len(ids) - n + 1))

        return [list(self.answer if after_tool(c) else self.call) for c in contexts]


def _engine_trainer(tmp_path, policy_for=None, **kw):
    from mrrec_lib.agent.rollout import ToolResult
    from mrrec_lib.train.engine_rollout import make_rollout_func

    cfg = _cfg(tmp_path, **kw)
    tok = smol_tokenizer()
    searched = []

    def tool_for(row):
        def tool(query):
            searched.append((row["snapshot"], query))
            return ToolResult(text=f"{TOOL_RESULT}\n(snapshot {row['snapshot']})")

        return tool

    rollout = make_rollout_func(cfg, tool_for, policy_for)
    args = build_grpo_config(cfg, _paths(tmp_path))
    rows = grpo_rows(2)
    trainer = build_grpo_trainer(cfg, args, tiny_model(tok), tok, rows, [boxed_reward], rollout_func=rollout)
    return cfg, tok, rows, trainer, searched


def test_engine_rollouts_mask_tool_results_and_search_each_rows_memory(tmp_path):
    """rollout_engine kv: our rollouts feed TRL; tool-result tokens are masked, each row searched its own snapshot."""
    cfg, tok, rows, trainer, searched = _engine_trainer(tmp_path, policy_for=_ScriptedPolicy, rollout_engine="generate")
    trainer.model.train()
    inputs = [r for r in rows for _ in range(cfg.grpo_num_generations)]
    batch = trainer._generate_and_score_completions(inputs)
    assert [s for s, _ in searched] == [r["snapshot"] for r in inputs]
    assert trainer.model.training  # restored after sampling in eval mode
    for i, row in enumerate(inputs):
        ids, mask, tool_mask = batch["completion_ids"][i], batch["completion_mask"][i], batch["tool_mask"][i]
        n = int(mask.sum())
        masked, kept = tok.decode(ids[:n][tool_mask[:n] == 0]), tok.decode(ids[:n][tool_mask[:n] == 1])
        assert TOOL_RESULT in masked and f"snapshot {row['snapshot']}" in masked and "<tool_response>" in masked
        assert "memory_retrieval_tool" in kept and "ideal_item_profile" in kept and TOOL_RESULT not in kept
    # the answer after the tool result earned the reward; the rows' rewards reached TRL's advantages
    assert trainer._metrics["train"]["tools/call_frequency"][-1] == pytest.approx(1.0)
    assert trainer._metrics["train"]["timing/rollout_seconds"][-1] > 0
    assert torch.all(batch["advantages"] == 0)  # equal rewards within each group


def test_engine_rollouts_train_a_real_step(tmp_path):
    """The KV engine samples from the training model itself (tiny random weights) and a GRPO step completes."""
    cfg, tok, rows, trainer, _ = _engine_trainer(tmp_path, grpo_max_steps=1, grpo_max_completion_length=48)
    trainer.train()
    assert trainer.state.global_step == 1
    assert any("reward" in h for h in trainer.state.log_history)


def test_grpo_seed_draws_the_rollouts_and_the_data_order(tmp_path, monkeypatch):
    """A GRPO seed replicate changes what stage 04 samples; unset, stage 04 draws from the run's seed as before."""
    from mrrec_lib.train import engine_rollout

    assert build_grpo_config(_cfg(tmp_path), _paths(tmp_path)).seed == _cfg(tmp_path).seed
    args = build_grpo_config(_cfg(tmp_path, grpo_seed=7), _paths(tmp_path))
    assert args.seed == 7 and args.data_seed == 7
    seeds = []

    def fake_rollouts(*a, seed, **kw):
        seeds.append(seed)
        raise RuntimeError("stop after the seed")

    monkeypatch.setattr(engine_rollout, "run_rollouts", fake_rollouts)
    for grpo_seed in (None, 7):
        cfg, _, rows, trainer, _ = _engine_trainer(tmp_path, grpo_seed=grpo_seed)
        with pytest.raises(RuntimeError, match="stop after the seed"):
            trainer._generate_and_score_completions([r for r in rows for _ in range(cfg.grpo_num_generations)])
    assert seeds == [cfg.seed + 100_003, 7 + 100_003]


def test_no_validation_queries_means_no_before_after():
    """`grpo_eval_queries: 0` (the smoke run's Rec-R1 companion) evaluates nothing, so notebook 04 records no pairs."""
    summary = {"start": "sft", "variant": "grpo", "best_step": 1, "validation": []}
    table, paired = before_after(Config(grpo_eval_queries=0), None, summary)
    assert table.empty and paired == []


def test_grpo_stops_before_the_deadline_with_a_checkpoint_of_its_last_step(tmp_path):
    cfg = _cfg(tmp_path, grpo_max_steps=3, grpo_save_every=50)
    paths = _paths(tmp_path)
    tok = smol_tokenizer()
    args = build_grpo_config(cfg, paths)
    far, near = SaveBeforeDeadline(time.time() + 86400), SaveBeforeDeadline(time.time() + 30)
    trainer = build_grpo_trainer(cfg, args, tiny_model(tok), tok, grpo_rows(4), [boxed_reward],
                                 make_memory_env(None, 3, fake_tool_factory), [near, far, StepLogger(paths.logs / "s.jsonl")])
    _scripted_generation(trainer, tok)
    trainer.train()
    assert trainer.state.global_step == 1 and far.stopped_at is None  # a step plus a save does not fit in 30 s
    assert [p.name for p in Path(args.output_dir).glob("checkpoint-*")] == ["checkpoint-1"]  # none periodic before 50
    far.raise_if_stopped()
    with pytest.raises(DeadlineReached, match="checkpoint-1"):
        near.raise_if_stopped()
    # at the last step training ends anyway: the stage finishes instead of pausing for a resume with nothing left
    from types import SimpleNamespace

    last = SaveBeforeDeadline(time.time())
    control = SimpleNamespace(should_save=False, should_training_stop=False)
    last.on_step_end(None, SimpleNamespace(global_step=3, max_steps=3), control)
    assert last.stopped_at is None and not control.should_save


def test_resume_drops_log_rows_written_after_the_checkpoint(tmp_path):
    """A run killed after logging step 11 but checkpointed at 10 reruns step 11: its curve must not hold it twice."""
    from types import SimpleNamespace

    from mrrec_lib.runs import append_jsonl

    steps, val = tmp_path / "steps.jsonl", tmp_path / "val.jsonl"
    append_jsonl(steps, [{"step": s, "reward": 0.1 * s} for s in (1, 10, 11)])
    append_jsonl(val, [{"step": 0, "ndcg@100": 0.2}, {"step": 10, "ndcg@100": 0.1}, {"step": 15, "ndcg@100": 0.3}])
    state = SimpleNamespace(global_step=10, is_world_process_zero=True)
    StepLogger(steps).on_train_begin(None, state, None)
    assert [r["step"] for r in read_jsonl(steps)] == [1, 10]
    validator = ValidationCallback(lambda m: {"ndcg@100": 0.0}, lambda s: None, val, every=5, patience=3)
    assert validator.best_step == 15  # read from the whole log at construction
    validator.on_train_begin(None, state, None, model=None)  # step 10 already validated: nothing evaluated
    assert [r["step"] for r in read_jsonl(val)] == [0, 10]
    assert (validator.best_step, validator.bad_evals) == (0, 1)


def test_a_resume_off_the_validation_schedule_does_not_validate(tmp_path):
    """Resumed from a deadline stop at step 18 of an every-10 schedule, the run validates at 20 as an uninterrupted
    one would, not also at 18: the kept step and the patience count must not depend on where a session ended."""
    from types import SimpleNamespace

    from mrrec_lib.runs import append_jsonl

    val = tmp_path / "val.jsonl"
    append_jsonl(val, [{"step": 0, "ndcg@100": 0.15}, {"step": 10, "ndcg@100": 0.22}])
    evaluated = []
    validator = ValidationCallback(lambda m: evaluated.append(1) or {"ndcg@100": 0.23}, lambda s: None, val,
                                   every=10, patience=2)
    model = SimpleNamespace(training=False, eval=lambda: None, train=lambda: None)
    control = SimpleNamespace(should_training_stop=False)
    validator.on_train_begin(None, SimpleNamespace(global_step=18, is_world_process_zero=True), control, model=model)
    assert evaluated == [] and [r["step"] for r in read_jsonl(val)] == [0, 10]
    validator.on_step_end(None, SimpleNamespace(global_step=20, is_world_process_zero=True), control, model=model)
    assert evaluated == [1] and [r["step"] for r in read_jsonl(val)] == [0, 10, 20] and validator.best_step == 20
    fresh = ValidationCallback(lambda m: evaluated.append(1) or {"ndcg@100": 0.1}, lambda s: None, tmp_path / "v0.jsonl",
                               every=10, patience=2)
    fresh.on_train_begin(None, SimpleNamespace(global_step=0, is_world_process_zero=True), control, model=model)
    assert len(evaluated) == 2 and fresh.best_step == 0  # the starting policy is still validated before step 1
