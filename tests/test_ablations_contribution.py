"""Memory-contribution scores (MPC / MRC) on a hand-made case, and the LLM-judge variant with a fake LLM."""

import math

import pandas as pd
import pytest

from mrrec_lib.eval import contribution as mc
from mrrec_lib.llm.base import Usage
from mrrec_lib.runs import RunPaths, write_parquet

ENTRIES = pd.DataFrame(
    [
        # snapshot u1@100: keywords {lavazza, bean, coffee, smooth, espresso} ("whole" is on sklearn's stop list)
        ("u1@100", "u1", "rec:0", "record", "Coffee", "Lavazza whole bean coffee: smooth espresso"),
        # keywords {prefer, dark, roast, brand} -> none in the profile, none in the target
        ("u1@100", "u1", "pref:coffee:0", "pattern", "Coffee", "Prefers dark roasts from a brand"),
        ("u1@100", "u1", "profile:0", "profile", "all", "the and of"),  # stop words only: not scorable
        # the same id in another snapshot must not be confused with u1's
        ("u2@50", "u2", "rec:0", "record", "Tea", "Green tea bags"),
    ],
    columns=["snapshot", "user_id", "entry_id", "level", "category", "text"],
)
ITEMS = pd.DataFrame({"item_id": ["i1", "i2"], "text": ["Lavazza Super Crema whole bean coffee", "Green tea"]})
PER_QUERY = pd.DataFrame(
    [
        {"qid": "q1", "system": "mrrec", "user_id": "u1", "target_timestamp": 100, "target_item_id": "i1",
         "profile": "A smooth whole bean coffee for espresso", "memory_ids": ["rec:0", "pref:coffee:0", "rec:0", "profile:0"]},
        {"qid": "q2", "system": "mrrec", "user_id": "u2", "target_timestamp": 50, "target_item_id": "i2",
         "profile": "", "memory_ids": ["rec:0", "ghost:1"]},  # parse failure: empty profile; an unknown id
        {"qid": "q3", "system": "mrrec", "user_id": "u2", "target_timestamp": 50, "target_item_id": "i2",
         "profile": "black tea", "memory_ids": []},  # no memory retrieved
    ]
)


def test_keywords_drop_stop_words_and_fold_plurals():
    assert mc.keywords("The beans, and 2 BEANS of coffee!") == {"bean", "coffee"}
    assert mc.keywords("") == frozenset() and mc.keywords(None) == frozenset()
    assert mc.keywords("glass") == {"glass"}  # "ss" is not a plural


def test_hand_made_scores():
    pairs = mc.retrieved_pairs(PER_QUERY, ENTRIES, ITEMS)
    assert pairs.groupby("qid").size().to_dict() == {"q1": 3, "q2": 2}  # duplicates removed
    assert pairs.set_index(["qid", "entry_id"]).loc[("q2", "rec:0"), "entry_text"] == "Green tea bags"
    scored = mc.score_pairs(pairs, threshold=0.5)
    s = scored.set_index(["qid", "entry_id"])
    # rec:0 of u1: the profile has smooth, bean, coffee, espresso = 4/5; the target lavazza, bean, coffee = 3/5
    assert s.loc[("q1", "rec:0"), "profile_overlap"] == pytest.approx(4 / 5)
    assert s.loc[("q1", "rec:0"), "target_overlap"] == pytest.approx(3 / 5)
    assert s.loc[("q1", "pref:coffee:0"), "profile_overlap"] == 0
    assert math.isnan(s.loc[("q1", "profile:0"), "mpc_hit"])
    # u2's rec:0 {green, tea, bag} vs target "Green tea": 2/3 -> MRC hit; empty profile -> MPC 0
    assert s.loc[("q2", "rec:0"), "mrc_hit"] == 1 and s.loc[("q2", "rec:0"), "mpc_hit"] == 0
    assert not s.loc[("q2", "ghost:1"), "found"]

    by_q = mc.per_query_scores(scored, PER_QUERY).set_index("qid")
    assert by_q.loc["q1", "mpc"] == pytest.approx(0.5) and by_q.loc["q1", "mrc"] == pytest.approx(0.5)
    assert by_q.loc["q1", "n_retrieved"] == 3 and by_q.loc["q1", "n_scorable"] == 2
    assert by_q.loc["q3", "n_retrieved"] == 0 and math.isnan(by_q.loc["q3", "mpc"])

    summary = mc.summarise(scored, by_q.reset_index())
    assert summary["n_queries"] == 3 and summary["n_queries_with_memory"] == 2
    assert summary["mpc"] == pytest.approx((0.5 + 0.0) / 2)
    assert summary["mrc"] == pytest.approx((0.5 + 1.0) / 2)
    assert summary["mpc_micro"] == pytest.approx(1 / 3)  # 1 hit among 3 scorable entries
    assert summary["n_entries_unresolved"] == 1
    assert summary["per_level"]["record"]["n_entries"] == 2
    assert summary["per_level"]["pattern"]["mpc"] == 0


def test_threshold_changes_hits_not_overlaps():
    pairs = mc.retrieved_pairs(PER_QUERY, ENTRIES, ITEMS)
    loose, strict = mc.score_pairs(pairs, 0.1), mc.score_pairs(pairs, 0.9)
    assert loose["profile_overlap"].equals(strict["profile_overlap"])
    assert loose["mpc_hit"].sum() > strict["mpc_hit"].sum()
    with pytest.raises(ValueError, match="threshold"):
        mc.score_pairs(pairs, 0)


def test_missing_columns_are_named():
    with pytest.raises(KeyError, match="memory_ids"):
        mc.retrieved_pairs(PER_QUERY.drop(columns="memory_ids"), ENTRIES, ITEMS)


class FakeJudge:
    """Says yes when the entry mentions coffee, replies nonsense for tea, and records what it was asked."""

    name = "fake"

    def __init__(self):
        self.usage = Usage()
        self.asked: list[str] = []

    def chat(self, conversations, sampling, n=1, tools=None):
        out = []
        for conv in conversations:
            text = conv[-1]["content"]
            self.asked.append(text)
            entry = text.split("Memory entry:")[1].split("\n")[0]
            out.append(["Yes." if "coffee" in entry.lower() else ("banana" if "tea" in entry.lower() else "No")])
        return out


def test_llm_judge_scores_and_counts_malformed():
    pairs = mc.retrieved_pairs(PER_QUERY, ENTRIES, ITEMS)
    llm = FakeJudge()
    judged = mc.judge_pairs(llm, pairs)
    assert len(llm.asked) == 2 * len(pairs)
    j = judged.set_index(["qid", "entry_id"])
    assert j.loc[("q1", "rec:0"), "judge_profile"] == 1 and j.loc[("q1", "pref:coffee:0"), "judge_target"] == 0
    assert j.loc[("q2", "rec:0"), "judge_profile_malformed"] and j.loc[("q2", "rec:0"), "judge_profile"] == 0
    res = mc.summarise_judge(judged)
    assert res["mpc_judge"] == pytest.approx((1 / 3 + 0) / 2)
    assert res["mpc_judge_malformed"] == 1


def test_contribution_from_run(tmp_path):
    paths = RunPaths(tmp_path / "run").ensure()
    items = ITEMS.assign(category="c", subcategory="", title="t", description="", store="", price=float("nan"), source="s")
    write_parquet(items, paths.data / "items.parquet")
    write_parquet(ENTRIES, paths.memory / "local_entries.parquet")
    write_parquet(pd.concat([PER_QUERY, PER_QUERY.assign(system="query_dense")]), paths.metrics / "05_per_query.parquet")
    scored, by_q, summary = mc.contribution_from_run(paths, "mrrec", threshold=0.5)
    assert len(by_q) == 3 and summary["mpc"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="no rows for system 'recr1'"):
        mc.contribution_from_run(paths, "recr1")
