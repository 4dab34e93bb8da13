"""Batched chat generation with a local transformers model.

Conversations are rendered with the tokenizer's chat template, left-padded into
batches and decoded together; only requests the cache lacks are generated.
Sampling is seeded per batch inside a forked RNG, so a call is reproducible and
never disturbs the caller's global random state (e.g. a training loop).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from mrrec_lib.config import Config
from mrrec_lib.llm.base import Completion, Message, Sampling, Tool, Usage, check_sampling, tool_schemas
from mrrec_lib.llm.cache import Request, ResponseCache, cached_generate
from mrrec_lib.llm.models import load_causal_lm, model_fingerprint


class TransformersChat:
    """A `ChatLLM` over an already loaded (model, tokenizer), e.g. a freshly trained policy."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str,
        cache: ResponseCache | None = None,
        batch_size: int = 8,
    ):
        if tokenizer.pad_token_id is None:
            raise ValueError(f"{name}: tokenizer has no pad token; load it with mrrec_lib.llm.load_causal_lm")
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.cache = cache
        self.batch_size = batch_size
        self.usage = Usage()
        template = tokenizer.chat_template or ""
        # The cache identity covers the template too: the same weights behind another template answer differently.
        self.cache_id = f"{name}#tpl:{hashlib.sha256(template.encode()).hexdigest()[:8]}"

    @classmethod
    def from_config(cls, cfg: Config, model: str | None = None, cache: ResponseCache | None = None) -> TransformersChat:
        name = model or cfg.llm_model
        lm, tokenizer = load_causal_lm(name, cfg)
        return cls(lm, tokenizer, name=model_fingerprint(name, cfg), cache=cache, batch_size=cfg.llm_batch_size)

    def chat(
        self,
        conversations: list[list[Message]],
        sampling: Sampling,
        n: int = 1,
        tools: list[Tool] | None = None,
    ) -> list[list[str]]:
        check_sampling(sampling)
        schemas = tool_schemas(tools)
        return cached_generate(
            model=self.cache_id,
            conversations=conversations,
            sampling=sampling,
            n=n,
            tools=schemas,
            cache=self.cache,
            usage=self.usage,
            batch_size=self.batch_size,
            generate=lambda requests: self._generate(requests, sampling, schemas),
            desc=f"generate ({self.name.split('@')[0]})",
        )

    def _generate(self, requests: list[Request], sampling: Sampling, tools: list[Tool] | None) -> list[Completion]:
        import torch

        tok = self.tokenizer
        texts = [
            tok.apply_chat_template(conv, tools=tools, add_generation_prompt=True, tokenize=False)
            for conv, _ in requests
        ]
        device = next(self.model.parameters()).device
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        prompt_len = enc["input_ids"].shape[1]
        kwargs: dict[str, Any] = {"max_new_tokens": sampling.max_new_tokens, "pad_token_id": tok.pad_token_id}
        if sampling.temperature > 0:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if sampling.stop:
            kwargs.update(stop_strings=list(sampling.stop), tokenizer=tok)
        seed = _batch_seed(sampling.seed, requests)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.inference_mode():
            torch.manual_seed(seed)
            out = self.model.generate(**enc, **kwargs)
        ends = _end_ids(self.model.generation_config.eos_token_id, tok.pad_token_id)
        prompt_tokens = enc["attention_mask"].sum(dim=1).tolist()
        results = []
        for row, n_prompt in zip(out[:, prompt_len:].tolist(), prompt_tokens, strict=True):
            cut = next((i + 1 for i, t in enumerate(row) if t in ends), len(row))
            text = _truncate_at_stop(tok.decode(row[:cut], skip_special_tokens=True), sampling.stop)
            results.append(Completion(text=text, prompt_tokens=int(n_prompt), completion_tokens=cut))
        return results


def _end_ids(eos: int | list[int] | None, pad: int) -> set[int]:
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return ids | {pad}


def _batch_seed(seed: int, requests: list[Request]) -> int:
    """A seed fixed by the batch's content, so reruns of the same batch sample the same text."""
    blob = json.dumps([seed, requests], sort_keys=True, default=str).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "big")


def _truncate_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """OpenAI semantics: the text ends before the first stop string, which is not included."""
    cuts = [i for s in stop if (i := text.find(s)) >= 0]
    return text[: min(cuts)] if cuts else text
