"""The multi-turn rollout engine, driven by scripted models over the real SmolLM2 tokenizer.

The tokenizer is real (with the Qwen2.5 tool template the project uses) because the
loss mask depends on how tool calls and tool results tokenise; the model is a script
keyed by the request in the prompt, so every turn's output is known exactly.
"""

from __future__ import annotations

import math

import pytest

from mrrec_lib.agent.parse import parse_answer
from mrrec_lib.agent.prompt import build_prompt
from mrrec_lib.agent.rollout import ToolResult, run_rollouts
from mrrec_lib.agent.trajectory import Trajectory, load_trajectories, save_trajectories
from mrrec_lib.config import Config
from mrrec_lib.train.rewards import score_trajectories

CALL = '<tool_call>\n{"name": "memory_retrieval_tool", "arguments": {"query": "tea taste"}}\n</tool_call>'
ANSWER = '\\boxed{"ideal_item_profile": "malty Assam black tea", "useful_memory_ids": ["pref:tea:1"]}'
TOOL_TEXT = "[pref:tea:1] prefers strong malty black tea\n[rec:4] bought Assam loose leaf, 5 stars"
ASPECTS = [{"aspect": "Flavor Profile", "text": "strength and taste of the tea"}]


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from mrrec_lib.llm.models import ensure_smollm2, tool_chat_template

    t = AutoTokenizer.from_pretrained(ensure_smollm2(Config()))
    t.chat_template = tool_chat_template()
    return t


class ScriptedPolicy:
    """A `TokenPolicy` whose n-th turn for request q is `scripts[q][n]` (text, `<|im_end|>` allowed)."""

    def __init__(self, tokenizer, scripts: dict[str, list[str]]):
        self.tokenizer = tokenizer
        self.scripts = scripts
        self.seen: list[list[int]] = []

    def _script(self, context_text: str) -> tuple[str, int]:
        for q in self.scripts:
            if f'A user asks: "{q}"' in context_text:
                return q, context_text.count("<|im_start|>assistant") - 1
        raise AssertionError("context of an unknown request")

    def generate_ids(self, contexts, max_new_tokens, temperature, top_p, seed):
        outs = []
        for c in contexts:
            self.seen.append(list(c))
            q, turn = self._script(self.tokenizer.decode(c))
            turns = self.scripts[q]
            text = turns[turn] if turn < len(turns) else "<|im_end|>"
            outs.append(self.tokenizer(text, add_special_tokens=False)["input_ids"][:max_new_tokens])
        return outs


class RankRetriever:
    """`ItemRetriever.ranks` stand-in: a fixed rank per profile text, counting its calls."""

    def __init__(self, ranks: dict[str, int], default: int = 5000):
        self.table, self.default, self.calls = ranks, default, []

    def ranks(self, texts, target_item_ids):
        self.calls.append((list(texts), list(target_item_ids)))
        return [self.table.get(t, self.default) for t in texts]


def cfg(**kw) -> Config:
    base = {"max_tool_calls": 3, "max_new_tokens_total": 768, "max_new_tokens_per_turn": 256, "rollout_batch_size": 8}
    return Config(**{**base, **kw})


def memory_tool(query: str) -> ToolResult:
    return ToolResult(text=TOOL_TEXT, entry_ids=["pref:tea:1", "rec:4"])


def enc(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_tool_call_then_answer_ids_mask_parse_and_reward(tok):
    turn1 = "I should check the user's taste.\n" + CALL
    turn2 = "The user likes malty tea.\n" + ANSWER
    policy = ScriptedPolicy(tok, {"strong tea": [turn1 + " trailing junk", turn2 + "<|im_end|>"]})
    prompt = build_prompt("mrrec", "strong tea", aspects=ASPECTS)
    (traj,) = run_rollouts(policy, [prompt], [memory_tool], cfg(), qids=["q1"], progress=False)

    eot = tok.convert_tokens_to_ids("<|im_end|>")
    tool_block = (
        f"\n<|im_start|>user\n<tool_response>\n{TOOL_TEXT}\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )
    model1, tool_ids, model2 = enc(tok, turn1) + [eot], enc(tok, tool_block), enc(tok, turn2) + [eot]
    assert traj.completion_ids == model1 + tool_ids + model2
    assert traj.completion_mask == [1] * len(model1) + [0] * len(tool_ids) + [1] * len(model2)
    assert traj.n_new_tokens == len(model1) + len(model2)
    assert traj.n_completion_tokens == len(traj.completion_ids)

    # ids are exactly what the model saw: the second turn's context is prompt + first turn + tool block
    assert policy.seen[1] == traj.prompt_ids + model1 + tool_ids
    rendered = tok.apply_chat_template(traj.messages, tools=traj.tools, tokenize=False)
    assert tok.decode(traj.prompt_ids + traj.completion_ids) + "\n" == rendered

    assert (traj.n_tool_calls, traj.n_invalid_calls, traj.finish_reason) == (1, 0, "answer")
    assert traj.tool_queries == ["tea taste"] and traj.retrieved_ids == ["pref:tea:1", "rec:4"]
    assert [m["role"] for m in traj.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert traj.parse_ok and traj.profile == "malty Assam black tea" and traj.memory_ids == ["pref:tea:1"]

    retriever = RankRetriever({"malty Assam black tea": 3})
    (r,) = score_trajectories([traj], ["item9"], retriever, Config())
    assert retriever.calls == [(["malty Assam black tea"], ["item9"])]
    assert (r.format, r.memory, r.rank) == (1.0, 1.0, 3)
    assert r.ndcg100 == r.ndcg1000 == pytest.approx(1 / math.log2(4))
    assert r.total == pytest.approx(0.1 + 5 * 1.0 + 0.1)


def test_batch_of_rollouts_with_different_lengths(tok):
    scripts = {
        "a": [CALL, CALL.replace("tea taste", "budget"), ANSWER + "<|im_end|>"],
        "b": [ANSWER + "<|im_end|>"],
        "c": ["no answer at all<|im_end|>"],
    }
    policy = ScriptedPolicy(tok, scripts)
    prompts = [build_prompt("mrrec", q, aspects=ASPECTS) for q in scripts]
    trajs = run_rollouts(policy, prompts, [memory_tool] * 3, cfg(), qids=list(scripts), progress=False)
    assert [t.qid for t in trajs] == ["a", "b", "c"]
    assert [t.n_tool_calls for t in trajs] == [2, 0, 0]
    assert [t.parse_ok for t in trajs] == [True, True, False]
    assert trajs[0].tool_queries == ["tea taste", "budget"]
    assert len(policy.seen) == 3 + 1 + 1  # turn 1 for all three, then only "a" keeps going
    for t in trajs:
        assert len(t.completion_ids) == len(t.completion_mask) == t.n_completion_tokens
        rendered = tok.apply_chat_template(t.messages, tools=t.tools, tokenize=False)
        assert tok.decode(t.prompt_ids + t.completion_ids) + "\n" == rendered


BAD_CALL = "<tool_call>{not json</tool_call>"
WRONG_TOOL = '<tool_call>{"name": "web_search", "arguments": {"query": "x"}}</tool_call>'
NO_QUERY = '<tool_call>{"name": "memory_retrieval_tool", "arguments": {}}</tool_call>'


@pytest.mark.parametrize(
    "turns,finish,n_ok,n_bad,parse_error",
    [
        ([""], "length", 0, 0, "no \\boxed"),  # nothing generated at all
        (["<|im_end|>"], "answer", 0, 0, "no \\boxed"),  # empty turn
        (["\\boxed{not json}<|im_end|>"], "answer", 0, 0, "not a JSON object"),
        ([BAD_CALL, WRONG_TOOL, NO_QUERY, ANSWER + "<|im_end|>"], "answer", 0, 3, None),
        ([CALL] * 5, "max_tool_calls", 3, 2, "no \\boxed"),  # 3 calls, a warning, then the rollout ends
        ([CALL] * 4 + [ANSWER + "<|im_end|>"], "answer", 3, 1, None),  # answers after the warning
        (
            ['<tool_call>{"name": "memory_retrieval_tool", "arguments": {"query": "open"}}<|im_end|>', ANSWER],
            "length",
            1,
            0,
            None,
        ),
        (["word " * 400], "length", 0, 0, "no \\boxed"),  # runs out of the per-turn budget
    ],
)
def test_malformed_outputs_end_gracefully(tok, turns, finish, n_ok, n_bad, parse_error):
    policy = ScriptedPolicy(tok, {"q": turns})
    (t,) = run_rollouts(policy, [build_prompt("mrrec", "q")], [memory_tool], cfg(), progress=False)
    assert (t.finish_reason, t.n_tool_calls, t.n_invalid_calls) == (finish, n_ok, n_bad)
    assert t.parse_ok is (parse_error is None)
    if parse_error:
        assert parse_error in t.parse_error
    assert len(t.completion_ids) == len(t.completion_mask) <= 768
    (r,) = score_trajectories([t], ["item"], RankRetriever({}, default=1), Config())
    assert r.format == float(t.parse_ok)
    if not t.parse_ok:
        assert (r.retrieval, r.rank) == (0.0, None)


def test_error_messages_reach_the_model(tok):
    policy = ScriptedPolicy(tok, {"q": [BAD_CALL, WRONG_TOOL, ANSWER + "<|im_end|>"]})
    (t,) = run_rollouts(policy, [build_prompt("mrrec", "q")], [memory_tool], cfg(), progress=False)
    tool_msgs = [m["content"] for m in t.messages if m["role"] == "tool"]
    assert tool_msgs[0].startswith("Error: tool call is not valid JSON")
    assert tool_msgs[1].startswith("Error: unknown tool 'web_search'")
    assert [c.error is not None for c in t.tool_calls] == [True, True]


def test_failing_tool_and_tool_less_prompt(tok):
    def broken(query):
        raise RuntimeError("index offline")

    policy = ScriptedPolicy(tok, {"q": [CALL, ANSWER + "<|im_end|>"]})
    (t,) = run_rollouts(policy, [build_prompt("mrrec", "q")], [broken], cfg(), progress=False)
    assert "tool failed: RuntimeError: index offline" in t.messages[3]["content"]
    assert t.n_tool_calls == 0 and t.parse_ok

    policy = ScriptedPolicy(tok, {"q": [CALL, ANSWER + "<|im_end|>"]})
    (t,) = run_rollouts(policy, [build_prompt("no_memory", "q")], [None], cfg(), progress=False)
    assert "no tools are available" in t.messages[3]["content"] and t.tools is None


def test_total_budget_counts_tool_results(tok):
    policy = ScriptedPolicy(tok, {"q": [CALL, ANSWER + "<|im_end|>"]})
    n_call = len(enc(tok, CALL)) + 1
    budget = n_call + 10  # the tool result does not fit
    (t,) = run_rollouts(
        policy, [build_prompt("mrrec", "q")], [memory_tool], cfg(max_new_tokens_total=budget), progress=False
    )
    assert t.finish_reason == "length" and t.completion_mask == [1] * n_call
    assert [m["role"] for m in t.messages][-1] == "assistant"

    policy = ScriptedPolicy(tok, {"q": [CALL, ANSWER + "<|im_end|>"]})
    tight = cfg(max_new_tokens_total=n_call - 1)  # the call fits, its closing <|im_end|> does not
    (t,) = run_rollouts(policy, [build_prompt("mrrec", "q")], [memory_tool], tight, progress=False)
    assert (t.finish_reason, t.n_tool_calls, len(t.completion_ids)) == ("length", 0, n_call - 1)


class ScriptedChat:
    """A `ChatLLM` returning scripted text; drops the stop string like OpenAI-compatible servers."""

    name = "scripted"

    def __init__(self, scripts):
        self.scripts, self.requests = scripts, []

    def chat(self, conversations, sampling, n=1, tools=None):
        outs = []
        for conv in conversations:
            self.requests.append((conv, tools, sampling))
            q = next(k for k in self.scripts if f'A user asks: "{k}"' in conv[1]["content"])
            turn = sum(1 for m in conv if m["role"] == "assistant")
            text = self.scripts[q][turn]
            outs.append([text.split("</tool_call>")[0]])
        return outs


def test_text_backend_rollout():
    llm = ScriptedChat({"q": [CALL, ANSWER], "r": [ANSWER]})
    prompts = [build_prompt("mrrec", "q"), build_prompt("no_memory", "r")]
    t, u = run_rollouts(llm, prompts, [memory_tool, None], cfg(), progress=False)
    assert t.parse_ok and t.n_tool_calls == 1 and t.completion_ids == [] and t.n_new_tokens > 0
    assert u.parse_ok and u.n_tool_calls == 0
    second_turn, tools, sampling = next(r for r in llm.requests if len(r[0]) == 4)
    assert second_turn[2]["tool_calls"][0]["function"] == {
        "name": "memory_retrieval_tool",
        "arguments": {"query": "tea taste"},
    }
    assert second_turn[3] == {"role": "tool", "name": "memory_retrieval_tool", "content": TOOL_TEXT}
    assert tools[0]["function"]["name"] == "memory_retrieval_tool" and sampling.stop == ("</tool_call>",)
    assert [tools is None for conv, tools, _ in llm.requests if 'asks: "r"' in conv[1]["content"]] == [True]


class FailsOn:
    """Wraps a chat backend so that any batch holding request `bad` raises, like a server error."""

    def __init__(self, inner, bad: str):
        self.inner, self.bad = inner, bad

    def _check(self, texts):
        if any(f'A user asks: "{self.bad}"' in t for t in texts):
            raise ConnectionError("backend returned HTTP 500")

    def chat(self, conversations, *args, **kw):
        self._check([c[1]["content"] for c in conversations])
        return self.inner.chat(conversations, *args, **kw)


class TokenFailsOn(FailsOn):
    """The same for a token policy."""

    def __init__(self, inner, bad: str):
        super().__init__(inner, bad)
        self.tokenizer = inner.tokenizer

    def generate_ids(self, contexts, *args):
        self._check([self.tokenizer.decode(c) for c in contexts])
        return self.inner.generate_ids(contexts, *args)


def test_a_failing_row_is_finished_as_an_error_and_the_batch_goes_on(tok):
    scripts = {"q": [CALL, ANSWER + "<|im_end|>"], "bad": [ANSWER + "<|im_end|>"], "r": [ANSWER + "<|im_end|>"]}
    prompts = [build_prompt("mrrec", q) for q in scripts]
    policy = TokenFailsOn(ScriptedPolicy(tok, scripts), "bad")
    t, bad, r = run_rollouts(policy, prompts, [memory_tool] * 3, cfg(), progress=False)
    assert t.parse_ok and t.n_tool_calls == 1 and r.parse_ok
    assert (bad.finish_reason, bad.parse_ok) == ("error", False)
    assert bad.parse_error == "rollout failed: ConnectionError: backend returned HTTP 500"
    assert bad.completion_mask == [0] and bad.prompt_ids == enc(tok, tok.apply_chat_template(
        prompts[1].messages, tools=prompts[1].tools, tokenize=False, add_generation_prompt=True))
    rewards = score_trajectories([t, bad, r], ["x"] * 3, RankRetriever({}, default=2), Config())
    assert rewards[1].total == 0.0 and rewards[0].total > 0

    chat = FailsOn(ScriptedChat({"q": [CALL, ANSWER], "bad": [ANSWER], "r": [ANSWER]}), "bad")
    t, bad, r = run_rollouts(chat, prompts, [memory_tool] * 3, cfg(), progress=False)
    assert t.parse_ok and r.parse_ok and bad.finish_reason == "error" and not bad.parse_ok


def test_rollouts_raise_when_every_row_fails(tok):
    policy = TokenFailsOn(ScriptedPolicy(tok, {"bad": [ANSWER]}), "bad")
    with pytest.raises(RuntimeError, match="every one of 2 rollouts failed") as err:
        run_rollouts(policy, [build_prompt("mrrec", "bad")] * 2, [memory_tool] * 2, cfg(), progress=False)
    assert isinstance(err.value.__cause__, ConnectionError)


def test_trajectory_roundtrip(tok, tmp_path):
    policy = ScriptedPolicy(tok, {"q": [CALL, ANSWER + "<|im_end|>"]})
    trajs = run_rollouts(policy, [build_prompt("mrrec", "q")], [memory_tool], cfg(), progress=False)
    rewards = score_trajectories(trajs, ["x"], RankRetriever({}, default=2), Config())
    path = save_trajectories(tmp_path / "t.jsonl", trajs, rewards)
    (back,) = load_trajectories(path)
    assert back == trajs[0]
    assert Trajectory.from_dict(trajs[0].to_dict()) == trajs[0]
    with pytest.raises(ValueError, match="qid"):
        Trajectory.from_dict({"messages": []})
    assert parse_answer(back.messages[-1]["content"]).ok
