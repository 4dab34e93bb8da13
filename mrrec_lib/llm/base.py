"""The chat-LLM interface every backend implements.

A backend takes a batch of conversations and returns one completion per
conversation (or `n` per conversation). Backends are cached on disk by
(model, messages, sampling params) so reruns cost nothing and crashed runs resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

Message = dict[str, str]  # {"role": "system"|"user"|"assistant"|"tool", "content": str}
Tool = dict[str, Any]  # an OpenAI-style function schema {"type": "function", "function": {...}}


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0
    stop: tuple[str, ...] = ()


@dataclass
class Usage:
    """Token accounting, for the paper's efficiency table and the cost model.

    `calls` counts completions the backend actually produced, `cache_hits` the
    requested completions served from the on-disk cache instead; token counts
    cover only the produced ones (a cached rerun costs nothing).
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    cache_hits: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def add(self, other: Usage) -> Usage:
        """Accumulate another Usage into this one (e.g. summing stages)."""
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.calls += other.calls
        self.cache_hits += other.cache_hits
        self.seconds += other.seconds
        for k, v in other.extra.items():
            self.extra[k] = self.extra.get(k, 0) + v if isinstance(v, int | float) else v
        return self


@dataclass(frozen=True)
class Completion:
    """One generated completion with the tokens it cost."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ChatLLM(Protocol):
    name: str
    usage: Usage

    def chat(
        self,
        conversations: list[list[Message]],
        sampling: Sampling,
        n: int = 1,
        tools: list[Tool] | None = None,
    ) -> list[list[str]]:
        """One list of `n` completions per conversation, in order.

        With `tools`, the prompt offers those functions and a tool call comes back
        as Qwen2.5-style text `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`
        whatever the backend, so one parser serves all of them.
        """
        ...


def tool_schemas(tools: list[Tool | Any] | None) -> list[Tool] | None:
    """OpenAI-style schemas for `tools`; plain Python functions are described from their signature and docstring."""
    if not tools:
        return None
    from transformers.utils import get_json_schema

    return [t if isinstance(t, dict) else get_json_schema(t) for t in tools]


def check_sampling(sampling: Sampling) -> None:
    """Fail early, naming the field, instead of deep inside a backend."""
    if sampling.temperature < 0:
        raise ValueError(f"Sampling.temperature must be >= 0, got {sampling.temperature}")
    if not 0 < sampling.top_p <= 1:
        raise ValueError(f"Sampling.top_p must be in (0, 1], got {sampling.top_p}")
    if sampling.max_new_tokens < 1:
        raise ValueError(f"Sampling.max_new_tokens must be >= 1, got {sampling.max_new_tokens}")
    if isinstance(sampling.stop, str):
        raise ValueError("Sampling.stop must be a tuple of strings, not a single string")
