"""The recommendation prompt in every setting the paper compares.

One instruction text, assembled from parts, so that the MR.Rec prompt and the
baselines differ only in the memory they are given:

- `mrrec`: global-memory aspects in the prompt + the `memory_retrieval_tool` over this user's local memory;
- `global_only`: the aspects but no tool (ablation "without local memory");
- `no_memory`: the bare request, no tool (zero-shot "without memory" and Rec-R1-style query rewriting);
- `naive` / `static`: zero-shot with a memory text pasted into the prompt (recent interactions / a user profile).

Two instruction styles (config `policy_prompt`): `full`, the numbered steps and retrieval advice every committed
policy was trained on, and `compact`, the same duties in a few lines; request, aspects, answer format and tool
are the same in both.

The tool is described by one JSON schema (the GRPO environment's) that the chat
template renders through `tools=` (Qwen2.5 style); chat APIs get it as `tools=` too.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from mrrec_lib.agent.parse import TOOL_OPEN, parse_tool_calls
from mrrec_lib.llm.base import Message
from mrrec_lib.train.environment import TOOL_NAME

PromptKind = Literal["mrrec", "global_only", "no_memory", "naive", "static"]
PROMPT_KINDS: tuple[str, ...] = ("mrrec", "global_only", "no_memory", "naive", "static")
PromptStyle = Literal["full", "compact"]  # config `policy_prompt`
PROMPT_STYLES: tuple[str, ...] = ("full", "compact")


@lru_cache(maxsize=1)
def memory_tool_schema() -> dict:
    """The tool's JSON schema, taken from the GRPO memory environment so every stage shows the model one description."""
    from mrrec_lib.train.environment import tool_schema

    return tool_schema()


SYSTEM_PROMPT = (
    "You are a personalized shopping assistant. You turn a user's request into the profile of the ideal item for "
    "that user, which is then used to search a product catalogue."
)

_ANSWER_WITH_IDS = '\\boxed{"ideal_item_profile": "<detailed item description>", "useful_memory_ids": ["<id>", ...]}'
_ANSWER_PROFILE_ONLY = '\\boxed{"ideal_item_profile": "<detailed item description>"}'
_FINISH = "Finish with your answer in exactly this format and write nothing after it:\n"
_PROFILE_ADVICE = (
    "The profile is embedded to search the catalogue, so make it as detailed as possible and do not leave out "
    "important keywords: product type, category, key features, materials or ingredients, style, quality, brand or "
    "price preferences, and the intended use. Write it like a product description, not like a conversation."
)
_COMPACT_PROFILE_ADVICE = "Make the profile a detailed, keyword-rich product description."
_IDS_ADVICE = " In useful_memory_ids list the ids of the memory entries that shaped the profile."
_MEMORY_HEADERS = {
    "naive": "The user's most recent purchases (oldest first):",
    "static": "A profile of this user written from their purchase history:",
}


@dataclass(frozen=True)
class Prompt:
    """What the policy is given: the conversation so far and the tools it may call (None: no tools)."""

    kind: str
    messages: list[Message]
    tools: list[dict] | None


def format_aspects(aspects: list[dict]) -> str:
    """Global-memory aspects as one bullet per aspect (`{aspect, text}` dicts, as `MemoryStore.global_context` gives)."""
    from mrrec_lib.memory.store import format_global_aspects

    rows = [
        {"aspect": str(a.get("aspect", "")).strip(), "text": str(a.get("text", a.get("description", ""))).strip()}
        for a in aspects
    ]
    return format_global_aspects([r for r in rows if r["aspect"] or r["text"]])


def _mrrec_steps(with_aspects: bool, with_tool: bool) -> list[str]:
    steps = ["Analyse the request: which product is needed, for what use, and what the user leaves unsaid."]
    if with_aspects:
        steps.append("Consider the aspects listed above and decide which of them matter for this request.")
    if with_tool:
        steps.append(
            f"For each aspect that matters, look up what this user prefers by calling {TOOL_NAME} with a short query "
            "naming that aspect. You may call it several times, one aspect per call; each call returns memory "
            "entries with their ids."
        )
        steps.append("Reason step by step about what the retrieved memory says about this user's preferences.")
    else:
        steps.append("Reason step by step about what this user most likely wants.")
    return steps


def _full_instructions(with_aspects: bool, with_tool: bool, answer: str) -> list[str]:
    """The paper-style numbered steps and the retrieval advice: the text the committed policies were trained on."""
    steps = [*_mrrec_steps(with_aspects, with_tool), _FINISH + answer]
    advice = _PROFILE_ADVICE + (_IDS_ADVICE if with_tool else "")
    return ["Do the following:\n" + "\n".join(f"{i}. {s}" for i, s in enumerate(steps, 1)), advice]


def _compact_instructions(with_aspects: bool, with_tool: bool, answer: str) -> list[str]:
    """The same duties in a few lines, ending on the answer format.

    A 135M policy breaks its answer format more often the longer its prompt, and every prompt token is paid for
    in SFT length and decoding cost.
    """
    lines = []
    if with_tool:
        where = " above" if with_aspects else ""
        lines.append(f"For each aspect{where} that matters, call {TOOL_NAME} once with a short query naming it.")
    elif with_aspects:
        lines.append("Use the aspects above that matter for this request.")
    lines += [_COMPACT_PROFILE_ADVICE + (_IDS_ADVICE if with_tool else ""), _FINISH + answer]
    return ["\n".join(lines)]


_INSTRUCTIONS = {"full": _full_instructions, "compact": _compact_instructions}


def build_prompt(
    kind: PromptKind,
    query: str,
    *,
    aspects: list[dict] | None = None,
    memory_text: str = "",
    style: PromptStyle = "full",
) -> Prompt:
    """The prompt of one setting; `aspects` only count for mrrec/global_only, `memory_text` for naive/static.

    `style` changes only the instruction text: request, aspects, memory, answer format and tool are the same.
    """
    if kind not in PROMPT_KINDS:
        raise ValueError(f"unknown prompt kind {kind!r}; expected one of {PROMPT_KINDS}")
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r}; expected one of {PROMPT_STYLES}")
    if kind in ("naive", "static") and not memory_text.strip():
        raise ValueError(f"prompt kind {kind!r} needs a non-empty memory_text")
    with_tool = kind == "mrrec"
    aspect_text = format_aspects(aspects or []) if kind in ("mrrec", "global_only") else ""
    parts = [f'A user asks: "{query.strip()}"']
    if aspect_text:
        parts.append("What shoppers usually care about for this kind of request (shared memory):\n" + aspect_text)
    if kind in _MEMORY_HEADERS:
        parts.append(_MEMORY_HEADERS[kind] + "\n" + memory_text.strip())
    answer = _ANSWER_WITH_IDS if with_tool else _ANSWER_PROFILE_ONLY
    parts += _INSTRUCTIONS[style](bool(aspect_text), with_tool, answer)
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "\n\n".join(parts)}]
    return Prompt(kind=kind, messages=messages, tools=[memory_tool_schema()] if with_tool else None)


def policy_prompt_kind(use_memory: bool) -> PromptKind:
    """The setting a trained policy works in: MR.Rec with the memory tool, or Rec-R1's no-memory rewriting."""
    return "mrrec" if use_memory else "no_memory"


def build_messages(
    query: str, aspects: list[dict], use_memory: bool = True, style: PromptStyle = "full"
) -> list[Message]:
    """The MR.Rec prompt (use_memory) or the no-memory rewriting prompt; pass `prompt_tools(use_memory)` as tools=."""
    return build_prompt(policy_prompt_kind(use_memory), query, aspects=aspects, style=style).messages


def prompt_tools(use_memory: bool = True) -> list[dict] | None:
    return [memory_tool_schema()] if use_memory else None


def structured_messages(messages: list[Message]) -> list[Message]:
    """The conversation in chat-API form: `<tool_call>` text in assistant turns becomes `tool_calls` entries.

    Rollouts store assistant turns verbatim (the exact text the model wrote); chat APIs and TRL want the calls
    as structured fields. A tool result that follows no readable call (a malformed one) is passed on as a
    `<tool_response>` user turn, which is what the Qwen2.5 template renders it as anyway.
    """
    out: list[Message] = []
    open_call = False
    for m in messages:
        m = copy.deepcopy(m)
        if m.get("role") == "assistant" and TOOL_OPEN in (m.get("content") or ""):
            calls = [c for c in parse_tool_calls(m["content"]) if c["name"]]
            if calls:
                m["content"] = m["content"].split(TOOL_OPEN)[0].strip()
                m["tool_calls"] = [
                    {"type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}} for c in calls
                ]
            open_call = bool(calls)
        elif m.get("role") == "tool" and not open_call:
            m = {"role": "user", "content": f"<tool_response>\n{m['content']}\n</tool_response>"}
        elif m.get("role") != "tool":
            open_call = False
        out.append(m)
    return out
