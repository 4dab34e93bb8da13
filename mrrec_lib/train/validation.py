"""Validation of a policy during and after training: greedy rollouts on held-out queries, scored by the reward.

Uses the agent's rollout engine (`run_policy_on_queries`), i.e. the same prompts,
tool and parser as evaluation, so the early-stopping signal is the number stage 05
reports, not a training-time proxy. Greedy decoding makes successive evaluations
comparable: only the weights change between them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from mrrec_lib.config import Config

VAL_K = 100


def greedy(cfg: Config) -> Config:
    return cfg.model_copy(update={"rollout_temperature": 0.0})


def summarize(trajs: list, rewards: list, k: int = VAL_K) -> dict[str, Any]:
    """Rates and ranking metrics of one evaluation, plus per-query lists for paired comparisons."""
    if not trajs:
        raise ValueError("no validation trajectories to summarise")
    from mrrec_lib.train.rewards import ndcg_single

    ranks = [r.rank for r in rewards]
    ndcg = [ndcg_single(r, k) for r in ranks]
    recall = [float(r is not None and r <= k) for r in ranks]
    return {
        "n": len(trajs),
        f"ndcg@{k}": float(np.mean(ndcg)),
        f"recall@{k}": float(np.mean(recall)),
        "format_rate": float(np.mean([t.parse_ok for t in trajs])),
        "tool_call_rate": float(np.mean([t.n_tool_calls > 0 for t in trajs])),
        "tool_calls_mean": float(np.mean([t.n_tool_calls for t in trajs])),
        "invalid_calls_mean": float(np.mean([t.n_invalid_calls for t in trajs])),
        "reward_mean": float(np.mean([r.total for r in rewards])),
        "new_tokens_mean": float(np.mean([t.n_new_tokens for t in trajs])),
        "per_query": {
            "qid": [t.qid for t in trajs],
            f"ndcg@{k}": ndcg,
            f"recall@{k}": recall,
            "reward": [r.total for r in rewards],
        },
    }


def evaluate_policy(
    model: Any, tokenizer: Any, cfg: Config, store: Any, retriever: Any, queries: pd.DataFrame, progress: bool = False
) -> dict[str, Any]:
    """Greedy rollouts of (model, tokenizer) on `queries`, summarised; the model is left in eval mode."""
    from mrrec_lib.agent.policy import LocalPolicy
    from mrrec_lib.agent.run import run_policy_on_queries

    model.eval()
    trajs, rewards = run_policy_on_queries(
        queries,
        LocalPolicy.for_model(model, tokenizer, cfg),
        greedy(cfg),
        store=store,
        retriever=retriever,
        progress=progress,
    )
    out = summarize(trajs, rewards or [])
    out["example"] = trajs[0].messages
    return out


def make_policy_evaluator(
    cfg: Config, tokenizer: Any, store: Any, retriever: Any, queries: pd.DataFrame
) -> Callable[[Any], dict[str, Any]]:
    """`evaluate(model)` for the validation callback, bound to the validation queries."""
    if queries.empty:
        raise ValueError("no validation queries (split 'val') to evaluate the policy on; set grpo_eval_every: 0")

    def evaluate(model: Any) -> dict[str, Any]:
        return evaluate_policy(model, tokenizer, cfg, store, retriever, queries)

    return evaluate


def paired_change(before: dict[str, Any], after: dict[str, Any], metric: str, cfg: Config) -> dict[str, Any]:
    """Per-query difference after - before on `metric` over the queries both evaluations share, with a bootstrap CI."""
    from mrrec_lib.eval.stats import bootstrap_ci

    a = dict(zip(before["per_query"]["qid"], before["per_query"][metric], strict=True))
    b = dict(zip(after["per_query"]["qid"], after["per_query"][metric], strict=True))
    common = [q for q in a if q in b]
    if not common:
        raise ValueError("the two evaluations share no query: cannot pair them")
    diff = np.array([b[q] - a[q] for q in common], dtype=float)
    mean, lo, hi = bootstrap_ci(diff, cfg.bootstrap_samples, cfg.seed)
    return {
        "metric": metric,
        "n": len(common),
        "before": float(np.mean([a[q] for q in common])),
        "after": float(np.mean([b[q] for q in common])),
        "diff_mean": float(mean),
        "diff_ci_lo": float(lo),
        "diff_ci_hi": float(hi),
        "improved_queries": int((diff > 0).sum()),
        "worse_queries": int((diff < 0).sum()),
    }


def validation_queries(cfg: Config, paths: Any, n: int) -> pd.DataFrame:
    """The first `n` validation-split queries (a fixed set, so every policy is compared on the same ones)."""
    from mrrec_lib.data.schema import read_table

    queries = read_table(paths.data, "queries")
    val = queries[queries["split"] == "val"].head(n)
    if val.empty:
        raise ValueError(f"{paths.data / 'queries.parquet'}: no 'val' split queries to validate on")
    return val


def compare_policies(
    cfg: Config, paths: Any, policies: list[str], n: int, progress: bool = True
) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """Evaluate several policies ("base", "sft", "grpo", "recr1") on the same `n` validation queries, one at a time."""
    from mrrec_lib.memory.store import MemoryStore
    from mrrec_lib.retrieval.items import ItemRetriever
    from mrrec_lib.train.checkpoints import load_policy

    val = validation_queries(cfg, paths, n)
    store = MemoryStore.load(cfg, paths) if cfg.policy_uses_memory else None
    retriever = ItemRetriever.from_run(cfg, paths)
    evals: dict[str, dict[str, Any]] = {}
    for which in policies:
        model, tokenizer = load_policy(cfg, paths, which)  # type: ignore[arg-type]
        evals[which] = evaluate_policy(model, tokenizer, cfg, store, retriever, val, progress=progress)
        del model
    return scalar_table(evals), evals


def scalar_table(evals: dict[str, dict[str, Any]]) -> pd.DataFrame:
    rows = {name: {k: v for k, v in e.items() if isinstance(v, (int, float))} for name, e in evals.items()}
    return pd.DataFrame.from_dict(rows, orient="index")
