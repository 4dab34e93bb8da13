"""Token-level generation for the rollout engine with a local transformers model.

The engine needs the exact ids the model produced (for the loss mask and for
GRPO), so the local backend works on ids, not text: a batch of contexts is
left-padded and generated together, and each row is cut at its own stop
(`</tool_call>` or an end-of-turn token).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from mrrec_lib.agent.parse import TOOL_CLOSE

END_OF_TURN = "<|im_end|>"


class TokenPolicy(Protocol):
    """Anything that continues token contexts; the engine drives it turn by turn."""

    tokenizer: Any

    def generate_ids(
        self, contexts: list[list[int]], max_new_tokens: int, temperature: float, top_p: float, seed: int
    ) -> list[list[int]]:
        """New ids per context (may run past a stop; the engine trims)."""
        ...


def stop_token_ids(tokenizer: Any) -> set[int]:
    """Ids that end a turn: the tokenizer's EOS and the chat format's end-of-turn token."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    eot = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if isinstance(eot, int) and eot != tokenizer.unk_token_id:
        ids.add(eot)
    return ids


def end_of_turn_id(tokenizer: Any) -> int:
    """The id the chat template writes after an assistant turn (appended when a turn stops at `</tool_call>`)."""
    eot = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if isinstance(eot, int) and eot != tokenizer.unk_token_id:
        return eot
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has neither <|im_end|> nor an eos token: cannot close an assistant turn")
    return tokenizer.eos_token_id


def trim_at_stop(ids: list[int], tokenizer: Any, stop_ids: set[int]) -> tuple[list[int], str | None]:
    """Cut `ids` after the first stop; returns (kept ids, "eos" | "tool_call" | None when no stop was reached)."""
    eos_at = next((i for i, t in enumerate(ids) if t in stop_ids), None)
    scan = ids if eos_at is None else ids[:eos_at]
    tool_at = None
    if TOOL_CLOSE in tokenizer.decode(scan, skip_special_tokens=False):
        lo, hi = 0, len(scan) - 1  # smallest i with TOOL_CLOSE in decode(scan[:i+1]); the predicate is monotone
        while lo < hi:
            mid = (lo + hi) // 2
            if TOOL_CLOSE in tokenizer.decode(scan[: mid + 1], skip_special_tokens=False):
                hi = mid
            else:
                lo = mid + 1
        tool_at = lo
    if tool_at is not None:
        return ids[: tool_at + 1], "tool_call"
    if eos_at is not None:
        return ids[: eos_at + 1], "eos"
    return list(ids), None


def repeated_ngram_ends(ids: list[int], n: int) -> list[int]:
    """The tokens that would complete, after `ids`, an n-gram `ids` already contains."""
    prefix = tuple(ids[len(ids) - n + 1 :])
    return [ids[i + n - 1] for i in range(len(ids) - n + 1) if tuple(ids[i : i + n - 1]) == prefix]


def decoding_model(model: Any) -> Any:
    """`model` ready to decode with and never trained afterwards: a PEFT adapter merged into the weights.

    An unmerged LoRA adds two small matmuls and a Python call per adapted module at every decode step.
    """
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model.eval()


class _StopOnText(StoppingCriteria):
    """Stops a row once its newly generated tail contains a stop string.

    transformers' own `stop_strings` rebuilds a table over the whole vocabulary on
    every `generate` call (~3 s for SmolLM2 here, more than the turn itself);
    decoding the last few new tokens of each row per step costs microseconds.
    """

    def __init__(self, tokenizer: Any, stops: list[str], start: int, window: int = 16):
        self.tokenizer, self.stops, self.start, self.window = tokenizer, stops, start, window

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        tails = input_ids[:, self.start :][:, -self.window :].tolist()
        done = [any(s in self.tokenizer.decode(t, skip_special_tokens=False) for s in self.stops) for t in tails]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class _NoRepeatNewNGram(LogitsProcessor):
    """Bans a token that would repeat an n-gram the row already generated in this call.

    Unlike transformers' `no_repeat_ngram_size`, the prompt is exempt: a profile may
    quote a memory entry verbatim once, but a greedy 135M model that starts cycling
    through the same sentence never closes its answer (docs/decisions.md).
    """

    def __init__(self, n: int, start: int):
        self.n, self.start = n, start

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        new = input_ids[:, self.start :].tolist()
        for row, ids in enumerate(new):
            if len(ids) < self.n:
                continue
            banned = repeated_ngram_ends(ids, self.n)
            if banned:
                scores[row, banned] = -float("inf")
        return scores


@dataclass
class LocalPolicy:
    """A transformers causal LM + tokenizer generating batches of left-padded contexts."""

    model: Any
    tokenizer: Any
    stop_strings: list[str] = field(default_factory=lambda: [TOOL_CLOSE])
    no_repeat_ngram: int = 0  # greedy decoding only: ban repeating a generated n-gram (0: off)
    _engine: Any = field(default=None, repr=False)

    def engine(self, max_rows: int) -> Any:
        """The continuous-batching KV engine over this model (`mrrec_lib.agent.engine`)."""
        from mrrec_lib.agent.engine import KVEngine

        if self._engine is None or self._engine.model is not self.model:  # rebuilt if the model was swapped
            self._engine = KVEngine(self.model, self.tokenizer, stop_token_ids(self.tokenizer), max_rows)
        self._engine.max_rows = max(1, max_rows)
        return self._engine

    @classmethod
    def from_config(cls, cfg: Any, name_or_path: str | None = None) -> LocalPolicy:
        """A freshly loaded policy for decoding only (a LoRA adapter merged)."""
        from mrrec_lib.llm import load_causal_lm

        model, tokenizer = load_causal_lm(name_or_path or cfg.policy_model, cfg)
        return cls.for_model(decoding_model(model), tokenizer, cfg)

    @classmethod
    def for_model(cls, model: Any, tokenizer: Any, cfg: Any) -> LocalPolicy:
        """A loaded (model, tokenizer) with the config's decoding settings: the one place they are read."""
        return cls(model=model, tokenizer=tokenizer, no_repeat_ngram=cfg.decode_no_repeat_ngram)

    @torch.no_grad()
    def generate_ids(
        self, contexts: list[list[int]], max_new_tokens: int, temperature: float, top_p: float, seed: int
    ) -> list[list[int]]:
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else end_of_turn_id(tok)
        width = max(len(c) for c in contexts)
        input_ids = torch.tensor([[pad] * (width - len(c)) + list(c) for c in contexts], dtype=torch.long)
        attention = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in contexts], dtype=torch.long)
        device = next(self.model.parameters()).device
        if temperature > 0:  # sampled rollouts decode like GRPO's (TRL has no repeat guard)
            sampling: dict[str, Any] = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
        else:
            sampling = {"do_sample": False}
            if self.no_repeat_ngram > 0:
                sampling["logits_processor"] = LogitsProcessorList([_NoRepeatNewNGram(self.no_repeat_ngram, width)])
        torch.manual_seed(seed)
        out = self.model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            max_new_tokens=max_new_tokens,
            eos_token_id=sorted(stop_token_ids(tok)),
            pad_token_id=pad,
            stopping_criteria=StoppingCriteriaList([_StopOnText(tok, self.stop_strings, width)]),
            **sampling,
        )
        return [row[width:].tolist() for row in out.cpu()]
