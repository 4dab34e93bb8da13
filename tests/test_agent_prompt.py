"""The recommendation prompt in each setting, and its chat-API form."""

from __future__ import annotations

import hashlib
import json
import os
from typing import get_args

import pytest

from mrrec_lib.agent.parse import parse_answer
from mrrec_lib.agent.prompt import (
    PROMPT_KINDS,
    PROMPT_STYLES,
    build_messages,
    build_prompt,
    prompt_tools,
    structured_messages,
)
from mrrec_lib.config import Config

ASPECTS = [
    {"aspect": "Budget", "text": "Budget: price range the user is comfortable with"},
    {"aspect": "Flavor Profile", "text": "Flavor Profile: sweet, salty or spicy"},
]
BOX_WITH_IDS = '\\boxed{"ideal_item_profile": "<detailed item description>", "useful_memory_ids": ["<id>", ...]}'


def user_text(p) -> str:
    return p.messages[-1]["content"]


def test_mrrec_prompt_carries_every_instruction():
    p = build_prompt("mrrec", "  a snack for hiking ", aspects=ASPECTS)
    text = user_text(p)
    assert [m["role"] for m in p.messages] == ["system", "user"]
    assert 'A user asks: "a snack for hiking"' in text
    assert "- Budget: price range the user is comfortable with" in text  # the "Aspect:" prefix is not repeated
    assert "- Flavor Profile: sweet, salty or spicy" in text
    for phrase in (
        "Analyse the request",
        "aspects listed above",
        "memory_retrieval_tool",
        "several times",
        "step by step",
        BOX_WITH_IDS,
        "as detailed as possible",
        "keywords",
        "useful_memory_ids list",
    ):
        assert phrase in text, phrase
    assert p.tools[0]["function"]["name"] == "memory_retrieval_tool"
    assert p.tools[0]["function"]["parameters"]["required"] == ["query"]


# sha256 of every kind's messages for one request, taken from the prompt code before `style` existed: the default
# ("full") prompt must stay byte-identical, since the committed SFT/GRPO policies were trained on it.
FULL_PROMPTS_SHA256 = "fdaf49826e673fd143e5891d3392544be406cc361ef7447b161e2724b721fd54"


def test_default_prompt_is_byte_identical_to_the_one_policies_were_trained_on():
    messages = [
        build_prompt(k, "a snack for hiking", aspects=ASPECTS, memory_text="Item 1: Assam tea (5 stars)").messages
        for k in PROMPT_KINDS
    ]
    assert hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest() == FULL_PROMPTS_SHA256


def test_no_memory_prompt_is_query_rewriting_only():
    p = build_prompt("no_memory", "a snack for hiking", aspects=ASPECTS)
    text = user_text(p)
    assert p.tools is None
    assert "memory_retrieval_tool" not in text and "Budget" not in text and "useful_memory_ids" not in text
    assert '\\boxed{"ideal_item_profile": "<detailed item description>"}' in text
    assert build_messages("q", ASPECTS, use_memory=False) == build_prompt("no_memory", "q").messages
    assert build_messages("q", ASPECTS) == build_prompt("mrrec", "q", aspects=ASPECTS).messages
    assert prompt_tools(False) is None and prompt_tools(True) == build_prompt("mrrec", "q").tools


@pytest.mark.parametrize("kind,header", [("naive", "most recent purchases"), ("static", "profile of this user")])
def test_memory_text_variants(kind, header):
    p = build_prompt(kind, "tea", aspects=ASPECTS, memory_text="Item 1: Assam tea (5 stars)")
    text = user_text(p)
    assert header in text and "Item 1: Assam tea (5 stars)" in text
    assert p.tools is None and "Budget" not in text
    with pytest.raises(ValueError, match="memory_text"):
        build_prompt(kind, "tea", memory_text="  ")


def test_global_only_and_empty_aspects():
    p = build_prompt("global_only", "tea", aspects=ASPECTS)
    assert p.tools is None and "Budget" in user_text(p) and "memory_retrieval_tool" not in user_text(p)
    bare = build_prompt("mrrec", "tea", aspects=[])
    assert "shared memory" not in user_text(bare) and "aspects listed above" not in user_text(bare)


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown prompt kind"):
        build_prompt("fancy", "tea")  # type: ignore[arg-type]
    assert set(PROMPT_KINDS) == {"mrrec", "global_only", "no_memory", "naive", "static"}


def _instructions(text: str, other: str) -> str:
    """What follows the part two prompts share (request, aspects, memory): their instruction text."""
    return text[len(os.path.commonprefix([text, other])) :]


@pytest.mark.parametrize("kind", PROMPT_KINDS)
def test_compact_prompt_keeps_everything_but_the_instruction_text_and_halves_that(kind):
    full, compact = (
        build_prompt(kind, "a snack for hiking", aspects=ASPECTS, memory_text="Item 1: tea", style=s)
        for s in ("full", "compact")
    )
    assert compact.messages[0] == full.messages[0] and compact.tools == full.tools and compact.kind == kind
    full_text, compact_text = user_text(full), user_text(compact)
    assert len(_instructions(compact_text, full_text)) < len(_instructions(full_text, compact_text)) / 2
    assert compact_text.startswith('A user asks: "a snack for hiking"')
    box = BOX_WITH_IDS if kind == "mrrec" else '\\boxed{"ideal_item_profile": "<detailed item description>"}'
    assert compact_text.endswith("write nothing after it:\n" + box)
    assert ("- Budget: price range the user is comfortable with" in compact_text) == (kind in ("mrrec", "global_only"))
    assert ("memory_retrieval_tool" in compact_text) == (kind == "mrrec") == ("useful_memory_ids" in compact_text)
    assert "detailed, keyword-rich product description" in compact_text


def test_compact_mrrec_prompt_asks_for_one_short_call_per_aspect():
    text = user_text(build_prompt("mrrec", "tea", aspects=ASPECTS, style="compact"))
    assert "For each aspect above that matters, call memory_retrieval_tool once with a short query" in text
    assert "aspect above" not in user_text(build_prompt("mrrec", "tea", aspects=[], style="compact"))
    assert build_messages("tea", ASPECTS, style="compact") == build_prompt(
        "mrrec", "tea", aspects=ASPECTS, style="compact"
    ).messages


def test_an_answer_written_as_the_compact_prompt_asks_parses():
    text = user_text(build_prompt("mrrec", "tea", aspects=ASPECTS, style="compact"))
    box = text.rsplit("\n", 1)[1]
    answer = box.replace("<detailed item description>", "Strong Assam black tea, loose leaf").replace(
        '"<id>", ...', '"rec:1", "pref:tea:1"'
    )
    parsed = parse_answer("The memory shows a taste for strong tea.\n" + answer)
    assert parsed.ok and parsed.profile == "Strong Assam black tea, loose leaf"
    assert parsed.memory_ids == ["rec:1", "pref:tea:1"]


def test_unknown_style_names_the_allowed_ones():
    with pytest.raises(ValueError, match="unknown prompt style 'short'.*'full', 'compact'"):
        build_prompt("mrrec", "tea", style="short")  # type: ignore[arg-type]
    assert get_args(Config.model_fields["policy_prompt"].annotation) == PROMPT_STYLES


def test_structured_messages_for_chat_apis():
    raw = [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": 'Let me look.\n<tool_call>{"name": "memory_retrieval_tool", '
            '"arguments": {"query": "tea"}}</tool_call>',
        },
        {"role": "tool", "name": "memory_retrieval_tool", "content": "[rec:1] (record, Tea) Assam"},
        {"role": "assistant", "content": "<tool_call>{broken</tool_call>"},
        {"role": "tool", "name": "memory_retrieval_tool", "content": "Error: bad call"},
        {"role": "assistant", "content": "done"},
    ]
    out = structured_messages(raw)
    assert out[1] == {
        "role": "assistant",
        "content": "Let me look.",
        "tool_calls": [
            {"type": "function", "function": {"name": "memory_retrieval_tool", "arguments": {"query": "tea"}}}
        ],
    }
    assert out[2] == raw[2]
    assert out[3] == raw[3] and out[4] == {
        "role": "user",
        "content": "<tool_response>\nError: bad call\n</tool_response>",
    }
    assert out[5] == raw[5] and raw[1]["content"].startswith("Let me look.\n<tool_call>")  # input untouched
