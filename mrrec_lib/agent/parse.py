"""Reading tool calls and the boxed answer out of free model text.

Small policies write almost-JSON: single quotes, trailing commas, raw newlines
inside strings, a missing closing tag when generation stops. Parsing is lenient
about syntax but strict about meaning (the profile must be a non-empty string),
and it never raises: a rollout with garbage in it is scored 0, not crashed on.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from typing import Any

TOOL_OPEN = "<tool_call>"
TOOL_CLOSE = "</tool_call>"
_END_MARKERS = ("<|im_end|>", "<|endoftext|>", "</s>")
_BOXED = re.compile(r"\\*boxed\s*\{")
_TOOL_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)


@dataclass
class Answer:
    ok: bool
    profile: str = ""
    memory_ids: list[str] = field(default_factory=list)
    error: str | None = None


def loads_lenient(text: str) -> Any:
    """JSON first, then a Python literal (single quotes, trailing commas, True/None); ValueError if neither."""
    text = text.strip()
    try:
        return json.loads(text, strict=False)
    except json.JSONDecodeError as e:
        json_error = e
    try:
        return ast.literal_eval(re.sub(r"\btrue\b|\bfalse\b|\bnull\b", _py_literal, text))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise ValueError(f"not JSON: {json_error.msg} at char {json_error.pos}") from None


def _py_literal(m: re.Match) -> str:
    return {"true": "True", "false": "False", "null": "None"}[m.group(0)]


def _strip_end_markers(text: str) -> str:
    for marker in _END_MARKERS:
        text = text.replace(marker, "")
    return text


def parse_tool_calls(text: str) -> list[dict[str, Any]]:
    """Every `<tool_call>` block in `text`, in order, as {name, arguments, error, raw}.

    A block left open at the end of the text (generation stopped at EOS) still
    counts. `arguments` may arrive as a JSON string or under `parameters`; a
    block that cannot be read keeps `name=None` and says why in `error`, so the
    caller can answer the model with an error message instead of ignoring it.
    """
    calls = []
    for m in _TOOL_BLOCK.finditer(text or ""):
        raw = _strip_end_markers(m.group(1)).strip()
        calls.append(_read_call(raw))
    return calls


def _read_call(raw: str) -> dict[str, Any]:
    call: dict[str, Any] = {"name": None, "arguments": {}, "error": None, "raw": raw}
    if not raw:
        call["error"] = "empty tool call"
        return call
    try:
        obj = loads_lenient(raw)
    except ValueError as e:
        call["error"] = f"tool call is not valid JSON ({e})"
        return call
    if isinstance(obj, dict) and isinstance(obj.get("function"), dict):
        obj = obj["function"]
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"].strip():
        call["error"] = 'tool call needs a JSON object with a "name" string'
        return call
    args = next((obj[k] for k in ("arguments", "parameters", "args") if k in obj), {})
    if isinstance(args, str):
        try:
            args = loads_lenient(args)
        except ValueError:
            pass
    call["name"] = obj["name"].strip()
    call["arguments"] = args
    return call


def tool_query(call: dict[str, Any], key: str = "query") -> str | None:
    """The one string argument of a single-argument tool, whatever the model named it."""
    args = call.get("arguments")
    if isinstance(args, str):
        return args.strip() or None
    if not isinstance(args, dict):
        return None
    value = args.get(key)
    if value is None:
        strings = [v for v in args.values() if isinstance(v, str)]
        value = strings[0] if len(strings) == 1 else None
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        value = "; ".join(value)
    if not isinstance(value, str):
        return None
    return value.strip() or None


def strip_tool_calls(text: str) -> str:
    """The model's prose without its tool-call blocks (what is left to rank when the answer is malformed)."""
    return _strip_end_markers(_TOOL_BLOCK.sub(" ", text or "")).strip()


def _balanced_end(text: str, start: int) -> int | None:
    """Index of the brace closing the one opened just before `start`; braces inside JSON strings do not count."""
    depth, in_str, quote, escaped = 1, False, "", False
    for i in range(start, len(text)):
        ch = text[i]
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                in_str = False
        elif ch in "\"'":
            in_str, quote = True, ch
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def _boxed_bodies(text: str) -> list[str]:
    bodies = []
    for m in _BOXED.finditer(text):
        end = _balanced_end(text, m.end())
        if end is not None:
            bodies.append(text[m.end() : end])
    return bodies


def parse_answer(text: str) -> Answer:
    """The last complete `\\boxed{...}` read as `{"ideal_item_profile": str, "useful_memory_ids": [str]}`.

    The boxed braces double as the JSON object's braces; `\\boxed{{...}}` is accepted too.
    `useful_memory_ids` may be absent (the no-memory prompt does not ask for it).
    """
    try:
        return _parse_answer(text if isinstance(text, str) else "")
    except Exception as e:  # noqa: BLE001 - the contract is "never raises"; the error is reported, not hidden
        return Answer(ok=False, error=f"unexpected parse failure: {type(e).__name__}: {e}")


def _parse_answer(text: str) -> Answer:
    bodies = _boxed_bodies(text)
    if not bodies:
        has_open = _BOXED.search(text) is not None
        return Answer(ok=False, error="unclosed \\boxed{" if has_open else "no \\boxed{...} answer")
    body = bodies[-1].strip()
    obj, last_error = None, "empty \\boxed{}"
    for candidate in ("{" + body + "}", body):
        try:
            obj = loads_lenient(candidate)
        except ValueError as e:
            last_error = str(e)
            continue
        if isinstance(obj, dict):
            break
        obj = None
    if obj is None:
        return Answer(ok=False, error=f"boxed answer is not a JSON object: {last_error}")
    profile = obj.get("ideal_item_profile")
    if not isinstance(profile, str) or not profile.strip():
        return Answer(ok=False, error='"ideal_item_profile" missing or not a non-empty string')
    ids = obj.get("useful_memory_ids", [])
    if isinstance(ids, (str, int)):
        ids = [ids]
    if not isinstance(ids, list):
        return Answer(ok=False, profile=profile.strip(), error='"useful_memory_ids" is not a list')
    return Answer(ok=True, profile=profile.strip(), memory_ids=[str(i).strip() for i in ids if str(i).strip()])
