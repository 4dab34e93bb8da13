"""Stage 05's pool-size curve: every evaluated row's headline texts, scored as distractors join the pool.

`eval.pool_curve` scores texts with one retriever per call; Table 1's rows use two
(BM25 query vs the run's retriever), so each group goes through its own. The texts
and the history setting are Table 1's headline ones, so the curve's right end is
the table's number.
"""

from __future__ import annotations

import pandas as pd

from mrrec_lib.eval.context import EvalContext
from mrrec_lib.eval.evaluate import EvalResult
from mrrec_lib.eval.pool_curve import pool_size_curve


def result_pool_curve(result: EvalResult, ctx: EvalContext) -> pd.DataFrame:
    """Long frame system, fraction, pool_size, metric, mean, n (`pool_curve.pool_size_curve`) for every row."""
    cfg = result.cfg
    exclude = ctx.history if cfg.eval_exclude_history else None
    by_kind: dict[str, list[str]] = {}
    for spec in result.systems:
        if spec.name in result.evaluated:
            by_kind.setdefault(ctx.retriever_kind(spec.retriever), []).append(spec.name)
    frames = [
        pool_size_curve(
            ctx.retriever(kind),
            ctx.items,
            result.per_query[result.per_query["system"].isin(names)],
            cfg.eval_pool_fractions,
            cfg.seed,
            exclude=exclude,
        )
        for kind, names in by_kind.items()
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
