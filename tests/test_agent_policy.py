"""Token-level generation: stop trimming, and batched left-padded generation with the real SmolLM2."""

from __future__ import annotations

import os

import pytest

from mrrec_lib.agent.policy import LocalPolicy, end_of_turn_id, stop_token_ids, trim_at_stop
from mrrec_lib.agent.prompt import build_prompt
from mrrec_lib.agent.rollout import ToolResult, run_rollouts
from mrrec_lib.config import Config

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def smol():
    from mrrec_lib.llm.models import load_causal_lm

    model, tok = load_causal_lm("smollm2-135m-instruct", Config(device="cpu"))
    return LocalPolicy(model=model, tokenizer=tok)


def test_trim_at_stop(smol):
    tok = smol.tokenizer
    stops, eot = stop_token_ids(tok), end_of_turn_id(tok)
    assert eot in stops and tok.convert_ids_to_tokens(eot) == "<|im_end|>"

    def ids(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    call = '<tool_call>{"name": "m", "arguments": {}}</tool_call>'
    kept, stop = trim_at_stop(ids(call + " more text<|im_end|>"), tok, stops)
    assert stop == "tool_call" and tok.decode(kept) == call
    kept, stop = trim_at_stop(ids("answer<|im_end|>" + call), tok, stops)
    assert stop == "eos" and tok.decode(kept) == "answer<|im_end|>"
    kept, stop = trim_at_stop(ids("no stop here"), tok, stops)
    assert stop is None and tok.decode(kept) == "no stop here"
    assert trim_at_stop([], tok, stops) == ([], None)


def test_batched_generation_matches_single(smol):
    tok = smol.tokenizer
    short = tok("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    long = tok(
        "<|im_start|>user\nRecommend a strong black tea for mornings, please.<|im_end|>\n<|im_start|>assistant\n",
        add_special_tokens=False,
    )["input_ids"]
    batched = smol.generate_ids([short, long], 6, temperature=0.0, top_p=1.0, seed=0)
    singles = [smol.generate_ids([c], 6, temperature=0.0, top_p=1.0, seed=0)[0] for c in (short, long)]
    assert [b[: len(s)] for b, s in zip(batched, singles, strict=True)] == singles
    sampled = [smol.generate_ids([long], 6, temperature=1.0, top_p=1.0, seed=s)[0] for s in (1, 1, 2)]
    assert sampled[0] == sampled[1]  # seeded


def test_real_model_rollout_produces_consistent_records(smol):
    cfg = Config(max_new_tokens_per_turn=12, max_new_tokens_total=40, rollout_batch_size=2, rollout_temperature=1.0)
    prompts = [build_prompt("mrrec", q) for q in ("a strong tea", "a gift for my dad")]

    def tool(query):
        return ToolResult("[rec:1] (record, Tea) Assam", ["rec:1"])

    trajs = run_rollouts(smol, prompts, [tool, tool], cfg, seed=3, progress=False)
    tok = smol.tokenizer
    for t in trajs:
        assert len(t.completion_ids) == len(t.completion_mask) == t.n_completion_tokens <= 40
        assert t.n_new_tokens == sum(t.completion_mask)
        assert t.finish_reason in ("answer", "length", "max_tool_calls")
        text = tok.decode(t.prompt_ids + t.completion_ids)
        assert text.startswith(
            tok.apply_chat_template(t.messages[:2], tools=t.tools, tokenize=False, add_generation_prompt=True)
        )


def test_no_repeat_new_ngram_bans_only_self_generated_repeats():
    import torch

    from mrrec_lib.agent.policy import _NoRepeatNewNGram

    # prompt [5, 6, 7] then generated [1, 2, 3, 1, 2]: next 3 would repeat (1, 2, 3) -> banned
    ids = torch.tensor([[5, 6, 7, 1, 2, 3, 1, 2], [5, 6, 7, 5, 6, 9, 9, 9]])
    out = _NoRepeatNewNGram(3, start=3)(ids, torch.zeros(2, 10))
    assert out[0, 3] == -float("inf") and torch.isfinite(out[0, [0, 1, 2, 4]]).all()
    # row 2 copied the prompt's (5, 6) once, allowed; its own (9, 9) is followed by 9 -> 9 banned
    assert out[1, 9] == -float("inf") and torch.isfinite(out[1, :9]).all()
    # the prompt's own n-grams are never banned: (6, 7) -> 1 happened only in the prompt
    out = _NoRepeatNewNGram(3, start=3)(torch.tensor([[5, 6, 7, 6]]), torch.zeros(1, 10))
    assert torch.isfinite(out).all()
