"""The paper's reward: r = 0.1·format + 5·(nDCG@1000 + nDCG@100) + 0.1·memory_called.

The rank of the purchased item comes from the same `ItemRetriever.ranks` the
evaluation uses, so a policy is trained on exactly the number it is judged by.
A malformed answer scores format 0 and, by default (`malformed_retrieval:
zero`), retrieval 0; `raw_text` ranks the raw final text instead (a softer
signal for policies that have not learnt the format yet). Nothing here raises
on model output.

Two entry points: `score_trajectories` for our own rollouts (SFT data,
evaluation), and `make_trl_reward_funcs` for TRL's GRPOTrainer: one function per
weighted term, so TRL logs each (`rewards/format_reward/mean`, ...) and its
default `reward_weights` (all 1) add them up to the paper's r.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mrrec_lib.agent.parse import parse_answer, parse_tool_calls, strip_tool_calls
from mrrec_lib.train.environment import TOOL_NAME

if TYPE_CHECKING:
    from mrrec_lib.agent.trajectory import Trajectory

NDCG_CUTOFFS = (100, 1000)  # the paper's reward uses nDCG@1000 + nDCG@100


@dataclass
class RewardBreakdown:
    format: float  # 1 if the boxed JSON answer parsed
    retrieval: float  # nDCG@1000 + nDCG@100 (unweighted)
    memory: float  # 1 if the memory tool was called
    ndcg100: float
    ndcg1000: float
    rank: int | None  # 1-based rank of the target item; None when nothing was ranked
    total: float  # the weighted sum the policy is trained on


def ndcg_single(rank: int | None, k: int) -> float:
    """nDCG@k with one relevant item: 1/log2(rank+1) inside the cutoff, else 0."""
    if rank is None or rank < 1 or rank > k:
        return 0.0
    return 1.0 / math.log2(rank + 1)


def breakdown(fmt: bool, rank: int | None, memory_called: bool, cfg: Any) -> RewardBreakdown:
    n100, n1000 = (ndcg_single(rank, k) for k in NDCG_CUTOFFS)
    retrieval = n100 + n1000
    total = (
        cfg.reward_format_weight * float(fmt)
        + cfg.reward_retrieval_weight * retrieval
        + cfg.reward_memory_weight * float(memory_called)
    )
    return RewardBreakdown(
        format=float(fmt),
        retrieval=retrieval,
        memory=float(memory_called),
        ndcg100=n100,
        ndcg1000=n1000,
        rank=None if rank is None else int(rank),
        total=float(total),
    )


def _text_to_rank(parse_ok: bool, profile: str, final_text: str, cfg: Any) -> str | None:
    """What the retriever embeds: the profile, or (raw_text mode) the raw final text of a malformed answer."""
    if parse_ok:
        return profile
    if cfg.malformed_retrieval == "raw_text" and final_text.strip():
        return final_text
    return None


def rank_texts(texts: Sequence[str | None], targets: Sequence[str], retriever: Any) -> list[int | None]:
    """One `retriever.ranks` call for every text that exists; None stays None."""
    if len(texts) != len(targets):
        raise ValueError(f"{len(texts)} texts but {len(targets)} target item ids")
    idx = [i for i, t in enumerate(texts) if t is not None]
    ranks: list[int | None] = [None] * len(texts)
    if idx:
        got = np.asarray(retriever.ranks([texts[i] for i in idx], [str(targets[i]) for i in idx]))
        for i, r in zip(idx, got.tolist(), strict=True):
            ranks[i] = int(r)
    return ranks


def score(trajs: Sequence[Trajectory], ranks: Sequence[int | None], cfg: Any) -> list[RewardBreakdown]:
    """Rewards from already computed ranks (None: not ranked, retrieval 0)."""
    if len(trajs) != len(ranks):
        raise ValueError(f"{len(trajs)} trajectories but {len(ranks)} ranks")
    return [breakdown(t.parse_ok, r, t.n_tool_calls > 0, cfg) for t, r in zip(trajs, ranks, strict=True)]


def score_trajectories(
    trajs: Sequence[Trajectory], targets: Sequence[str], retriever: Any, cfg: Any
) -> list[RewardBreakdown]:
    """Rank every trajectory's profile against its target item in one batch, then apply the paper's weights."""
    texts = [_text_to_rank(t.parse_ok, t.profile, t.final_text, cfg) for t in trajs]
    return score(trajs, rank_texts(texts, targets, retriever), cfg)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multimodal-style [{"type": "text", "text": ...}, ...]
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def completion_view(completion: Any) -> tuple[str, int]:
    """(last assistant text, memory calls) of a TRL completion: a string or a list of chat messages.

    In conversational mode with tools, TRL's completion is [assistant (tool_calls), tool, ..., assistant]: the
    answer is the last assistant turn and every `tool` message named after the memory tool is one call that ran.
    A plain string holds the whole exchange; its well-formed memory `<tool_call>` blocks are counted.
    """
    if isinstance(completion, str):
        calls = [c for c in parse_tool_calls(completion) if c["name"] == TOOL_NAME]
        return completion, len(calls)
    if not isinstance(completion, list):
        return "", 0
    messages = [m for m in completion if isinstance(m, dict)]
    last = next((m for m in reversed(messages) if m.get("role") == "assistant"), None)
    n_tool = sum(1 for m in messages if m.get("role") == "tool" and m.get("name", TOOL_NAME) == TOOL_NAME)
    return (_content_text(last.get("content")) if last else ""), n_tool


def _column(kwargs: dict, key: str, n: int) -> list | None:
    value = kwargs.get(key)
    if value is None:
        return None
    if len(value) != n:
        raise ValueError(f"reward column {key!r} has {len(value)} values for {n} completions")
    return list(value)


def make_trl_reward_funcs(retriever: Any, cfg: Any) -> list[Callable[..., list[float]]]:
    """[format_reward, retrieval_reward, memory_reward] with TRL's `f(prompts, completions, **kwargs)` signature.

    Each returns its term already weighted by the config (`reward_*_weight`), so leave GRPOConfig's
    `reward_weights` unset: the per-completion sum is then exactly `RewardBreakdown.total`.
    `retrieval_reward` needs the dataset column `target_item_id`. Columns `n_tool_calls` and `answer_text` (if
    present, e.g. from the KV-engine `rollout_func`, whose completions TRL decodes as one flat text) override the
    memory-call count and the final assistant text read from the completion.
    """

    def views(completions: list, kwargs: dict) -> list[tuple[str, int]]:
        out = [completion_view(c) for c in completions]
        counts = _column(kwargs, "n_tool_calls", len(out))
        texts = _column(kwargs, "answer_text", len(out))
        if counts is not None:
            out = [(text, int(n)) for (text, _), n in zip(out, counts, strict=True)]
        if texts is not None:
            out = [(str(t), n) for (_, n), t in zip(out, texts, strict=True)]
        return out

    def format_reward(prompts: list, completions: list, **kwargs: Any) -> list[float]:
        return [cfg.reward_format_weight * parse_answer(text).ok for text, _ in views(completions, kwargs)]

    def retrieval_reward(prompts: list, completions: list, **kwargs: Any) -> list[float]:
        targets = _column(kwargs, "target_item_id", len(completions))
        if targets is None:
            raise KeyError("retrieval_reward needs the dataset column 'target_item_id'")
        texts = []
        for text, _ in views(completions, kwargs):
            answer = parse_answer(text)
            texts.append(_text_to_rank(answer.ok, answer.profile, strip_tool_calls(text), cfg))
        ranks = rank_texts(texts, targets, retriever)
        return [cfg.reward_retrieval_weight * sum(ndcg_single(r, k) for k in NDCG_CUTOFFS) for r in ranks]

    def memory_reward(prompts: list, completions: list, **kwargs: Any) -> list[float]:
        return [cfg.reward_memory_weight * (n > 0) for _, n in views(completions, kwargs)]

    return [format_reward, retrieval_reward, memory_reward]
