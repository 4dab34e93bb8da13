"""Chat-LLM backends behind one interface, with an on-disk response cache.

from mrrec_lib.llm import make_llm, Sampling
llm = make_llm(cfg)                      # cfg.llm_backend: local transformers or OpenAI-compatible HTTP
llm.chat([[{"role": "user", "content": "hi"}]], Sampling(max_new_tokens=20))
"""

from __future__ import annotations

from mrrec_lib.config import Config
from mrrec_lib.llm.base import ChatLLM, Completion, Message, Sampling, Tool, Usage
from mrrec_lib.llm.cache import ResponseCache
from mrrec_lib.llm.local import TransformersChat
from mrrec_lib.llm.models import (
    SMOLLM2,
    chat_template_supports_tools,
    count_tokens,
    ensure_smollm2,
    load_causal_lm,
)
from mrrec_lib.llm.openai_compat import OpenAIChat
from mrrec_lib.runs import cache_dir

__all__ = [
    "SMOLLM2",
    "ChatLLM",
    "Completion",
    "Message",
    "OpenAIChat",
    "ResponseCache",
    "Sampling",
    "Tool",
    "TransformersChat",
    "Usage",
    "chat_template_supports_tools",
    "count_tokens",
    "default_sampling",
    "ensure_smollm2",
    "load_causal_lm",
    "make_llm",
    "response_cache",
]


def response_cache(cfg: Config) -> ResponseCache | None:
    """The shared cache file, or None when `llm_cache` is off."""
    return ResponseCache(cache_dir(cfg) / "llm_cache.sqlite") if cfg.llm_cache else None


def make_llm(cfg: Config, model: str | None = None) -> ChatLLM:
    """The configured backend (`cfg.llm_backend`) for `model` (default `cfg.llm_model`), cached on disk."""
    cache = response_cache(cfg)
    if cfg.llm_backend == "local":
        return TransformersChat.from_config(cfg, model, cache)
    if cfg.llm_backend == "openai":
        return OpenAIChat.from_config(cfg, model, cache)
    raise ValueError(f"unknown llm_backend {cfg.llm_backend!r}; expected 'local' or 'openai'")


def default_sampling(cfg: Config, **overrides) -> Sampling:
    """Sampling from the auxiliary-LLM config keys (temperature, max new tokens, seed)."""
    params = {"temperature": cfg.llm_temperature, "max_new_tokens": cfg.llm_max_new_tokens, "seed": cfg.seed}
    return Sampling(**{**params, **overrides})
