"""One LLM step over many work units: batched, validated, retried once, then handed back for fallback.

The retry uses a different seed; at temperature 0 a new seed alone would
reproduce the same greedy reply, so the retry samples at `RETRY_TEMPERATURE`.
Backend exceptions (no model, no network) propagate: they are not malformed
output, and the stage is resumable once the backend works again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from mrrec_lib.llm.base import ChatLLM, Message, Sampling

T = TypeVar("T")
RETRY_TEMPERATURE = 0.7
USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "calls", "cache_hits", "seconds")
log = logging.getLogger(__name__)


def usage_of(llm: ChatLLM | None) -> dict[str, float]:
    if llm is None:
        return dict.fromkeys(USAGE_FIELDS, 0)
    return {f: getattr(llm.usage, f) for f in USAGE_FIELDS}


def usage_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {f: after[f] - before[f] for f in USAGE_FIELDS}


@dataclass
class Outcome:
    """How a unit was produced: `llm` first try, `llm_retry`, or `fallback` (malformed twice, extractive used)."""

    value: Any
    status: str


def _complete(llm: ChatLLM, convs: list[list[Message]], sampling: Sampling) -> list[str]:
    return [c[0] if c else "" for c in llm.chat(convs, sampling, n=1)]


def _safe(parse: Callable[[str, str], T | None], key: str, text: str) -> T | None:
    try:
        return parse(key, text)
    except Exception as e:  # a parser bug must not kill a long build: count it as malformed
        log.warning("parser failed on unit %s: %s", key, e)
        return None


def run_llm_step(
    llm: ChatLLM,
    messages: dict[str, list[Message]],
    parse: Callable[[str, str], T | None],
    fallback: Callable[[str], T],
    sampling: Sampling,
) -> dict[str, Outcome]:
    """Generate every unit, retry the malformed ones once, and fall back for what is still malformed."""
    keys = list(messages)
    out: dict[str, Outcome] = {}
    if not keys:
        return out
    first = _complete(llm, [messages[k] for k in keys], sampling)
    bad = []
    for k, text in zip(keys, first, strict=True):
        value = _safe(parse, k, text)
        if value is None:
            bad.append(k)
        else:
            out[k] = Outcome(value, "llm")
    if bad:
        retry = replace(sampling, seed=sampling.seed + 1, temperature=sampling.temperature or RETRY_TEMPERATURE)
        for k, text in zip(bad, _complete(llm, [messages[k] for k in bad], retry), strict=True):
            value = _safe(parse, k, text)
            out[k] = Outcome(value, "llm_retry") if value is not None else Outcome(fallback(k), "fallback")
    return {k: out[k] for k in keys}
