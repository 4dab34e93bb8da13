"""llama.cpp decoding: the exported GGUF decodes what transformers decodes, and rollouts match the KV engine's."""

from __future__ import annotations

import os

import pytest

from mrrec_lib.agent.engine import Decoding
from mrrec_lib.agent.llamacpp import LlamaCppPolicy, _first_repeat, export_gguf
from mrrec_lib.agent.policy import LocalPolicy, decoding_policy
from mrrec_lib.agent.prompt import build_prompt
from mrrec_lib.agent.rollout import ToolResult, run_rollouts
from mrrec_lib.config import Config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("xllamacpp", reason="decode_engine llamacpp needs xllamacpp (a core dependency)")


@pytest.fixture(scope="module")
def smol():
    from mrrec_lib.llm.models import load_causal_lm

    model, tok = load_causal_lm("smollm2-135m-instruct", Config(device="cpu"))
    return model, tok


@pytest.fixture(scope="module")
def cpp(smol, tmp_path_factory):
    model, tok = smol
    cache = tmp_path_factory.mktemp("cache")
    cfg = Config(cache_dir=str(cache), decode_engine="llamacpp", decode_llamacpp_weights="f32", rollout_batch_size=2,
                 decode_no_repeat_ngram=3, num_threads=1)
    policy = decoding_policy(model, tok, cfg)
    yield policy
    policy.close()


def test_export_is_cached_by_content(smol, cpp, tmp_path):
    model, tok = smol
    assert isinstance(cpp, LlamaCppPolicy) and cpp.gguf.exists()
    again = export_gguf(model, tok, cpp.gguf.parent.parent, "f32")
    assert again == cpp.gguf  # same weights: the file is reused, not rewritten
    with pytest.raises(ValueError, match="decode_llamacpp_weights"):
        export_gguf(model, tok, tmp_path, "q4_k")


def _chat(tok, text: str) -> list[int]:
    return list(tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                        tokenize=True, return_dict=True)["input_ids"])


def test_greedy_turns_equal_transformers(smol, cpp):
    """f32 weights, greedy, with the no-repeat guard: the same ids as transformers' generate()."""
    model, tok = smol
    ref = LocalPolicy(model=model, tokenizer=tok, no_repeat_ngram=3)
    contexts = [_chat(tok, t) for t in ("Name three fruits.", "Describe a warm winter hat in two sentences.")]
    ours = cpp.generate_ids(contexts, 40, 0.0, 1.0, 0)
    theirs = ref.generate_ids(contexts, 40, 0.0, 1.0, 0)
    from mrrec_lib.agent.policy import stop_token_ids, trim_at_stop

    for a, b in zip(ours, theirs, strict=True):
        assert a == trim_at_stop(b[:40], tok, stop_token_ids(tok))[0] and len(a) > 5


def _memory_tool(query: str) -> ToolResult:
    return ToolResult(text=f"[pref:tea:1] (pattern, Tea) likes strong {query} blends", entry_ids=["pref:tea:1"])


def test_rollouts_equal_kv_engine(smol, cpp):
    """Multi-turn greedy rollouts (tool calls, masks, finish reasons) equal the KV engine's, rows > slots."""
    model, tok = smol
    asks = ["a strong tea", "a gift for my dad who likes fishing", "shampoo for dry hair"]
    prompts = [build_prompt("mrrec", q) for q in asks]
    cfg = Config(max_new_tokens_per_turn=10, max_new_tokens_total=40, rollout_batch_size=2, rollout_temperature=0)
    kv = run_rollouts(LocalPolicy(model=model, tokenizer=tok, no_repeat_ngram=3), prompts, [_memory_tool] * 3, cfg,
                      progress=False)
    ll = run_rollouts(cpp, prompts, [_memory_tool] * 3, cfg.model_copy(update={"decode_engine": "llamacpp"}),
                      progress=False)
    for a, b in zip(kv, ll, strict=True):
        assert (a.prompt_ids, a.completion_ids, a.completion_mask, a.finish_reason) == (
            b.prompt_ids, b.completion_ids, b.completion_mask, b.finish_reason)


def test_sampled_rollouts_are_seeded(cpp):
    cfg = Config(max_new_tokens_per_turn=8, max_new_tokens_total=20, rollout_temperature=1.0, decode_engine="llamacpp")
    prompts = [build_prompt("no_memory", q) for q in ("a strong tea", "a lamp")]
    runs = [run_rollouts(cpp, prompts, [None, None], cfg, seed=s, progress=False) for s in (1, 1, 2)]
    assert [t.completion_ids for t in runs[0]] == [t.completion_ids for t in runs[1]]
    assert [t.completion_ids for t in runs[0]] != [t.completion_ids for t in runs[2]]
    assert all(0 < t.n_completion_tokens <= 20 for t in runs[0])


def test_first_repeat_finds_the_token_that_repeats_an_ngram():
    assert _first_repeat([1, 2, 3], [1, 2, 5], 3) is None
    assert _first_repeat([1, 2, 3], [1, 2, 3], 3) == 2  # 1 2 3 again: the 3 is the repeat
    assert _first_repeat([], [7, 8, 7, 8], 2) == 3  # the second "7 8" ends at its 8
    assert _first_repeat([1, 2, 1], [2], 0) is None  # guard off


class _Scripted(LlamaCppPolicy):
    """The server replaced by a script of replies, to test the turn logic alone."""

    def __init__(self, tok, replies):
        super().__init__(tokenizer=tok, gguf=None)
        self.replies, self.calls = list(replies), []

    def _raw(self, context, n, decoding, seed, slot, ban):
        self.calls.append((len(context), n, sorted(ban)))
        return self.replies.pop(0)


def test_turn_redraws_a_banned_token_and_stops_on_the_redraw(smol):
    _, tok = smol
    close = tok("</tool_call>", add_special_tokens=False)["input_ids"]
    # the server repeats "5 6 7" (banned at the second 7), the redraw gives 9, then the turn ends with </tool_call>
    p = _Scripted(tok, [[5, 6, 7, 5, 6, 7, 8], [9], close + [11, 12]])
    out = p.turn([1, 2], 50, Decoding(0.0, 1.0, 3), 0, 0)
    assert out == [5, 6, 7, 5, 6, 9] + close
    assert p.calls[1] == (2 + 5, 1, [7])
    # a redrawn token that ends the turn ends it: no further request
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    p = _Scripted(tok, [[5, 6, 7, 5, 6, 7, 8], [eot], [99]])
    assert p.turn([1], 50, Decoding(0.0, 1.0, 3), 0, 0) == [5, 6, 7, 5, 6, eot] and len(p.calls) == 2
