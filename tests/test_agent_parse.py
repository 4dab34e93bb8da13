"""Parsing tool calls and the boxed answer: lenient on syntax, strict on meaning, never raising."""

from __future__ import annotations

import random

import pytest

from mrrec_lib.agent.parse import parse_answer, parse_tool_calls, strip_tool_calls, tool_query

CALL = '<tool_call>\n{"name": "memory_retrieval_tool", "arguments": {"query": "tea brands"}}\n</tool_call>'


def test_tool_call_standard_and_several():
    calls = parse_tool_calls("thinking... " + CALL + " more " + CALL.replace("tea brands", "budget"))
    assert [c["name"] for c in calls] == ["memory_retrieval_tool"] * 2
    assert [tool_query(c) for c in calls] == ["tea brands", "budget"]
    assert all(c["error"] is None for c in calls)


@pytest.mark.parametrize(
    "text,query",
    [
        ('<tool_call>{"name": "memory_retrieval_tool", "arguments": "{\\"query\\": \\"x y\\"}"}</tool_call>', "x y"),
        ("<tool_call>{'name': 'memory_retrieval_tool', 'arguments': {'query': 'single'}}</tool_call>", "single"),
        ('<tool_call>\n{"name": "memory_retrieval_tool", "arguments": {"query": "eos"}}\n<|im_end|>', "eos"),
        ('<tool_call>{"name": "memory_retrieval_tool", "arguments": {"query": "open"}}', "open"),
        ('<tool_call>{"name": "memory_retrieval_tool", "parameters": {"aspect": "renamed"}}</tool_call>', "renamed"),
        (
            '<tool_call>{"function": {"name": "memory_retrieval_tool", "arguments": {"query": "nested"}}}</tool_call>',
            "nested",
        ),
        ('<tool_call>{"name": "memory_retrieval_tool", "arguments": {"query": "trailing",}}</tool_call>', "trailing"),
    ],
)
def test_tool_call_lenient_forms(text, query):
    (call,) = parse_tool_calls(text)
    assert call["error"] is None and call["name"] == "memory_retrieval_tool"
    assert tool_query(call) == query


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("<tool_call></tool_call>", "empty"),
        ("<tool_call>{name: memory</tool_call>", "not valid JSON"),
        ('<tool_call>{"arguments": {"query": "x"}}</tool_call>', '"name"'),
        ('<tool_call>["memory_retrieval_tool"]</tool_call>', '"name"'),
    ],
)
def test_tool_call_malformed_reports_error(text, fragment):
    (call,) = parse_tool_calls(text)
    assert call["name"] is None and fragment in call["error"]


def test_tool_query_needs_one_string():
    assert tool_query({"arguments": {"a": "x", "b": "y"}}) is None
    assert tool_query({"arguments": {"query": "  "}}) is None
    assert tool_query({"arguments": {"query": ["a", "b"]}}) == "a; b"
    assert tool_query({"arguments": 3}) is None


def test_no_tool_calls():
    assert parse_tool_calls("") == [] and parse_tool_calls(None) == []  # type: ignore[arg-type]
    assert strip_tool_calls("a " + CALL + " b<|im_end|>") == "a   b"


ANSWER = (
    '\\boxed{"ideal_item_profile": "Loose-leaf Assam black tea, malty", "useful_memory_ids": ["pref:tea:1", "rec:3"]}'
)


def test_answer_standard():
    a = parse_answer("Reasoning first. " + ANSWER)
    assert a.ok and a.error is None
    assert a.profile == "Loose-leaf Assam black tea, malty"
    assert a.memory_ids == ["pref:tea:1", "rec:3"]


def test_answer_last_complete_box_wins():
    draft = '\\boxed{"ideal_item_profile": "draft"}'
    assert parse_answer(draft + " then " + ANSWER).profile.startswith("Loose-leaf")
    assert parse_answer(ANSWER + ' and \\boxed{"ideal_item_profile": "cut off').profile.startswith("Loose-leaf")


@pytest.mark.parametrize(
    "text,profile,ids",
    [
        ('\\boxed{{"ideal_item_profile": "double braces", "useful_memory_ids": []}}', "double braces", []),
        ("\\boxed{'ideal_item_profile': 'single quotes', 'useful_memory_ids': ['a']}", "single quotes", ["a"]),
        ('\\boxed{"ideal_item_profile": "braces {inside} the string"}', "braces {inside} the string", []),
        (
            '\\boxed{"ideal_item_profile": "line one\nline two", "useful_memory_ids": "solo"}',
            "line one\nline two",
            ["solo"],
        ),
        ('\\boxed{"ideal_item_profile": "ints", "useful_memory_ids": [3, 4],}', "ints", ["3", "4"]),
        ('\\\\boxed{"ideal_item_profile": "escaped backslash"}', "escaped backslash", []),
    ],
)
def test_answer_lenient_forms(text, profile, ids):
    a = parse_answer(text)
    assert a.ok, a.error
    assert (a.profile, a.memory_ids) == (profile, ids)


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("", "no \\boxed"),
        ("I recommend green tea.", "no \\boxed"),
        ('\\boxed{"ideal_item_profile": "never closed"', "unclosed"),
        ("\\boxed{green tea please}", "not a JSON object"),
        ('\\boxed{"ideal_item_profile": ""}', "non-empty"),
        ('\\boxed{"ideal_item_profile": ["a"]}', "non-empty"),
        ('\\boxed{"profile": "wrong key"}', "missing"),
        ('\\boxed{"ideal_item_profile": "x", "useful_memory_ids": {"a": 1}}', "not a list"),
    ],
)
def test_answer_malformed(text, fragment):
    a = parse_answer(text)
    assert not a.ok and fragment in a.error


def test_parsers_never_raise_on_noise():
    rng = random.Random(0)
    alphabet = list("{}[]\"',:\\ abxyz01\n") + ["\\boxed{", "<tool_call>", "</tool_call>", "<|im_end|>", "null"]
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        assert isinstance(parse_answer(text).ok, bool)
        assert isinstance(parse_tool_calls(text), list)
    assert parse_answer(None).ok is False  # type: ignore[arg-type]
