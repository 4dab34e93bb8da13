"""The continuous-batching KV engine decodes what a model decodes from scratch, and rollouts match the old path."""

from __future__ import annotations

import os

import pytest
import torch

from mrrec_lib.agent.engine import Decoding, EngineRow, KVEngine
from mrrec_lib.agent.policy import LocalPolicy
from mrrec_lib.agent.prompt import build_prompt
from mrrec_lib.agent.rollout import ToolResult, run_rollouts
from mrrec_lib.config import Config

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def smol():
    from mrrec_lib.llm.models import load_causal_lm

    model, tok = load_causal_lm("smollm2-135m-instruct", Config(device="cpu"))
    return LocalPolicy(model=model, tokenizer=tok, no_repeat_ngram=3)


def _greedy_from_scratch(model, context: list[int], n: int) -> list[int]:
    out = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=torch.tensor([context + out])).logits[0, -1]
            out.append(int(logits.argmax()))
    return out


def test_multi_turn_rows_match_decoding_from_scratch(smol):
    """Rows of different lengths, more rows than slots, a shared prefix and a second turn after appended tokens."""
    tok = smol.tokenizer
    shared = (
        tok("<|im_start|>system\nYou recommend products to shoppers.<|im_end|>\n", add_special_tokens=False)[
            "input_ids"
        ]
        * 3
    )  # long enough to be encoded once and shared
    asks = ["a strong black tea", "running shoes for wet trails, light and cheap", "a gift"]
    contexts = [
        shared + tok(f"<|im_start|>user\n{a}<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
        for a in asks
    ]
    appended = tok(" Also, it should be organic.", add_special_tokens=False)["input_ids"]
    rows = [EngineRow(key=i, context=list(c), budget=3 + i) for i, c in enumerate(contexts)]
    turns: dict[int, list[list[int]]] = {i: [] for i in range(len(rows))}

    def on_turn_end(row, turn, stop):
        turns[row.key].append(turn)
        if len(turns[row.key]) == 2:
            return None
        row.budget = 4
        return appended

    engine = KVEngine(smol.model, tok, set(), max_rows=2)
    engine.run(rows, Decoding(), on_turn_end)
    assert engine.stats["prefix_tokens_reused"] > 0
    for i, c in enumerate(contexts):
        first = _greedy_from_scratch(smol.model, c, 3 + i)
        second = _greedy_from_scratch(smol.model, c + first + appended, 4)
        assert turns[i] == [first, second]


def _memory_tool(query: str) -> ToolResult:
    return ToolResult(text=f"[pref:tea:1] (pattern, Tea) likes strong {query} blends", entry_ids=["pref:tea:1"])


def test_rollouts_match_turn_synchronous_path(smol):
    """Same greedy trajectories (ids, masks, tool calls, finish) from the KV engine and per-turn generate()."""
    asks = ["a strong tea", "a gift for my dad who likes fishing", "shampoo for dry hair"]
    prompts = [build_prompt("mrrec", q) for q in asks]
    base = {
        "max_new_tokens_per_turn": 10,
        "max_new_tokens_total": 40,
        "rollout_batch_size": 2,
        "rollout_temperature": 0,
    }
    out = {}
    for engine in ("generate", "kv"):
        cfg = Config(**base, rollout_engine=engine)
        out[engine] = run_rollouts(smol, prompts, [_memory_tool] * 3, cfg, progress=False)
    for a, b in zip(out["generate"], out["kv"], strict=True):
        assert (a.completion_ids, a.completion_mask, a.finish_reason) == (
            b.completion_ids,
            b.completion_mask,
            b.finish_reason,
        )
        assert a.prompt_ids == b.prompt_ids and len(a.completion_ids) > 0


def test_sampled_rollouts_are_seeded_and_stop_in_budget(smol):
    cfg = Config(max_new_tokens_per_turn=8, max_new_tokens_total=20, rollout_temperature=1.0, rollout_top_p=0.9)
    prompts = [build_prompt("no_memory", q) for q in ("a strong tea", "a lamp")]
    runs = [run_rollouts(smol, prompts, [None, None], cfg, seed=s, progress=False) for s in (1, 1, 2)]
    assert [t.completion_ids for t in runs[0]] == [t.completion_ids for t in runs[1]]
    assert [t.completion_ids for t in runs[0]] != [t.completion_ids for t in runs[2]]
    assert all(0 < t.n_completion_tokens <= 20 for t in runs[0])
