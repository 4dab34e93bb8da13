"""`run_policy_on_queries`: prompts + the real MemoryStore's tool + rollouts + rewards, logged and resumable."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from mrrec_lib.agent.run import default_prompt_kind, run_policy_on_queries, store_tool
from mrrec_lib.config import Config
from mrrec_lib.memory import snapshot_key
from mrrec_lib.memory.store import MemoryStore
from mrrec_lib.runs import read_jsonl

CALL = '<tool_call>{"name": "memory_retrieval_tool", "arguments": {"query": "tea strength"}}</tool_call>'


def answer(profile: str) -> str:
    return '\\boxed{"ideal_item_profile": "' + profile + '", "useful_memory_ids": ["rec:0"]}'


class HashEncoder:
    """Bag-of-words hashing encoder: deterministic, offline, good enough to rank a handful of entries."""

    def encode(self, texts, kind="doc"):
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, int(hashlib.md5(w.strip(".,:").encode()).hexdigest(), 16) % 64] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


QUERIES = pd.DataFrame(
    {
        "qid": ["q1", "q2"],
        "user_id": ["u1", "u2"],
        "target_timestamp": [10, 20],
        "category": ["Grocery", "Grocery"],
        "query": ["a strong tea", "a spicy sauce"],
        "target_item_id": ["tea9", "sauce3"],
    }
)


def make_store() -> MemoryStore:
    """Two users' local memory and two global aspects, searched with the hashing encoder."""
    s1, s2 = snapshot_key("u1", 10), snapshot_key("u2", 20)
    local = pd.DataFrame(
        [
            [s1, "u1", "rec:0", "record", "Tea", "bought Assam tea strength strong, 5 stars"],
            [s1, "u1", "pref:tea:0", "pattern", "Tea", "likes malty strong black tea"],
            [s2, "u2", "rec:0", "record", "Sauces", "bought habanero sauce, 4 stars"],
        ],
        columns=["snapshot", "user_id", "entry_id", "level", "category", "text"],
    )
    glob = pd.DataFrame(
        [["Grocery", "Flavor", "Flavor: taste intensity"], ["Grocery", "Budget", "Budget: price range"]],
        columns=["category", "aspect", "text"],
    )
    cfg = Config(memory_top_k=2, global_top_k=2)
    return MemoryStore(cfg, local, glob, encoder=HashEncoder())


@pytest.fixture()
def store():
    return make_store()


class ScriptedChat:
    name = "scripted"

    def __init__(self, scripts):
        self.scripts, self.calls = scripts, 0

    def chat(self, conversations, sampling, n=1, tools=None):
        self.calls += 1
        outs = []
        for conv in conversations:
            q = next(k for k in self.scripts if f'A user asks: "{k}"' in conv[1]["content"])
            turn = sum(1 for m in conv if m["role"] == "assistant")
            outs.append([self.scripts[q][turn]])
        return outs


class TableRetriever:
    def __init__(self):
        self.calls = 0

    def ranks(self, texts, targets):
        self.calls += 1
        return np.array([1 if t.split()[0] in g else 2000 for t, g in zip(texts, targets, strict=True)])


def test_store_tool_reports_entry_ids(store):
    tool = store_tool(store, snapshot_key("u1", 10), 2)
    res = tool("strong tea")
    assert res.text.splitlines()[0].startswith("[")
    assert sorted(res.entry_ids) == ["pref:tea:0", "rec:0"]
    assert tool("   ").entry_ids == []  # the store's "no query" message carries no ids
    assert store_tool(store, "nobody@1", 2)("tea").entry_ids == []


def test_run_policy_on_queries_end_to_end_and_resume(store, tmp_path):
    llm = ScriptedChat({"a strong tea": [CALL, answer("tea malty strong")], "a spicy sauce": [answer("sauce hot")]})
    retriever = TableRetriever()
    cfg = Config(memory_top_k=2, global_top_k=2, rollout_batch_size=2)
    out = tmp_path / "trajs.jsonl"
    trajs, rewards = run_policy_on_queries(
        QUERIES, llm, cfg, store=store, retriever=retriever, out_path=out, progress=False
    )
    assert [t.qid for t in trajs] == ["q1", "q2"]
    t1, t2 = trajs
    assert "- Flavor: taste intensity" in t1.messages[1]["content"]  # global memory in the prompt
    assert t1.n_tool_calls == 1 and "rec:0" in t1.retrieved_ids and t1.messages[3]["role"] == "tool"
    assert t1.parse_ok and t1.profile == "tea malty strong"
    assert [r.rank for r in rewards] == [1, 1]
    assert rewards[0].total == pytest.approx(0.1 + 5 * 2 + 0.1) and rewards[1].total == pytest.approx(0.1 + 5 * 2)
    assert retriever.calls == 1  # one ranks() call for the batch
    rows = read_jsonl(out)
    assert [r["qid"] for r in rows] == ["q1", "q2"] and rows[0]["target_item_id"] == "tea9"

    calls_before = llm.calls
    again, rewards2 = run_policy_on_queries(
        QUERIES, llm, cfg, store=store, retriever=retriever, out_path=out, progress=False
    )
    assert llm.calls == calls_before and retriever.calls == 1  # everything came from the log
    assert again == trajs and rewards2 == rewards


def test_samples_kinds_and_errors(store):
    llm = ScriptedChat({"a strong tea": [answer("tea")] * 3, "a spicy sauce": [answer("sauce")] * 3})
    cfg = Config(rollout_batch_size=3)
    trajs, rewards = run_policy_on_queries(QUERIES, llm, cfg, kind="no_memory", num_samples=2, progress=False)
    assert [(t.qid, t.sample) for t in trajs] == [("q1", 0), ("q1", 1), ("q2", 0), ("q2", 1)]
    assert rewards is None and all(t.tools is None and t.prompt_kind == "no_memory" for t in trajs)

    texts = {"q1": "Assam tea, 5 stars", "q2": "hot sauce, 4 stars"}
    trajs, _ = run_policy_on_queries(QUERIES, llm, cfg, kind="naive", memory_texts=texts, progress=False)
    assert "Assam tea, 5 stars" in trajs[0].messages[1]["content"]
    with pytest.raises(KeyError, match="memory_texts"):
        run_policy_on_queries(QUERIES, llm, cfg, kind="static", memory_texts={"q1": "x"}, progress=False)
    with pytest.raises(ValueError, match="MemoryStore"):
        run_policy_on_queries(QUERIES, llm, cfg, kind="mrrec", progress=False)
    with pytest.raises(KeyError, match="target_item_id"):
        run_policy_on_queries(
            QUERIES.drop(columns="target_item_id"),
            llm,
            cfg,
            kind="no_memory",
            retriever=TableRetriever(),
            progress=False,
        )


def test_default_prompt_kind():
    assert default_prompt_kind(Config()) == "mrrec"
    assert default_prompt_kind(Config(policy_uses_memory=False)) == "no_memory"
    assert default_prompt_kind(Config(local_memory=False)) == "global_only"
