"""The chat-LLM interface every backend implements.

A backend takes a batch of conversations and returns one completion per
conversation (or `n` per conversation). Backends are cached on disk by
(model, messages, sampling params) so reruns cost nothing and crashed runs resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

Message = dict[str, str]  # {"role": "system"|"user"|"assistant"|"tool", "content": str}


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0
    stop: tuple[str, ...] = ()


@dataclass
class Usage:
    """Token accounting, for the paper's efficiency table and the cost model."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    cache_hits: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


class ChatLLM(Protocol):
    name: str
    usage: Usage

    def chat(self, conversations: list[list[Message]], sampling: Sampling, n: int = 1) -> list[list[str]]:
        """One list of `n` completions per conversation, in order."""
        ...
