"""Lenient JSON reading for LLM output.

Small models wrap JSON in prose or code fences, use single quotes, leave
trailing commas or stop mid-object at the token limit. We take the first
balanced `{...}` block, close what the generation left open, then try strict
JSON, JSON5 (quotes, trailing commas, comments) and Python literals in turn.
A result that is still unreadable is `None`, never an exception.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

import json5

_FENCE = re.compile(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)(?:```|$)", re.DOTALL)
_PY_LITERALS = {"true": "True", "false": "False", "null": "None"}


def _first_object(text: str) -> str | None:
    """The first `{...}` block, with brackets the generation left open closed in order."""
    start = text.find("{")
    if start < 0:
        return None
    stack: list[str] = []
    quote: str | None = None
    escaped = False
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
            continue
        if ch in "\"'":
            quote = ch
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]":
            if not stack or stack[-1] != ch:
                return text[start:i]  # mismatched bracket: keep what came before it
            stack.pop()
            if not stack:
                return text[start : i + 1]
    tail = text[start:].rstrip().rstrip(",:")
    return tail + (quote or "") + "".join(reversed(stack))


def _loads(candidate: str) -> Any:
    for parse in (json.loads, json5.loads):
        try:
            return parse(candidate)
        except (ValueError, TypeError, RecursionError):
            continue
    pythonic = re.sub(r"\b(true|false|null)\b", lambda m: _PY_LITERALS[m.group(1)], candidate)
    try:
        return ast.literal_eval(pythonic)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def parse_json_object(text: str | None) -> dict[str, Any] | None:
    """The first JSON object in an LLM reply, or None when there is none to be read."""
    if not text:
        return None
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for chunk in candidates:
        block = _first_object(chunk)
        if block is None:
            continue
        value = _loads(block)
        if isinstance(value, dict):
            return value
    return None
