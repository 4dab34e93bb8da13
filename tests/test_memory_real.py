"""Memory against the real retrieval and LLM modules (BM25, the MiniLM encoder, SmolLM2), on the tiny test world."""

import pytest
from test_memory import FakeEncoder, _cfg, _global, _local, make_world

from mrrec_lib.memory.store import MemoryStore, memory_tool
from mrrec_lib.runs import RunPaths


@pytest.fixture
def world():
    return make_world()


def _store(world, tmp_path, encoder, **cfg):
    from mrrec_lib.memory.global_memory import write_global_memory
    from mrrec_lib.memory.local import write_local_entries

    paths = RunPaths(tmp_path / "run").ensure()
    write_local_entries(paths, _local(world, tmp_path).entries)
    write_global_memory(paths, _global(world, tmp_path))
    return MemoryStore.load(_cfg(**cfg), paths, encoder=encoder)


def test_bm25_store_stays_inside_the_snapshot(world, tmp_path):
    store = _store(world, tmp_path, FakeEncoder(), memory_retriever="bm25")
    own = set(store.entries("u2@4").entry_id)
    hits = store.search("u2@4", "rated review bought lotion coffee", k=50)
    assert hits and {h["entry_id"] for h in hits} <= own
    assert hits[0]["score"] >= hits[-1]["score"]
    assert store.search("u1@7", "zzzz qqqq", k=3) == []  # no shared term: BM25 returns nothing, not noise
    assert store.global_context("gentle cream skin", "Beauty", k=3)
    assert "No memory entries" in memory_tool(store, "u1@7")("zzzz qqqq")


def test_real_encoder_finds_the_matching_entry(world, tmp_path):
    from mrrec_lib.retrieval.encoder import make_encoder

    store = _store(world, tmp_path, make_encoder(_cfg()))
    best = store.search("u1@7", "bold coffee to start the morning", k=1, levels=["record"])[0]
    assert best["entry_id"] == "rec:1"  # the dark roast coffee, "my morning staple"
    tea = store.search("u1@7", "mint tea", k=1, levels=["pattern"])[0]
    assert tea["category"] == "Beverages"


@pytest.mark.slow
def test_real_llm_builds_local_memory_without_crashing(world, tmp_path):
    from mrrec_lib.llm import make_llm

    cfg = _cfg(llm_max_new_tokens=48, num_threads=1)
    res = _local(world, tmp_path, "llm", make_llm(cfg), cfg=cfg)
    assert sum(res.stats.statuses.values()) == 9  # 6 patterns + 3 profiles, whatever their status
    assert set(res.entries.level) == {"record", "pattern", "profile"}
    assert res.stats.input_tokens > 0 or res.stats.cache_hits > 0
