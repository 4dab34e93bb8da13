"""Memory construction and the memory store, on a tiny hand-made world with a fake LLM and a fake encoder.

The fakes keep these tests independent of the real backends: the fake LLM
answers by prompt type (and can be told to emit malformed JSON or to die after
a number of calls), the fake encoder is a hashed bag of words.
"""

import hashlib
import json
import re

import numpy as np
import pandas as pd
import pytest

from mrrec_lib.config import Config
from mrrec_lib.data.schema import validate
from mrrec_lib.llm.base import Sampling, Usage
from mrrec_lib.memory import snapshot_key
from mrrec_lib.memory.extractive import ExtractiveLocal, merge_aspects
from mrrec_lib.memory.global_memory import (
    build_global_memory,
    nearest_negatives,
    sample_global_queries,
    write_global_memory,
)
from mrrec_lib.memory.jsonio import parse_json_object
from mrrec_lib.memory.local import build_local_memory, spread, write_local_entries
from mrrec_lib.memory.prompts import parse_summary
from mrrec_lib.memory.report import memory_tree, target_review_leaks
from mrrec_lib.memory.snapshots import history_records, iter_snapshots, query_snapshots
from mrrec_lib.memory.store import (
    EMPTY_QUERY_MESSAGE,
    MemoryStore,
    format_global_aspects,
    memory_tool,
    static_profile_text,
)
from mrrec_lib.memory.text import canonical_aspect, chunk_text
from mrrec_lib.runs import MissingStageError, RunPaths

LEAK = "zebraflamingo"  # appears only in target reviews


class FakeEncoder:
    """Hashed bag of words, L2-normalised: similar wording -> similar vectors."""

    def __init__(self, dim: int = 64):
        self.dim = dim
        self.calls = 0

    def encode(self, texts, kind="doc"):
        self.calls += 1
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in re.findall(r"[a-z]+", t.lower()):
                out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % self.dim] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


class FakeLLM:
    """Answers memory prompts by type. `mode`: good | malformed | retry_ok; `die_after`: raise after that many chats."""

    name = "fake"

    def __init__(self, mode: str = "good", die_after: int | None = None):
        self.mode, self.die_after = mode, die_after
        self.usage = Usage()
        self.chats = 0
        self.conversations: list[str] = []

    def _reply(self, prompt: str, sampling: Sampling) -> str:
        if self.mode == "malformed" or (self.mode == "retry_ok" and sampling.temperature == 0):
            return "Sure! {'aspect': oops, [unclosed"
        if "Summarise this shopper" in prompt:
            group = re.search(r"Category: (.+)", prompt).group(1)
            return f"In {group} the shopper values freshness and steady quality. They avoid overpriced items."
        if "general profile" in prompt:
            return "A careful shopper who buys mid-priced food and rewards quality. Likes familiar brands."
        if "Merge duplicate" in prompt:
            return "```json\n{'Budget': ['Cares about price',], 'Flavor': ['Wants bold flavor']}\n```"
        return (
            'Here you go: {"category_level_personalization_aspects": [{"category": "Grocery", "aspect": "budget", '
            '"description": "Price matters"}], "subcategory_level_personalization_aspects": []}'
        )

    def chat(self, conversations, sampling, n=1, tools=None):
        if self.die_after is not None and self.chats >= self.die_after:
            raise RuntimeError("simulated kill")
        self.chats += 1
        out = []
        for conv in conversations:
            prompt = conv[-1]["content"]
            self.conversations.append(prompt)
            reply = self._reply(prompt, sampling)
            self.usage.prompt_tokens += len(prompt.split())
            self.usage.completion_tokens += len(reply.split())
            self.usage.calls += 1
            out.append([reply] * n)
        return out


def _tables():
    items = [
        ("i1", "Grocery", "Beverages", "Acme Dark Roast Coffee Whole Bean", "Bold organic coffee", "Acme", 12.0),
        ("i2", "Grocery", "Beverages", "Acme Vanilla Coffee Pods", "Vanilla flavored pods", "Acme", 15.0),
        ("i3", "Grocery", "Snacks", "Crunchy Sea Salt Chips", "Potato chips", "Crispo", 3.0),
        ("i4", "Grocery", "Snacks", "Dark Chocolate Bar", "70% cocoa bar", "Chocoly", 4.5),
        ("i5", "Grocery", "Beverages", "Mint Green Tea Bags", "Organic green tea with mint", "Leafy", 6.0),
        ("i6", "Grocery", "Snacks", "Honey Roasted Almond Bites", "Almond snack", "Nutty", 7.0),
        ("i7", "Grocery", "Beverages", "Lemon Sparkling Water Cans", "Pack of 12 cans", "Fizz", 9.0),
        ("i8", "Beauty", "Skin", "Lavender Body Lotion", "Lotion for dry skin", "Soft", 11.0),
        ("i9", "Beauty", "Skin", "Unscented Face Cream", "Fragrance free cream for sensitive skin", "Derma", 20.0),
        ("i10", "Beauty", "Skin", "Rose Face Serum", "Serum with rose oil", "Bloom", 25.0),
        ("i11", "Grocery", "Beverages", "Caramel Coffee Pods", "Caramel flavored pods", "Beanz", 14.0),
        ("i12", "Grocery", "Beverages", "Decaf Coffee Ground", "Decaf ground coffee", "Acme", 10.0),
    ]
    items = pd.DataFrame(
        items, columns=["item_id", "category", "subcategory", "title", "description", "store", "price"]
    )
    items["text"] = items.title + ". " + items.description
    items["source"] = "test"
    inter = [
        ("u1", "i1", 5, "Great coffee", "Rich and bold, my morning staple.", 1),
        ("u1", "i3", 4, "Tasty", "Salty and crunchy snack for work.", 2),
        ("u1", "i2", 2, "Too sweet", "The vanilla is artificial and too sweet.", 3),
        ("u1", "i4", 5, "Yum", "Dark and not too sweet.", 4),
        ("u1", "i5", 5, "Lovely tea", f"Fresh mint {LEAK} tea I drink daily.", 5),  # target of u1's train query
        ("u1", "i6", 4, "Good bites", "Nice crunchy almond snack.", 6),
        ("u1", "i12", 5, "Decaf", f"Decaf {LEAK} that tastes real.", 7),  # target of u1's test query
        ("u2", "i8", 5, "Soft skin", "Calms my dry skin.", 1),
        ("u2", "i10", 3, "Okay serum", "Smells strong of rose.", 2),
        ("u2", "i7", 4, "Fizzy", "Refreshing lemon water.", 3),
        ("u2", "i9", 5, "Perfect", f"No scent at all {LEAK}.", 4),  # target of u2's query
    ]
    inter = pd.DataFrame(inter, columns=["user_id", "item_id", "rating", "review_title", "review_text", "timestamp"])
    inter = inter.merge(items[["item_id", "category"]], on="item_id")
    inter["source"] = "test"
    queries = pd.DataFrame(
        [
            ("q1", "u1", "i5", "Grocery", "a calming tea for daily breaks", "train", 5),
            ("q2", "u1", "i12", "Grocery", "coffee without caffeine for evenings", "test", 7),
            ("q3", "u2", "i9", "Beauty", "gentle face cream for sensitive skin", "train", 4),
            ("q4", "u2", "i9", "Beauty", "a face cream that is gentle", "val", 4),  # same snapshot as q3
        ],
        columns=["qid", "user_id", "target_item_id", "category", "query", "split", "target_timestamp"],
    )
    queries["raw_query"] = queries["query"]
    queries["query_builder"] = "test"
    queries["source"] = "test"
    queries["title_overlap"] = 0
    queries["title_overlap_raw"] = 0
    return validate(items, "items"), validate(inter, "interactions"), validate(queries, "queries")


def make_world():
    items, inter, queries = _tables()
    histories = history_records(inter, items, "subcategory")
    snaps = iter_snapshots(query_snapshots(queries), histories)
    return items, inter, queries, histories, snaps


@pytest.fixture
def world():
    return make_world()


def _cfg(**kw):
    return Config(
        memory_chunk_chars=120, global_queries_per_category=10, global_num_negatives=2, llm_batch_size=2, **kw
    )


def _local(world, tmp_path, builder="extractive", llm=None, cfg=None):
    _, _, _, histories, snaps = world
    return build_local_memory(cfg or _cfg(), snaps, ExtractiveLocal(histories), tmp_path / "parts", builder, llm)


# ---- lenient JSON and text shaping -----------------------------------------------------------
@pytest.mark.parametrize(
    "text,expected",
    [
        ('{"a": 1}', {"a": 1}),
        ('Sure! ```json\n{"a": [1, 2,],}\n``` done', {"a": [1, 2]}),
        ("{'a': 'x', 'b': True}", {"a": "x", "b": True}),
        ('prefix {"a": {"b": "}"}} suffix {"c": 2}', {"a": {"b": "}"}}),
        ('{"a": [1, 2', {"a": [1, 2]}),  # cut off at the token limit
        ('{"a": "unterminated', {"a": "unterminated"}),
    ],
)
def test_parse_json_object_is_lenient(text, expected):
    assert parse_json_object(text) == expected


@pytest.mark.parametrize("text", ["", "no json here", "[1, 2]", "{oops: [unclosed, }", None])
def test_parse_json_object_returns_none_for_garbage(text):
    assert parse_json_object(text) is None


def test_chunks_are_short_sentence_aware_and_lose_nothing():
    text = "Likes bold coffee. Prefers Acme and Beanz! " + "Very long sentence about flavour" * 10 + ". Short end."
    chunks = chunk_text(text, 80)
    assert all(len(c) <= 80 for c in chunks)
    assert chunks[0] == "Likes bold coffee. Prefers Acme and Beanz!"
    assert chunks[-1].endswith("flavour. Short end.")
    assert "".join(" ".join(chunks).split()) == "".join(text.split())


def test_summaries_that_copy_the_prompt_or_invent_prices_are_malformed():
    prompt = "Category: Tea. 1. Bought Harney Tea ($8.50). Rated 5/5. Review: lovely smooth black tea with a hint of vanilla."
    assert parse_summary("Prefers Harney black tea at about $8.50 and rates it highly.", prompt)
    assert parse_summary("Prefers Harney black tea at about $12 and rates it highly.", prompt) is None
    assert parse_summary("Bought Harney Tea. Review: lovely smooth black tea with a hint of vanilla.", prompt) is None
    assert parse_summary("ok", prompt) is None
    assert (
        parse_summary("The profile is: Spending habits: Brand inclination: Style priorities: Lifestyle hints:") is None
    )
    assert parse_summary("Prefers black tea from Harney and smooth vanilla notes overall.", prompt)
    assert parse_summary("Prefers black tea from Bunsters and Souris, the top 3 pick of 300.", prompt) is None
    assert parse_summary("Likes loose tea. Likes loose tea. Likes loose tea. Prefers smooth black blends.") == (
        "Likes loose tea. Prefers smooth black blends."
    )


def test_canonical_aspect_names():
    assert canonical_aspect("price-sensitivity") == canonical_aspect("Price Sensitivity") == "Price Sensitivity"
    assert canonical_aspect("SPF level") == "SPF Level"


def test_spread_is_deterministic_and_covers_the_range():
    assert spread(list(range(10)), 3) == [0, 3, 6]
    assert spread([1, 2], 5) == [1, 2] and spread([1, 2], 0) == []


# ---- snapshots and leakage -------------------------------------------------------------------------
def test_snapshots_see_only_the_past(world):
    _, _, queries, _, snaps = world
    assert [s.key for s in snaps] == [snapshot_key("u1", 5), snapshot_key("u1", 7), snapshot_key("u2", 4)]
    by_key = {s.key: s for s in snaps}
    assert [r["item_id"] for r in by_key["u1@5"].records] == ["i1", "i3", "i2", "i4"]
    assert all(r["timestamp"] < s.target_timestamp for s in snaps for r in s.records)


@pytest.mark.parametrize("builder", ["extractive", "llm"])
def test_target_review_never_enters_its_snapshot(world, tmp_path, builder):
    res = _local(world, tmp_path, builder, FakeLLM() if builder == "llm" else None)
    assert set(res.entries.snapshot) == {"u1@5", "u1@7", "u2@4"}
    for snap, target in [("u1@5", "i5"), ("u2@4", "i9")]:
        text = " ".join(res.entries.loc[res.entries.snapshot == snap, "text"]).lower()
        assert LEAK not in text
        assert "mint green tea" not in text if target == "i5" else "unscented face cream" not in text
    later = " ".join(res.entries.loc[res.entries.snapshot == "u1@7", "text"]).lower()
    assert LEAK in later  # the test snapshot legitimately remembers the earlier tea review


def test_leak_check_finds_an_injected_target_review(world, tmp_path):
    _, inter, queries, _, _ = world
    entries = _local(world, tmp_path).entries
    assert target_review_leaks(entries, queries, inter, min_words=3) == []
    leaked = entries.copy()
    leaked.loc[leaked.snapshot == "u2@4", "text"] += f" No scent at all {LEAK}."
    assert target_review_leaks(leaked, queries, inter, min_words=3) == ["u2@4"]


# ---- local memory: structure, ids, sharing, resume -----------------------------------------------------
def test_local_memory_levels_and_ids(world, tmp_path):
    e = _local(world, tmp_path).entries
    assert list(e.columns) == ["snapshot", "user_id", "entry_id", "level", "category", "text"]
    for _, grp in e.groupby("snapshot"):
        assert grp.entry_id.is_unique
        assert set(grp.level) == {"record", "pattern", "profile"}
    ids = set(e.loc[e.snapshot == "u1@5", "entry_id"])
    assert {"rec:1", "rec:4", "pref:beverages:1", "pref:snacks:1", "profile:1"} <= ids
    assert all(re.fullmatch(r"rec:\d+|pref:[a-z0-9_]+:\d+|profile:\d+", i) for i in e.entry_id)
    assert (e.loc[e.level != "record", "text"].str.len() <= 120).all()
    pattern = " ".join(e.loc[(e.snapshot == "u1@5") & (e.category == "Beverages"), "text"])
    assert "Acme (2 purchases)" in pattern and "vanilla" in pattern.lower()


def test_memory_tree_shows_every_level(world, tmp_path):
    e = _local(world, tmp_path).entries
    tree = memory_tree(e[e.snapshot == "u1@5"])
    assert tree.splitlines()[0] == "snapshot u1@5"
    assert "├── record (4 entries)" in tree and "[pref:snacks:1]" in tree and "└── profile" in tree


def test_ids_and_texts_stable_across_fresh_rebuilds(world, tmp_path):
    a = _local(world, tmp_path / "a").entries
    b = _local(world, tmp_path / "b").entries
    pd.testing.assert_frame_equal(a, b)


def test_llm_builder_shares_identical_work_across_a_users_snapshots(world, tmp_path):
    llm = FakeLLM()
    res = _local(world, tmp_path, "llm", llm)
    patterns = [c for c in llm.conversations if "Summarise this shopper" in c]
    # u1@7 adds i5 (Beverages) and i6 (Snacks) to u1@5, so all (snapshot, group) inputs differ:
    # u1@5 {Beverages, Snacks}, u1@7 {Beverages, Snacks}, u2@4 {Beverages, Skin}.
    assert len(patterns) == 6
    assert res.stats.statuses == {"llm": 9}  # 6 patterns + 3 profiles
    # A second call with the same parts does no LLM work at all.
    again = FakeLLM()
    res2 = _local(world, tmp_path, "llm", again)
    assert again.chats == 0
    pd.testing.assert_frame_equal(res.entries, res2.entries)
    assert res2.stats.input_tokens == res.stats.input_tokens > 0


def test_identical_group_history_is_generated_once(tmp_path):
    items, inter, queries = _tables()
    extra = queries.iloc[[0]].assign(qid="q5", target_timestamp=6, split="train")  # u1@6: i5 added to Beverages only
    queries = pd.concat([queries, extra], ignore_index=True)
    histories = history_records(inter, items)
    snaps = iter_snapshots(query_snapshots(queries), histories)
    llm = FakeLLM()
    res = build_local_memory(_cfg(), snaps, ExtractiveLocal(histories), tmp_path / "p", "llm", llm)
    snacks = [c for c in llm.conversations if "Category: Snacks" in c]
    assert len(snacks) == 2  # u1@5 and u1@6 have the same Snacks history (i3, i4); u1@7 adds i6
    assert res.stats.reused >= 1


def test_resume_after_a_kill_continues_and_matches_an_uninterrupted_build(world, tmp_path):
    full = _local(world, tmp_path / "full", "llm", FakeLLM()).entries
    dying = FakeLLM(die_after=2)  # batch 1 (2 snapshots) = patterns + profiles chats, then the kill
    with pytest.raises(RuntimeError, match="simulated kill"):
        _local(world, tmp_path / "killed", "llm", dying)
    parts = list((tmp_path / "killed" / "parts").glob("local_llm_*.jsonl"))
    assert len(parts) == 1
    finished = [json.loads(line) for line in parts[0].read_text().splitlines()]
    assert sum(r["kind"] == "snapshot" for r in finished) == 2
    resumed_llm = FakeLLM()
    resumed = _local(world, tmp_path / "killed", "llm", resumed_llm)
    assert resumed_llm.chats == 2  # only the last snapshot's patterns and profile
    pd.testing.assert_frame_equal(resumed.entries, full)


def test_malformed_llm_output_is_counted_and_replaced_by_extractive(world, tmp_path):
    bad = _local(world, tmp_path / "bad", "llm", FakeLLM(mode="malformed"))
    ext = _local(world, tmp_path / "ext").entries
    assert bad.stats.statuses == {"fallback": 9}
    assert bad.stats.llm_failures == 9
    pd.testing.assert_frame_equal(bad.entries, ext)
    retried = _local(world, tmp_path / "retry", "llm", FakeLLM(mode="retry_ok"))
    assert retried.stats.statuses == {"llm_retry": 9}


def test_llm_builder_requires_an_llm(world, tmp_path):
    with pytest.raises(ValueError, match="make_llm"):
        _local(world, tmp_path, "llm", None)


# ---- global memory ------------------------------------------------------------------------------
def test_global_sampling_uses_train_only():
    _, _, queries = _tables()
    sampled = sample_global_queries(queries, _cfg())
    assert set(sampled.split) == {"train"} and set(sampled.qid) == {"q1", "q3"}


def test_negatives_are_same_category_unbought_neighbours(world):
    items, inter, queries, _, _ = world
    sampled = sample_global_queries(queries, _cfg())
    negs = nearest_negatives(_cfg(), sampled, items, inter, FakeEncoder().encode(items.text.tolist()))
    cat = items.set_index("item_id").category
    bought = {u: set(g.item_id) for u, g in inter.groupby("user_id")}
    assert len(negs["q1"]) == 2 and len(negs["q3"]) == 0  # u2 bought every other Beauty item
    for qid, user, target in [("q1", "u1", "i5")]:
        assert all(cat[i] == cat[target] and i not in bought[user] for i in negs[qid])


def _global(world, tmp_path, builder="extractive", llm=None):
    items, inter, queries, _, _ = world
    cfg = _cfg()
    sampled = sample_global_queries(queries, cfg)
    negs = nearest_negatives(cfg, sampled, items, inter, FakeEncoder().encode(items.text.tolist()))
    return build_global_memory(cfg, sampled, items, negs, tmp_path / "parts", builder, llm)


def test_global_memory_extractive(world, tmp_path):
    res = _global(world, tmp_path)
    assert set(res.aspects) == {"Grocery", "Beauty"}
    assert res.stats.statuses == {"extractive": 4}  # 2 queries + 2 category merges
    grocery = res.aspects["Grocery"]
    assert all(name == canonical_aspect(name) for name in grocery)
    assert "Flavor And Scent" in grocery or "Ingredients And Diet" in grocery
    assert list(res.entries.columns) == ["category", "aspect", "text"]
    assert len(res.entries) == sum(len(v) for a in res.aspects.values() for v in a.values())


def test_global_memory_llm_and_malformed_fallback(world, tmp_path):
    ok = _global(world, tmp_path / "ok", "llm", FakeLLM())
    assert ok.aspects["Grocery"] == {"Budget": ["Cares about price"], "Flavor": ["Wants bold flavor"]}
    assert ok.stats.statuses == {"llm": 4}
    bad = _global(world, tmp_path / "bad", "llm", FakeLLM(mode="malformed"))
    ext = _global(world, tmp_path / "ext")
    assert bad.stats.llm_failures == 4
    assert bad.aspects == ext.aspects


def test_merge_aspects_dedupes_by_canonical_name():
    res = [
        {"category_level_personalization_aspects": [{"aspect": "price", "description": "Cheap wins"}]},
        {"category_level_personalization_aspects": [{"aspect": "Price", "description": "Cheap wins"}, "junk"]},
        {"subcategory_level_personalization_aspects": [{"aspect": "price", "description": "Deals"}, {"aspect": ""}]},
    ]
    assert merge_aspects(res, 5) == {"Price": ["Cheap wins (seen in 2 sampled purchases).", "Deals"]}


def test_merge_aspects_counts_extractive_values_per_subcategory():
    def sub(values):
        return {
            "subcategory_level_personalization_aspects": [
                {"subcategory": "Tea", "aspect": "flavor and scent", "description": "x", "values": values}
            ]
        }

    merged = merge_aspects([sub(["mint", "vanilla"]), sub(["mint"]), sub(["lemon"])], 5)
    assert merged == {
        "Flavor And Scent": [
            "In Tea, chosen items stood out from similar ones by flavor and scent such as mint (2), vanilla, lemon."
        ]
    }


# ---- store and tool ----------------------------------------------------------------------------------
@pytest.fixture
def store(world, tmp_path):
    local = _local(world, tmp_path).entries
    glob = _global(world, tmp_path)
    paths = RunPaths(tmp_path / "run").ensure()
    write_local_entries(paths, local)
    write_global_memory(paths, glob)
    return MemoryStore.load(_cfg(), paths, encoder=FakeEncoder())


def test_store_load_names_stage_02_when_missing(tmp_path):
    with pytest.raises(MissingStageError, match="02_memory_construction"):
        MemoryStore.load(_cfg(), RunPaths(tmp_path / "empty").ensure(), encoder=FakeEncoder())


def test_search_never_crosses_users(store):
    own = {e for e in store.entries("u2@4").entry_id}
    # This query matches u1's coffee memories word for word; u2 must still only get u2's entries.
    hits = store.search("u2@4", "Acme dark roast coffee whole bean", k=50)
    assert hits and {h["entry_id"] for h in hits} <= own
    assert all("Acme" not in h["text"] for h in hits)
    assert all(set(h) == {"entry_id", "level", "category", "text", "score"} for h in hits)
    assert store.search("nobody@1", "coffee") == []


def test_search_respects_levels_and_k(store):
    hits = store.search("u1@7", "coffee", k=2, levels=["pattern"])
    assert len(hits) == 2 and {h["level"] for h in hits} == {"pattern"}
    assert hits[0]["score"] >= hits[1]["score"]
    best = store.search("u1@7", "Acme Dark Roast Coffee Whole Bean", k=1, levels=["record"])[0]
    assert best["entry_id"] == "rec:1"


def test_tool_output_format_and_bad_queries(store):
    tool = memory_tool(store, "u1@7", k=3)
    assert tool.__name__ == "memory_retrieval_tool" and "Args:" in tool.__doc__
    out = tool("favourite coffee brands")
    lines = out.splitlines()
    assert len(lines) == 3
    assert all(
        re.fullmatch(r"\[(rec|pref|profile):[\w:]+\] \((record|pattern|profile), [^)]+\) .+", ln) for ln in lines
    )
    for garbage in ["", "   ", "?!?", None, 42]:
        assert tool(garbage) == EMPTY_QUERY_MESSAGE
    long = tool("coffee " * 5_000)  # over-long input is truncated, not an error
    assert len(long.splitlines()) == 3


def test_tool_schema_for_trl():
    transformers = pytest.importorskip("transformers")
    schema = transformers.utils.get_json_schema(memory_tool(object.__new__(MemoryStore), "s", k=3))
    fn = schema["function"]
    assert fn["name"] == "memory_retrieval_tool"
    assert fn["parameters"]["properties"]["query"]["type"] == "string"
    assert fn["parameters"]["required"] == ["query"]


def test_global_context_is_restricted_to_the_category(store):
    beauty = store.global_context("gentle cream", "Beauty", k=10)
    assert beauty and {h["category"] for h in beauty} == {"Beauty"}
    anywhere = store.global_context("price", "Unknown Category", k=100)
    assert {h["category"] for h in anywhere} == {"Beauty", "Grocery"}
    text = format_global_aspects(beauty)
    assert text.startswith("- ") and all(":" in line for line in text.splitlines())
    assert format_global_aspects({"Budget": ["a", "b"]}) == "- Budget: a b"


def test_ablation_switches(world, tmp_path, store):
    paths = RunPaths(tmp_path / "run")
    no_local = MemoryStore.load(_cfg(local_memory=False), paths, encoder=FakeEncoder())
    assert no_local.search("u1@7", "coffee") == []
    assert "disabled" in memory_tool(no_local, "u1@7")("coffee")
    no_global = MemoryStore.load(_cfg(global_memory=False), paths, encoder=FakeEncoder())
    assert no_global.global_context("coffee", "Grocery") == [] and no_global.search("u1@7", "coffee")


def test_static_profile_and_embedding_cache(store, tmp_path):
    profile = static_profile_text(store, "u1@7")
    assert profile.startswith("Shopping history of 6 purchases")
    store.search("u1@7", "coffee")
    cached = list((tmp_path / "run" / "memory" / "emb").glob("emb_*.npy"))
    assert cached
    fresh = MemoryStore.load(_cfg(), RunPaths(tmp_path / "run"), encoder=FakeEncoder())
    fresh.search("u1@7", "coffee")
    assert fresh.encoder.calls == 1  # the query only: documents came from the cache
