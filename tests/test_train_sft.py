"""SFT warm-up: scripted trajectories, reward filtering, assistant-only loss mask, training + resume + loading."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from train_support import TOOL_RESULT, smol_tokenizer, tiny_model

from mrrec_lib.agent.parse import parse_answer
from mrrec_lib.config import Config
from mrrec_lib.deadline import DEADLINE_ENV, DeadlineReached, deadline_from_env
from mrrec_lib.runs import MissingStageError, RunPaths, read_jsonl
from mrrec_lib.train import checkpoints
from mrrec_lib.train.environment import TOOL_NAME, tool_schema
from mrrec_lib.train.sft import build_sft_config, build_sft_trainer, conversation_length, length_stats, train_sft
from mrrec_lib.train.sft_data import (
    _filter,
    aspect_clause,
    score_completions,
    scripted_conversation,
    scripted_rewrite,
)

ROW = {
    "qid": "q1",
    "query": "I want a crunchy snack for movie night",
    "category": "Grocery",
    "target_item_id": "SECRET",
}
ASPECTS = [
    {"aspect": "Flavor Profile", "text": "Flavor Profile: sweet or salty"},
    {"aspect": "Price", "text": "Price: budget per pack"},
    {"aspect": "Dietary Needs", "text": "Dietary Needs: gluten free, vegan"},
]
HITS = [
    {"entry_id": "pref:grocery:1", "text": "Prefers salty crunchy snacks like sea salt chips", "level": "pattern"},
    {"entry_id": "rec:3", "text": "Bought kettle chips, rated 5", "level": "record"},
]


def _conversation(seed=0, max_calls=3):
    return scripted_conversation(
        ROW, ASPECTS, lambda q: HITS, lambda q: f"{TOOL_RESULT} for {q}", max_calls, np.random.default_rng(seed)
    )


def _record(messages):
    prompt = [{"role": "system", "content": "You recommend products."}, {"role": "user", "content": ROW["query"]}]
    return {"qid": "q1", "messages": prompt + messages, "tools": json.dumps([tool_schema()]), "reward": 1.0}


def test_scripted_trajectory_calls_the_tool_and_answers_without_target():
    counts = set()
    for seed in range(12):
        msgs = _conversation(seed)
        calls = [m for m in msgs if m["role"] == "assistant" and m.get("tool_calls")]
        tools = [m for m in msgs if m["role"] == "tool"]
        assert 1 <= len(calls) <= 3 and len(tools) == len(calls)
        counts.add(len(calls))
        assert all(c["tool_calls"][0]["function"]["name"] == TOOL_NAME for c in calls)
        assert all(c["content"].strip() for c in calls)  # reasoning text before each call
        answer = parse_answer(msgs[-1]["content"])
        assert answer.ok and "crunchy snack" in answer.profile and "salty" in answer.profile
        assert set(answer.memory_ids) <= {h["entry_id"] for h in HITS} and answer.memory_ids
        assert "SECRET" not in json.dumps(msgs)
    assert len(counts) > 1  # the number of calls varies across trajectories


def test_scripted_profile_states_several_memory_entries_under_one_lead_in():
    """A lead-in repeated per entry taught greedy decoding to loop on it and never close the answer."""
    hits = {a["aspect"].lower(): {"entry_id": f"e{i}", "text": f"likes thing {i}"} for i, a in enumerate(ASPECTS)}
    msgs = scripted_conversation(ROW, ASPECTS, lambda q: [hits[q]], lambda q: q, 3, np.random.default_rng(0))
    answer = parse_answer(msgs[-1]["content"])
    n_calls = sum(1 for m in msgs if m.get("tool_calls"))
    assert n_calls >= 2 and n_calls == len(answer.memory_ids) and answer.profile.count("This user's preferences") == 1
    assert all(f"likes thing {e[1:]}" in answer.profile for e in answer.memory_ids)


def test_scripted_tool_query_is_the_aspect_the_lead_in_names():
    """The query repeats the lead-in's aspect verbatim: an "aspect + category" query taught the policy to run on."""
    for seed in range(6):
        for m in _conversation(seed):
            for call in m.get("tool_calls") or []:
                query = call["function"]["arguments"]["query"]
                assert m["content"] == f"I look up what this user prefers for {query}."
                assert query in {a["aspect"].lower() for a in ASPECTS}


def test_aspect_clause_picks_the_clause_naming_the_aspect_without_its_label():
    entry = (
        "Feature priorities: flavor and scent garlic, spicy, orange; item form bottle, can (glass); size and "
        'quantity 8 oz. Liked in Pantry Staples: "Great flavor, use in my shakes ..."'
    )
    assert aspect_clause(entry, "flavor and scent") == "flavor and scent garlic, spicy, orange"
    assert aspect_clause(entry, "Item Form") == "item form bottle, can glass"
    assert aspect_clause(entry, "price range") == "Feature priorities: flavor and scent garlic, spicy, orange"
    assert aspect_clause(entry, "size and quantity", max_words=4) == "size and quantity 8"
    assert (
        aspect_clause("Rated: 5/5. Flavor of chosen items: mint, lime", "flavor")
        == "Flavor of chosen items: mint, lime"
    )
    assert aspect_clause(" ; . ", "flavor") == ""


def test_filter_keeps_parseable_rewarded_and_reports_drops():
    cfg = Config(sft_reward_threshold=0.5)
    good = _conversation()
    broken = good[:-1] + [{"role": "assistant", "content": "I think chips."}]
    candidates = [(ROW, [], good, 1.0), (ROW, [], broken, 2.0), (ROW, [], good, 0.2)]
    data = _filter(candidates, cfg, "scripted")
    assert (
        data.report["kept"] == 1 and data.report["dropped_unparseable"] == 1 and data.report["dropped_low_reward"] == 1
    )
    assert data.records[0]["n_tool_calls"] >= 1 and data.records[0]["reward"] == 1.0


def test_no_memory_setting_gets_tool_free_one_turn_records():
    """Rec-R1's warm-up must teach its own format: no tool schema, no calls, a profile-only answer."""
    cfg = Config(policy_uses_memory=False)
    msgs = scripted_rewrite(ROW)
    assert len(msgs) == 1 and not msgs[0].get("tool_calls")
    answer = parse_answer(msgs[0]["content"])
    assert answer.ok and "crunchy snack" in answer.profile and "Grocery" in answer.profile
    data = _filter([(ROW, [{"role": "user", "content": ROW["query"]}], msgs, 1.0)], cfg, "scripted")
    record = data.records[0]
    assert json.loads(record["tools"]) == [] and record["n_tool_calls"] == 0
    rendered = smol_tokenizer().apply_chat_template(record["messages"], tools=None, tokenize=False)
    assert "<tools>" not in rendered and conversation_length(smol_tokenizer(), record) > 0


def test_score_completions_sums_reward_funcs_with_dataset_columns():
    seen = {}

    def f1(prompts, completions, target_item_id, **kw):
        seen["targets"] = target_item_id
        return [1.0] * len(completions)

    def f2(prompts, completions, **kw):
        return [0.25] * len(completions)

    assert score_completions([f1, f2], [[]], [_conversation()], [ROW]) == [1.25]
    assert seen["targets"] == ["SECRET"]  # the reward (not the teacher) sees the target


def test_assistant_only_loss_masks_prompt_and_tool_results(tmp_path):
    cfg = Config(outputs_dir=str(tmp_path), run_name="t", device="cpu", sft_max_steps=1, lora_r=4, lora_alpha=8)
    paths = RunPaths(tmp_path / "t").ensure()
    tok = smol_tokenizer()
    msgs = _conversation(seed=3)
    trainer = build_sft_trainer(cfg, build_sft_config(cfg, paths), tiny_model(tok), tok, [_record(msgs)])
    ex = trainer.train_dataset[0]
    ids, mask = np.array(ex["input_ids"]), np.array(ex["labels"]) != -100  # TRL folds the assistant mask into labels
    trained = tok.decode(ids[mask == 1])
    ignored = tok.decode(ids[mask == 0])
    assert TOOL_RESULT in ignored and TOOL_RESULT not in trained  # retrieved memory is never a target
    assert "<tool_response>" in ignored and ROW["query"] in ignored and "memory_retrieval_tool" in ignored  # schema
    assert '"name": "memory_retrieval_tool"' in trained and "\\boxed{" in trained
    assert trained.rstrip().endswith("<|im_end|>")  # the model learns to stop
    assert np.array_equal(np.array(ex["labels"])[mask], ids[mask])
    batch = trainer.data_collator([ex])
    assert torch.equal(batch["labels"][0] != -100, torch.tensor(mask))


def test_length_stats_count_the_trained_length_apart_from_the_dropped_ones():
    # the dropped conversations are the longest: a throughput over all candidates would credit work never done
    stats = length_stats([100, 300, 900, 1500], max_length=1024)
    assert stats["examples"] == 3 and stats["dropped_too_long"] == 1 and stats["tokens_max"] == 1500
    assert stats["tokens_mean"] == 700.0 and stats["trained_tokens_mean"] == pytest.approx(433.33, abs=0.01)
    assert length_stats([2000], max_length=1024)["trained_tokens_mean"] == 0.0


def test_train_resume_publish_and_load(tmp_path, monkeypatch):
    cfg = Config(
        outputs_dir=str(tmp_path),
        run_name="t",
        device="cpu",
        sft_max_steps=1,
        sft_save_every=1,
        sft_batch_size=1,
        sft_lr=1e-2,
        lora_r=4,
        lora_alpha=8,
    )
    paths = RunPaths(tmp_path / "t").ensure()
    tok = smol_tokenizer()
    records = [_record(_conversation(seed=s, max_calls=1)) for s in range(2)]  # short: the 49k-vocab head dominates
    with pytest.raises(MissingStageError, match="03"):
        checkpoints.load_policy(cfg, paths, "sft")

    out = train_sft(cfg, paths, records, tiny_model(tok), tok)
    assert out["last_step"] == 1 and out["first_step"] == 0 and out["examples"] == 2 and np.isfinite(out["train_loss"])
    assert out["trained_tokens_mean"] == out["tokens_mean"] > 0  # nothing dropped
    # resume: a longer run continues from checkpoint-1 instead of starting over
    out = train_sft(cfg.model_copy(update={"sft_max_steps": 2}), paths, records, tiny_model(tok), tok)
    assert out["last_step"] == 2 and out["first_step"] == 1  # its train_seconds cover one step, not two
    assert [r["step"] for r in read_jsonl(paths.logs / "03_sft_train.jsonl") if "loss" in r] == [1, 2]
    # another config is another run: its checkpoints and step log start over instead of resuming
    restarted = cfg.model_copy(update={"sft_lr": 5e-3, "sft_max_steps": 2})
    out = train_sft(restarted, paths, records, tiny_model(tok), tok)
    assert out["last_step"] == 2 and out["first_step"] == 0
    log = [r for r in read_jsonl(paths.logs / "03_sft_train.jsonl") if "loss" in r]
    assert [r["step"] for r in log] == [1, 2] and 0 < max(r["learning_rate"] for r in log) <= 5e-3  # the new lr only

    meta = checkpoints.read_policy_meta(checkpoints.final_dir(paths, "sft"))
    assert meta["adapter"] and meta["base"] == {"model": cfg.policy_model}
    # load_policy rebuilds base + adapter; with the tiny base model it must reproduce the trained weights
    monkeypatch.setattr("mrrec_lib.llm.load_causal_lm", lambda name, cfg, for_training=False: (tiny_model(tok), tok))
    merged, _ = checkpoints.load_policy(cfg, paths, "sft")
    from peft import PeftModel

    reference = PeftModel.from_pretrained(tiny_model(tok), str(checkpoints.final_dir(paths, "sft")))
    x = torch.tensor([tok("hello there", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(merged(x).logits, reference(x).logits, atol=1e-4)
        assert not torch.allclose(merged(x).logits, tiny_model(tok)(x).logits, atol=1e-4)  # training changed it


def test_a_deadline_stops_training_with_a_checkpoint_of_the_last_step_and_the_rerun_resumes_it(tmp_path, monkeypatch):
    cfg = Config(outputs_dir=str(tmp_path), run_name="t", device="cpu", sft_max_steps=3, sft_save_every=50,
                 sft_batch_size=1, lora_r=4, lora_alpha=8)
    paths = RunPaths(tmp_path / "t").ensure()
    tok = smol_tokenizer()
    records = [_record(_conversation(seed=s, max_calls=1)) for s in range(2)]
    # no periodic checkpoint before step 50: only the stop for the deadline can have written one
    monkeypatch.setenv(DEADLINE_ENV, str(time.time() + 30))  # no step plus a save fits in 30 s
    with pytest.raises(DeadlineReached, match="saved checkpoint-1 and stopped"):
        train_sft(cfg, paths, records, tiny_model(tok), tok)
    ckpts = checkpoints.checkpoints_dir(paths, "sft")
    assert sorted(p.name for p in ckpts.glob("checkpoint-*")) == ["checkpoint-1"]
    assert not checkpoints.final_dir(paths, "sft").exists()  # a paused stage publishes nothing

    monkeypatch.delenv(DEADLINE_ENV)
    out = train_sft(cfg, paths, records, tiny_model(tok), tok)
    assert out["last_step"] == 3
    assert [r["step"] for r in read_jsonl(paths.logs / "03_sft_train.jsonl") if "loss" in r] == [1, 2, 3]


def test_deadline_env_names_itself_when_malformed(monkeypatch):
    monkeypatch.setenv(DEADLINE_ENV, "tomorrow")
    with pytest.raises(ValueError, match=DEADLINE_ENV):
        deadline_from_env()
    monkeypatch.setenv(DEADLINE_ENV, "")
    assert deadline_from_env() is None


def test_resume_checkpoint_clears_state_left_without_checkpoints(tmp_path):
    """A deleted models folder must not leave the old step log for the fresh run to append to."""
    from mrrec_lib.train.common import resume_checkpoint

    out, log = tmp_path / "checkpoints", tmp_path / "03_sft_train.jsonl"
    log.write_text('{"step": 24}\n')
    assert resume_checkpoint(out, "k1", [log]) is None and not log.exists()
    (out / "checkpoint-3").mkdir()
    (out / "checkpoint-3" / "trainer_state.json").write_text('{"global_step": 3}')
    (out / "checkpoint-4").mkdir()  # a save cut short: no trainer_state.json, so not resumed from
    log.write_text('{"step": 3}\n')
    assert resume_checkpoint(out, "k1", [log]).endswith("checkpoint-3") and log.exists()  # same run: resume
    assert not (out / "checkpoint-4").exists()
    assert resume_checkpoint(out, "k2", [log]) is None and not log.exists() and not (out / "checkpoint-3").exists()


def test_resume_key_keeps_upstream_budgets_and_the_start_policy(tmp_path):
    """GRPO checkpoints of one SFT policy must not be resumed on top of another (a longer or retrained SFT)."""
    from mrrec_lib.train.common import resume_key

    cfg = Config()
    assert resume_key(cfg, "04") == resume_key(cfg.model_copy(update={"grpo_max_steps": 99}), "04")
    assert resume_key(cfg, "04") != resume_key(cfg.model_copy(update={"sft_max_steps": 99}), "04")
    assert resume_key(cfg, "03") == resume_key(cfg.model_copy(update={"sft_max_steps": 99}), "03")
    paths = RunPaths(tmp_path / "t").ensure()
    final = checkpoints.final_dir(paths, "sft")
    final.mkdir(parents=True)
    (final / "adapter_model.safetensors").write_bytes(b"weights-1")
    first = checkpoints.policy_stamp(paths, "sft")
    (final / "adapter_model.safetensors").write_bytes(b"weights-22")  # size differs: mtime may be coarse
    assert checkpoints.policy_stamp(paths, "sft") != first and checkpoints.policy_stamp(paths, "base") == ""
    assert resume_key(cfg, "04", first) != resume_key(cfg, "04", checkpoints.policy_stamp(paths, "sft"))
