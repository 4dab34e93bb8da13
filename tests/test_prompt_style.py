"""One config value, `policy_prompt`, sets the prompt of SFT teacher data, GRPO rows, policy rollouts and zero-shot rows."""

from __future__ import annotations

import pytest
from test_agent_run import QUERIES, ScriptedChat, answer, make_store
from test_eval import _ctx

from mrrec_lib.agent.prompt import build_messages, build_prompt
from mrrec_lib.config import Config

COMPACT = Config(policy_prompt="compact", memory_top_k=2, global_top_k=2)


def _expected(store, row: dict, cfg: Config) -> list[dict]:
    aspects = store.global_context(row["query"], row["category"], cfg.global_top_k)
    return build_messages(row["query"], aspects, cfg.policy_uses_memory, cfg.policy_prompt)


@pytest.mark.parametrize("cfg", [COMPACT, COMPACT.model_copy(update={"policy_prompt": "full"})])
def test_sft_teacher_data_and_grpo_rows_use_the_configured_prompt(cfg):
    from mrrec_lib.train.grpo import grpo_rows
    from mrrec_lib.train.sft_data import scripted_data

    store = make_store()
    expected = [_expected(store, row, cfg) for row in QUERIES.to_dict("records")]
    assert ("Do the following:" in expected[0][1]["content"]) == (cfg.policy_prompt == "full")

    def reward(prompts, completions, **_):
        return [1.0] * len(completions)

    sft = scripted_data(cfg, QUERIES, store, [reward], progress=False)
    assert [r["messages"][:2] for r in sft.records] == expected
    rows = grpo_rows(cfg, QUERIES, lambda q, c: store.global_context(q, c, cfg.global_top_k))
    assert [r["prompt"] for r in rows] == expected


def test_policy_rollouts_use_the_configured_prompt():
    from mrrec_lib.agent.run import run_policy_on_queries

    store = make_store()
    llm = ScriptedChat({"a strong tea": [answer("tea")], "a spicy sauce": [answer("sauce")]})
    trajs, _ = run_policy_on_queries(QUERIES, llm, COMPACT, store=store, progress=False)
    assert [t.messages[:2] for t in trajs] == [_expected(store, row, COMPACT) for row in QUERIES.to_dict("records")]


def test_zeroshot_rows_use_the_configured_prompt_and_cache_under_it(tmp_path):
    """Zero-shot rows hang off stage 02, which policy_prompt does not hash: their cache fingerprint must cover it."""
    from mrrec_lib.eval.evaluate import evaluate_systems, system_fingerprint
    from mrrec_lib.eval.systems import SYSTEMS

    ctx, _ = _ctx(tmp_path, policy_prompt="compact")
    evaluate_systems(ctx.cfg, ctx.paths, ["zeroshot_none"], context=ctx, progress=False)
    expected = [build_prompt("no_memory", q, style="compact").messages for q in ctx.queries["query"]]
    assert sorted(map(str, ctx.llm.conversations)) == sorted(map(str, expected))
    full, _ = _ctx(tmp_path)
    spec = SYSTEMS["zeroshot_none"]
    assert system_fingerprint(spec, ctx) != system_fingerprint(spec, full)
