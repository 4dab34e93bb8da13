"""The paper's reward: exact values, malformed handling, batching, and TRL's reward-function contract."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mrrec_lib.agent.trajectory import Trajectory
from mrrec_lib.config import Config
from mrrec_lib.train.rewards import (
    breakdown,
    completion_view,
    make_trl_reward_funcs,
    ndcg_single,
    score,
    score_trajectories,
)

GOOD = '\\boxed{"ideal_item_profile": "green tea", "useful_memory_ids": []}'


class Retriever:
    def __init__(self, table: dict[str, int] | None = None, default: int = 50):
        self.table, self.default, self.calls = table or {}, default, []

    def ranks(self, texts, target_item_ids):
        self.calls.append((list(texts), list(target_item_ids)))
        return np.array([self.table.get(t, self.default) for t in texts])


def traj(ok=True, profile="green tea", calls=1, final="I think.") -> Trajectory:
    return Trajectory(
        qid="q",
        prompt_kind="mrrec",
        messages=[],
        parse_ok=ok,
        profile=profile if ok else "",
        n_tool_calls=calls,
        final_text=final,
    )


@pytest.mark.parametrize(
    "rank,k,value",
    [
        (1, 100, 1.0),
        (3, 100, 0.5),
        (100, 100, 1 / math.log2(101)),
        (101, 100, 0.0),
        (1000, 1000, 1 / math.log2(1001)),
        (None, 100, 0.0),
        (0, 100, 0.0),
    ],
)
def test_ndcg_single(rank, k, value):
    assert ndcg_single(rank, k) == pytest.approx(value)


def test_paper_weights():
    r = breakdown(True, 3, True, Config())
    assert (r.ndcg100, r.ndcg1000, r.retrieval) == (0.5, 0.5, 1.0)
    assert r.total == pytest.approx(0.1 + 5.0 + 0.1)
    r = breakdown(True, 500, False, Config())  # outside @100, inside @1000
    assert r.ndcg100 == 0.0 and r.total == pytest.approx(0.1 + 5 / math.log2(501))
    r = breakdown(False, None, False, Config())
    assert (r.format, r.retrieval, r.memory, r.total, r.rank) == (0.0, 0.0, 0.0, 0.0, None)
    custom = Config(reward_format_weight=1.0, reward_retrieval_weight=2.0, reward_memory_weight=0.5)
    assert breakdown(True, 1, True, custom).total == pytest.approx(1 + 2 * 2 + 0.5)


def test_score_trajectories_one_batch_and_malformed_zero():
    retriever = Retriever({"green tea": 3})
    trajs = [traj(), traj(ok=False, final="some raw ramble about tea"), traj(calls=0)]
    out = score_trajectories(trajs, ["a", "b", "c"], retriever, Config())
    assert retriever.calls == [(["green tea", "green tea"], ["a", "c"])]  # malformed ones are not ranked
    assert [r.format for r in out] == [1.0, 0.0, 1.0]
    assert [r.memory for r in out] == [1.0, 1.0, 0.0]
    assert out[1].rank is None and out[1].retrieval == 0.0 and out[1].total == pytest.approx(0.1)
    assert out[2].total == pytest.approx(0.1 + 5.0)


def test_malformed_raw_text_mode():
    retriever = Retriever({"some raw ramble about tea": 1})
    cfg = Config(malformed_retrieval="raw_text")
    out = score_trajectories(
        [traj(ok=False, final="some raw ramble about tea"), traj(ok=False, final="  ")], ["a", "b"], retriever, cfg
    )
    assert retriever.calls == [(["some raw ramble about tea"], ["a"])]  # empty text is not ranked
    assert out[0].format == 0.0 and out[0].rank == 1 and out[0].total == pytest.approx(5 * 2 + 0.1)
    assert out[1].total == pytest.approx(0.1)


def test_score_from_ranks_and_length_checks():
    assert [r.rank for r in score([traj(), traj()], [7, None], Config())] == [7, None]
    with pytest.raises(ValueError, match="ranks"):
        score([traj()], [], Config())
    with pytest.raises(ValueError, match="target"):
        score_trajectories([traj()], [], Retriever(), Config())


def test_no_retriever_call_when_nothing_parses():
    retriever = Retriever()
    out = score_trajectories([traj(ok=False)], ["a"], retriever, Config())
    assert retriever.calls == [] and out[0].total == pytest.approx(0.1)


TOOL_CALL = {"type": "function", "function": {"name": "memory_retrieval_tool", "arguments": {"query": "tea"}}}
CONVERSATIONAL = [
    {"role": "assistant", "content": "let me check", "tool_calls": [TOOL_CALL]},
    {"role": "tool", "name": "memory_retrieval_tool", "content": "[rec:1] (record, Tea) green tea"},
    {"role": "assistant", "content": "So: " + GOOD},
]


def call_like_trl(func, completions, **columns):
    """The keyword call TRL 1.16's `GRPOTrainer._calculate_rewards` makes."""
    n = len(completions)
    return func(
        prompts=[[{"role": "user", "content": "q"}]] * n,
        completions=completions,
        completion_ids=[[1, 2]] * n,
        trainer_state=None,
        log_extra=lambda *a: None,
        log_metric=lambda *a: None,
        **columns,
    )


def test_trl_reward_funcs_conversational():
    retriever = Retriever({"green tea": 3})
    cfg = Config()
    fmt, ret, mem = make_trl_reward_funcs(retriever, cfg)
    assert [f.__name__ for f in (fmt, ret, mem)] == ["format_reward", "retrieval_reward", "memory_reward"]
    no_tool = [{"role": "assistant", "content": GOOD}]
    broken = [
        {"role": "assistant", "content": "", "tool_calls": [TOOL_CALL]},
        {"role": "tool", "name": "memory_retrieval_tool", "content": "..."},
    ]
    comps = [CONVERSATIONAL, no_tool, broken, []]
    cols = {"target_item_id": ["t1", "t2", "t3", "t4"], "qid": ["a", "b", "c", "d"]}
    f, r, m = (call_like_trl(fn, comps, **cols) for fn in (fmt, ret, mem))
    assert f == pytest.approx([0.1, 0.1, 0.0, 0.0])
    assert r == pytest.approx([5.0, 5.0, 0.0, 0.0])
    assert m == pytest.approx([0.1, 0.0, 0.1, 0.0])
    assert retriever.calls == [(["green tea", "green tea"], ["t1", "t2"])]
    # the per-completion sum TRL forms (reward_weights all 1) is the paper's total for the same rollout
    expected = breakdown(True, 3, True, cfg).total
    assert f[0] + r[0] + m[0] == pytest.approx(expected)


def test_trl_reward_funcs_strings_and_columns():
    retriever = Retriever({"green tea": 1})
    fmt, ret, mem = make_trl_reward_funcs(retriever, Config(malformed_retrieval="raw_text"))
    text_with_call = '<tool_call>{"name": "memory_retrieval_tool", "arguments": {"query": "x"}}</tool_call>' + GOOD
    comps = [text_with_call, "green tea"]
    assert call_like_trl(mem, comps) == pytest.approx([0.1, 0.0])
    assert call_like_trl(mem, comps, n_tool_calls=[0, 2]) == pytest.approx([0.0, 0.1])
    assert call_like_trl(fmt, comps) == pytest.approx([0.1, 0.0])
    assert call_like_trl(ret, comps, target_item_id=["a", "b"]) == pytest.approx([10.0, 10.0])  # raw text ranked
    with pytest.raises(KeyError, match="target_item_id"):
        call_like_trl(ret, comps)
    with pytest.raises(ValueError, match="n_tool_calls"):
        call_like_trl(mem, comps, n_tool_calls=[1])
    # the KV-engine rollout_func passes the last assistant turn; TRL's flat completion text is then not parsed
    flat = ["<tool_response>\\boxed{tool text}</tool_response> rambling", GOOD]
    assert call_like_trl(fmt, flat, answer_text=[GOOD, "no answer"]) == pytest.approx([0.1, 0.0])
    with pytest.raises(ValueError, match="answer_text"):
        call_like_trl(fmt, flat, answer_text=[GOOD])


def test_completion_view_shapes():
    assert completion_view(CONVERSATIONAL) == ("So: " + GOOD, 1)
    assert completion_view(
        [{"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    ) == ("ab", 0)
    assert completion_view(None) == ("", 0)
    assert completion_view([{"role": "tool", "name": "other_tool", "content": "x"}]) == ("", 0)
