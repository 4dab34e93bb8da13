"""The assistant on a tiny run folder: real tables, memory store and BM25 item index; a scripted policy."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from mrrec_lib.assistant import Assistant, AssistantInputError, RunNotFoundError, format_trace
from mrrec_lib.cli import main
from mrrec_lib.config import Config, save_config
from mrrec_lib.memory import snapshot_key
from mrrec_lib.runs import RunPaths, write_json, write_parquet
from mrrec_lib.train.checkpoints import POLICY_META, final_dir
from mrrec_lib.viz.trace import mark_keywords, trace_html

CALL = '<tool_call>{"name": "memory_retrieval_tool", "arguments": {"query": "tea strength"}}</tool_call>'
PROFILE = "strong malty Assam black tea, loose leaf, for mornings"


def answer(profile: str, ids: list[str]) -> str:
    return "\\boxed{" + json.dumps({"ideal_item_profile": profile, "useful_memory_ids": ids}) + "}"


class ScriptedChat:
    """A ChatLLM answering by the number of assistant turns so far; records what it was shown."""

    name = "scripted"

    def __init__(self, turns: list[str]):
        self.turns, self.seen = turns, []

    def chat(self, conversations, sampling, n=1, tools=None):
        self.seen += conversations
        return [[self.turns[min(sum(m["role"] == "assistant" for m in c), len(self.turns) - 1)]] for c in conversations]


ITEMS = [
    ("tea1", "Assam Breakfast Tea", "strong malty Assam black tea loose leaf"),
    ("tea2", "", "light grassy green tea"),  # a pool item without metadata (as in Beauty): no title
    ("sauce1", "Habanero Hot Sauce", "fiery habanero chili sauce"),
    ("choc1", "Dark Chocolate Bar", "bittersweet dark chocolate 70 percent"),
    ("tea3", "Earl Grey", "black tea with bergamot"),
]


def make_run(root, name: str = "tiny", **overrides) -> RunPaths:
    """A run folder with stage-01 tables, stage-02 memory and a config that retrieves with BM25 (no encoder)."""
    paths = RunPaths(root / name).ensure()
    cfg = Config(run_name=name, outputs_dir=str(root), item_retriever="bm25", memory_retriever="bm25",
                 memory_top_k=2, global_top_k=2, assistant_k=3, **overrides)
    save_config(cfg, paths.config_file)
    items = pd.DataFrame(
        [dict(item_id=i, category="Grocery", subcategory="Tea" if i.startswith("tea") else "Other", title=t,
              description=d, store="", price=None, text=f"{t}. {d}" if t else d, source="test") for i, t, d in ITEMS]
    )
    inter = pd.DataFrame(
        [
            dict(user_id="u1", item_id="tea3", rating=5.0, review_title="lovely", review_text="great black tea",
                 timestamp=1, category="Grocery", source="test"),
            dict(user_id="u1", item_id="choc1", rating=4.0, review_title="ok", review_text="nice dark chocolate",
                 timestamp=2, category="Grocery", source="test"),
            dict(user_id="u2", item_id="sauce1", rating=5.0, review_title="hot", review_text="so hot",
                 timestamp=1, category="Grocery", source="test"),
        ]
    )
    queries = pd.DataFrame(
        [
            dict(qid="q1", user_id="u1", target_item_id="tea1", category="Grocery", raw_query="r", query="a strong tea",
                 split="test", target_timestamp=3, query_builder="extractive", source="test", title_overlap=0, title_overlap_raw=0),
            dict(qid="q0", user_id="u1", target_item_id="choc1", category="Grocery", raw_query="r",
                 query="some chocolate", split="test", target_timestamp=2, query_builder="extractive", source="test", title_overlap=0, title_overlap_raw=0),
            dict(qid="q2", user_id="u2", target_item_id="sauce1", category="Grocery", raw_query="r",
                 query="a hot sauce", split="train", target_timestamp=2, query_builder="extractive", source="test", title_overlap=0, title_overlap_raw=0),
        ]
    )
    for t, df in (("items", items), ("interactions", inter), ("queries", queries)):
        write_parquet(df, paths.data / f"{t}.parquet")
    s_latest, s_early = snapshot_key("u1", 3), snapshot_key("u1", 2)
    local = pd.DataFrame(
        [
            [s_latest, "u1", "rec:1", "record", "Tea", "Bought Earl Grey black tea, rated 5: great black tea"],
            [s_latest, "u1", "rec:2", "record", "Other", "Bought Dark Chocolate Bar, rated 4"],
            [s_latest, "u1", "pref:tea:1", "pattern", "Tea", "Prefers strong malty black tea for mornings"],
            [s_early, "u1", "rec:1", "record", "Tea", "Bought Earl Grey black tea, rated 5"],
            [snapshot_key("u2", 2), "u2", "rec:1", "record", "Other", "Bought Habanero Hot Sauce"],
        ],
        columns=["snapshot", "user_id", "entry_id", "level", "category", "text"],
    )
    write_parquet(local, paths.memory / "local_entries.parquet")
    glob = pd.DataFrame([["Grocery", "Flavor", "Flavor: taste strength"], ["Grocery", "Budget", "Budget: price"]],
                        columns=["category", "aspect", "text"])
    write_parquet(glob, paths.memory / "global_entries.parquet")
    write_json(paths.memory / "global_aspects.json", {"Grocery": {"Flavor": ["taste strength"], "Budget": ["price"]}})
    return paths


@pytest.fixture()
def run(tmp_path) -> RunPaths:
    return make_run(tmp_path)


def test_free_request_uses_latest_snapshot_and_traces_memory(run):
    chat = ScriptedChat([CALL, answer(PROFILE, ["pref:tea:1", "rec:9"])])
    a = Assistant.from_run(run.root, policy=chat)
    assert a.policy_name == "base"  # no trained policy in the folder
    rec = a.recommend("u1", "  something with   taste to wake me up ")
    assert rec.request == "something with taste to wake me up" and rec.snapshot == snapshot_key("u1", 3)
    assert rec.parse_ok and rec.profile == PROFILE and rec.retrieval_source == "profile"
    assert rec.n_tool_calls == 1 and len(rec.turns) == 2
    call = rec.turns[0].tool_call
    assert call.query == "tea strength" and call.error is None
    hits = {h.entry_id: h for h in call.entries}
    assert set(hits) <= {"rec:1", "rec:2", "pref:tea:1"} and "pref:tea:1" in hits
    assert hits["pref:tea:1"].cited and hits["pref:tea:1"].reaches_profile
    assert {"malty", "strong", "morning"} <= set(hits["pref:tea:1"].shared_keywords)
    assert rec.cited_not_retrieved == ["rec:9"]
    assert [i.item_id for i in rec.items][0] == "tea1" and len(rec.items) == 3  # assistant_k from the config
    assert rec.target_item_id is None and rec.target_rank is None and rec.qid is None
    assert "Flavor: taste strength" in chat.seen[0][1]["content"]  # global memory reached the prompt
    assert rec.timings["total_s"] >= rec.timings["policy_s"] >= 0
    json.dumps(rec.to_dict())  # plain data: the notebook writes it to metrics


def test_query_uses_its_own_snapshot_and_marks_target(run):
    chat = ScriptedChat([CALL, answer("dark chocolate bittersweet", [])])
    rec = Assistant.from_run(run.root, policy=chat).recommend_for_query("q0", k=5)
    assert rec.snapshot == snapshot_key("u1", 2) and rec.qid == "q0" and rec.split == "test"
    assert {h.entry_id for h in rec.tool_calls[0].entries} == {"rec:1"}  # the earlier snapshot's memory only
    assert rec.target_item_id == "choc1" and rec.target_rank == 1
    assert rec.items[0].is_target and rec.items[0].title == "Dark Chocolate Bar"
    assert sum(i.is_target for i in rec.items) == 1


def test_malformed_answer_is_shown_and_falls_back(run):
    garbage = 'I think {"ideal_item_profile": strong black tea'
    rec = Assistant.from_run(run.root, policy=ScriptedChat([garbage])).recommend("u1", "tea")
    assert not rec.parse_ok and rec.parse_error and rec.retrieval_source == "request+raw_text"
    assert rec.retrieval_text.startswith("tea I think") and rec.items
    text = format_trace(rec, width=80)
    assert "MALFORMED ANSWER" in text and "I think" in text
    assert "malformed" in trace_html(rec)

    empty = Assistant.from_run(run.root, policy=ScriptedChat([""])).recommend("u1", "earl grey tea")
    assert empty.retrieval_source == "request" and empty.items[0].item_id == "tea3"


def test_bad_tool_call_is_traced_not_raised(run):
    bad = '<tool_call>{"name": "memory_retrieval_tool", "arguments": {}}</tool_call>'
    rec = Assistant.from_run(run.root, policy=ScriptedChat([bad, answer("tea", [])])).recommend("u1", "tea")
    assert rec.n_invalid_calls == 1 and rec.tool_calls[0].error and rec.parse_ok
    assert "error:" in format_trace(rec)


def test_bad_input_errors_list_choices(run, tmp_path):
    a = Assistant.from_run(run.root, policy=ScriptedChat([answer("x", [])]))
    with pytest.raises(AssistantInputError, match=r"unknown user 'u3'.*2 valid, e\.g\. u1, u2"):
        a.recommend("u3", "tea")
    with pytest.raises(AssistantInputError, match="empty request"):
        a.recommend("u1", "   ")
    with pytest.raises(AssistantInputError, match="empty request"):
        a.recommend("u1", None)
    with pytest.raises(AssistantInputError, match="unknown query 'q9'"):
        a.recommend_for_query("q9")
    with pytest.raises(AssistantInputError, match="k must be a positive integer"):
        a.recommend("u1", "tea", k=0)
    with pytest.raises(RunNotFoundError, match=r"no finished run.*tiny"):
        Assistant.from_run(tmp_path / "tiyn")
    with pytest.raises(AssistantInputError, match="unknown policy"):
        Assistant.from_run(run.root, which="best")
    with pytest.raises(FileNotFoundError, match="no trained grpo policy.*available: base\\."):
        Assistant.from_run(run.root, which="grpo")


def test_best_policy_prefers_grpo(run):
    for which in ("sft", "grpo"):
        d = final_dir(run, which)
        d.mkdir(parents=True)
        (d / POLICY_META).write_text("{}")
        assert Assistant.from_run(run.root, policy=ScriptedChat(["x"])).policy_name == which


def test_pick_query_is_seeded_and_from_the_split(run):
    a = Assistant.from_run(run.root, policy=ScriptedChat(["x"]))
    picked = a.pick_query("test")
    assert picked["split"] == "test" and picked == a.pick_query("test")
    with pytest.raises(AssistantInputError, match="no 'val' queries"):
        a.pick_query("val")
    hist = a.history("u1", before_ts=2)
    assert hist["title"].tolist() == ["Earl Grey"]


def test_format_trace_is_wrapped_and_complete(run):
    rec = Assistant.from_run(run.root, policy=ScriptedChat([CALL, answer(PROFILE * 3, ["pref:tea:1"])])).recommend_for_query("q1")
    text = format_trace(rec, width=72)
    assert max(len(line) for line in text.splitlines()) <= 72
    for part in ('"a strong tea"', "memory_retrieval_tool('tea strength')", "[pref:tea:1]", "cited",
                 "Ideal item profile:", "Top 3 of 5 items", "← purchased", "Purchased item: Assam Breakfast Tea"):
        assert part in text, part


def test_trace_html_escapes_and_highlights(run):
    rec = Assistant.from_run(run.root, policy=ScriptedChat([CALL, answer("<b>strong</b> malty tea", [])])).recommend("u1", "tea")
    page = trace_html(rec)
    assert "<b>strong</b>" not in page and "&lt;b&gt;" in page
    assert "<mark>malty</mark>" in page
    assert mark_keywords("Strong teas & more", {"tea"}) == "Strong <mark>teas</mark> &amp; more"


def test_cli_ask_errors(tmp_path, run, capsys):
    assert main(["ask", "tea", "--run", str(tmp_path / "nope"), "--user", "u1"]) == 2
    err = capsys.readouterr().err
    assert "no finished run" in err and "tiny" in err  # lists the runs that exist next to it
    assert main(["ask", "tea", "--run", str(run.root), "--user", "zz"]) == 2
    assert "unknown user 'zz'" in capsys.readouterr().err
    assert main(["ask", " ", "--run", str(run.root), "--user", "u1"]) == 2
    assert "empty request" in capsys.readouterr().err


def test_config_yaml_is_the_runs_own(run):
    cfg = yaml.safe_load(run.config_file.read_text())
    assert cfg["item_retriever"] == "bm25"  # the assistant must retrieve as the run did, not with defaults
    assert Assistant.from_run(run.root, policy=ScriptedChat(["x"])).cfg.item_retriever == "bm25"


def test_untitled_item_shows_its_text(run):
    rec = Assistant.from_run(run.root, policy=ScriptedChat([answer("light grassy green tea", [])])).recommend("u2", "tea")
    assert rec.items[0].item_id == "tea2" and rec.items[0].title == "light grassy green tea"


@pytest.mark.slow
def test_cli_ask_with_the_real_base_policy(tmp_path, capsys):
    """The untrained SmolLM2 through `mrrec ask`: whatever it writes, the command prints a trace and items."""
    run = make_run(tmp_path, max_new_tokens_total=48, max_new_tokens_per_turn=24, num_threads=1)
    assert main(["ask", "a strong black tea", "--run", str(run.root), "--user", "u1", "-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "policy base" in out and "Top 2 of 5 items" in out and "Reasoning:" in out
