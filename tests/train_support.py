"""Shared pieces for the training tests: the real SmolLM2 tokenizer, a tiny random model, fakes.

The tokenizer is the real one (with TRL's Qwen2.5 tool template) because masking
depends on how tool calls and tool results tokenise; the model is a 2-layer random
Llama over the same vocabulary so a training step takes a second on CPU.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import torch

TOOL_RESULT = "[pref:snacks:1] prefers salty crunchy snacks\n[rec:7] bought sea salt chips, 5 stars"
TOOL_CALL_TEXT = '<tool_call>\n{"name": "memory_retrieval_tool", "arguments": {"query": "snack taste"}}\n</tool_call>'
ANSWER_TEXT = '\\boxed{"ideal_item_profile": "salty crunchy chips", "useful_memory_ids": ["pref:snacks:1"]}'


@lru_cache(maxsize=1)
def _tokenizer_dir() -> str:
    from mrrec_lib.config import Config
    from mrrec_lib.llm.models import ensure_smollm2

    return str(ensure_smollm2(Config()))


def smol_tokenizer():
    from transformers import AutoTokenizer

    from mrrec_lib.llm.models import tool_chat_template

    tok = AutoTokenizer.from_pretrained(_tokenizer_dir())
    tok.chat_template = tool_chat_template()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def tiny_model(tokenizer, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def fake_tool_factory(store: Any, snapshot: str, k: int):
    """The per-snapshot memory tool, without a memory store: echoes which snapshot it searched."""

    def memory_retrieval_tool(query: str) -> str:
        return f"{TOOL_RESULT}\n(snapshot {snapshot}, k={k})"

    return memory_retrieval_tool


def boxed_reward(prompts, completions, **kwargs) -> list[float]:
    """1 when the last assistant turn holds a boxed answer; enough signal for GRPO plumbing tests."""
    out = []
    for messages in completions:
        text = messages[-1].get("content") or "" if messages else ""
        out.append(1.0 if "\\boxed{" in text else 0.0)
    return out


def prompt_messages(query: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You recommend products. Use memory_retrieval_tool, then answer in \\boxed{}."},
        {"role": "user", "content": query},
    ]


def grpo_rows(n: int = 2) -> list[dict[str, Any]]:
    return [
        {
            "prompt": prompt_messages(f"I need a snack for movie night {i}"),
            "qid": f"q{i}",
            "user_id": f"u{i}",
            "snapshot": f"u{i}@100",
            "target_item_id": f"i{i}",
            "category": "Grocery",
            "query": f"I need a snack for movie night {i}",
        }
        for i in range(n)
    ]


def tool_call_json() -> dict[str, Any]:
    return json.loads(TOOL_CALL_TEXT.split("\n")[1])
