"""A paired comparison of two systems recorded in different runs, from the committed per-request rows.

Why: on 2 CPU cores each LLM row costs ~40 minutes per 320 requests, so a newly trained policy is evaluated in its
own run and compared with a row already recorded (e.g. GRPO vs the SFT policy it started from) instead of decoding
the old row again. That is only a paired comparison if both runs ranked the same requests against the same pool
and scored them by the same rule, so it is refused otherwise: equal stage-02 hashes (data, requests, pool,
retriever), the same target and user for every shared request, the same headline setting (malformed rule,
history exclusion). The one stage-02 difference allowed is the item retriever (paper Fig. 5): with equal stage-01
hashes both runs rank the same pool for the same requests, only by another method, so the rows stay paired; the
result names the keys that differ (`runs_differ_in`) and the retriever each side ranked with (`items_ranked_by`).
The test is stage 05's own (`eval.report.paired_tests`): users resampled, seed `seed + i` for metric i, Holm over
the metrics compared together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mrrec_lib.eval.metrics import metrics_from_ranks
from mrrec_lib.eval.protocol import PAIRED_METRICS, headline
from mrrec_lib.eval.stats import holm, paired_cluster_test
from mrrec_lib.eval.systems import SYSTEMS
from mrrec_lib.results.layout import read_config, read_per_query, read_stage_hashes
from mrrec_lib.results.recompute import headline_column
from mrrec_lib.stages import first_stage, stage_keys

_SAME_REQUEST = ("user_id", "target_item_id")
# Request subsets a comparison can be restricted to, by the per-request `title_overlap` (content words shared with
# the target's title): where the request already names the product, query-only retrieval reads the answer.
SUBSETS = {"all": None, "no_overlap": lambda overlap: overlap == 0, "overlap": lambda overlap: overlap > 0}
# Requests kept by whether one side's answer parsed: a policy that mostly learned to close its answers (malformed
# ones score 0) gains on B's malformed requests; the well-formed ones show whether the content of its answers changed.
# Both sides well-formed compares the content of two policies' answers alone.
ANSWER_FORMATS = {"any": None, "wellformed": False, "malformed": True}
# Stage-02 keys two compared records may differ in: the item retriever ranks the same pool by another method, and
# the memory builder writes the memory under test (like `global_memory`, a treatment, not another pool or rule).
COMPARABLE_STAGE02_KEYS = frozenset({"item_retriever", "memory_builder"})


class IncomparableRecordsError(ValueError):
    """The two records did not score the same requests on the same pool under the same rules."""


def _rows(record: Path, system: str) -> tuple[pd.DataFrame, Any]:
    cfg = read_config(record)
    rows = read_per_query(record)
    mine = rows[rows["system"] == system]
    if mine.empty:
        have = sorted(rows["system"].unique())
        raise KeyError(f"{record}: no per-request rows for system {system!r}; recorded systems: {have}")
    return mine.set_index("qid"), cfg


def _stage_hash(record: Path, stage: str) -> str:
    stages = read_stage_hashes(record)
    if stage not in stages:
        raise IncomparableRecordsError(f"{record}: stage {stage} is not recorded, so its pool cannot be checked")
    return stages[stage]


def check_same_rule(a: Path, cfg_a: Any, b: Path, cfg_b: Any) -> None:
    """Refuse records whose rows were scored by another headline setting or other cut-offs."""
    if headline(cfg_a).column != headline(cfg_b).column:
        raise IncomparableRecordsError(
            f"headline settings differ: {a} scores `{headline(cfg_a).column}`, {b} `{headline(cfg_b).column}`"
        )
    if cfg_a.eval_ks != cfg_b.eval_ks:
        raise IncomparableRecordsError(f"eval_ks differ: {cfg_a.eval_ks} vs {cfg_b.eval_ks}")


def check_same_requests(ra: pd.DataFrame, rb: pd.DataFrame, common: pd.Index) -> None:
    """Refuse shared request ids (rows indexed by qid) that name another user or target in the two records."""
    for col in _SAME_REQUEST:
        differ = (ra.loc[common, col].astype(str) != rb.loc[common, col].astype(str)).sum()
        if differ:
            raise IncomparableRecordsError(f"{differ} shared request ids have a different {col} in the two records")


def _pool_difference(a: Path, b: Path) -> list[str]:
    """The stage-02 keys `a` and `b` differ in, if all are `COMPARABLE_STAGE02_KEYS`; refused otherwise."""
    if _stage_hash(a, "02") == _stage_hash(b, "02"):
        return []
    refusal = f"{a} and {b} differ before stage 03 (stage-02 hashes): different data, requests or pool"
    if _stage_hash(a, "01") != _stage_hash(b, "01"):
        raise IncomparableRecordsError(refusal)
    cfg_a, cfg_b = read_config(a), read_config(b)
    own = [k for k in stage_keys("02") if first_stage(k) == "02"]
    differ = [k for k in own if getattr(cfg_a, k) != getattr(cfg_b, k)]
    if not differ or set(differ) - COMPARABLE_STAGE02_KEYS:
        keys = ", ".join(differ) or "no config key (a code change)"
        raise IncomparableRecordsError(f"{refusal}; they differ in {keys}")
    return differ


def ranked_by(system: str, cfg: Any) -> str:
    """The item retriever a system's rows were ranked with: its own (query_dense, query_bm25) or the run's."""
    spec = SYSTEMS.get(system)
    return (spec.retriever if spec else "") or cfg.item_retriever


def compare_records(
    a: str | Path,
    system_a: str,
    b: str | Path,
    system_b: str,
    metrics: tuple[str, ...] = PAIRED_METRICS,
    subset: str = "all",
    qids: pd.Index | None = None,
    b_format: str = "any",
    a_format: str = "any",
) -> dict[str, Any]:
    """`system_a` of record `a` minus `system_b` of record `b` on the requests both scored, one test per metric.

    `subset` keeps only the shared requests of one `SUBSETS` kind (e.g. `no_overlap`); `qids`, only those
    requests (a combined table's common set), which both records must have scored; `b_format` (`ANSWER_FORMATS`), only
    the requests where B's answer was well-formed or malformed; `a_format`, the same by A's answer.

    Bootstrap draws and seed come from record `a`'s config, as stage 05 would use for its reference system.
    """
    a, b = Path(a), Path(b)
    differs_in = _pool_difference(a, b)
    ra, cfg_a = _rows(a, system_a)
    rb, cfg_b = _rows(b, system_b)
    check_same_rule(a, cfg_a, b, cfg_b)
    common = ra.index.intersection(rb.index)
    if len(common) == 0:
        raise IncomparableRecordsError(f"{a} ({system_a}) and {b} ({system_b}) share no request")
    check_same_requests(ra, rb, common)
    if qids is not None:
        absent = qids.difference(common)
        if len(absent):
            raise IncomparableRecordsError(f"{len(absent)} requested ids were not scored by both records")
        common = qids
    common = select_subset(ra, common, subset, a)
    for side, rows, system, fmt in (("b", rb, system_b, b_format), ("a", ra, system_a, a_format)):
        common = _select_format(rows, common, side, system, fmt)
    va = metrics_from_ranks(ra.loc[common, headline_column(ra, cfg_a)].to_numpy(dtype=float), cfg_a.eval_ks)
    vb = metrics_from_ranks(rb.loc[common, headline_column(rb, cfg_b)].to_numpy(dtype=float), cfg_b.eval_ks)
    unknown = [m for m in metrics if m not in va]
    if unknown:
        raise KeyError(f"unknown metric(s) {unknown}; recorded: {sorted(va)}")
    users = ra.loc[common, "user_id"].astype(str).to_numpy()
    tests = []
    for i, m in enumerate(metrics):
        t = paired_cluster_test(va[m], vb[m], users, cfg_a.bootstrap_samples, cfg_a.seed + i)
        tests.append({"metric": m, "mean_a": float(np.mean(va[m])), "mean_b": float(np.mean(vb[m])), **t})
    for t, p in zip(tests, holm([t["p_permutation"] for t in tests]), strict=True):
        t["p_holm"] = float(p)
    return {
        "a": {"record": a.name, "system": system_a, "requests": len(ra)},
        "b": {"record": b.name, "system": system_b, "requests": len(rb)},
        "subset": subset,
        "b_format": b_format,
        "a_format": a_format,
        "shared_requests": len(common),
        "shared_users": len(set(users)),
        "setting": headline(cfg_a).column,
        "runs_differ_in": {k: [getattr(cfg_a, k), getattr(cfg_b, k)] for k in differs_in},
        "items_ranked_by": [ranked_by(system_a, cfg_a), ranked_by(system_b, cfg_b)],
        "tests": tests,
    }


def _select_format(rows: pd.DataFrame, common: pd.Index, side: str, system: str, fmt: str) -> pd.Index:
    """The ids of `common` where `system`'s answer (side `side` of the comparison) is `fmt` (`ANSWER_FORMATS`)."""
    if fmt not in ANSWER_FORMATS:
        raise ValueError(f"unknown {side}_format {fmt!r}; choose one of {sorted(ANSWER_FORMATS)}")
    if ANSWER_FORMATS[fmt] is None:
        return common
    chosen = common[rows.loc[common, "malformed"].astype(bool).to_numpy() == ANSWER_FORMATS[fmt]]
    if len(chosen) == 0:
        raise IncomparableRecordsError(f"no shared request where {system}'s answer is {fmt}")
    return chosen


def select_subset(rows: pd.DataFrame, common: pd.Index, subset: str, record: Path) -> pd.Index:
    """The ids of `common` in `subset`, judged by `rows` (per-request rows indexed by qid) of `record`."""
    if subset not in SUBSETS:
        raise ValueError(f"unknown subset {subset!r}; choose one of {sorted(SUBSETS)}")
    keep = SUBSETS[subset]
    if keep is None:
        return common
    if "title_overlap" not in rows.columns:
        raise KeyError(f"{record}: per-request rows lack `title_overlap`, so subset {subset!r} cannot be formed")
    chosen = common[keep(rows.loc[common, "title_overlap"].to_numpy())]
    if len(chosen) == 0:
        raise IncomparableRecordsError(f"no shared request is in subset {subset!r}")
    return chosen


def format_comparison(result: dict[str, Any]) -> str:
    """Plain lines for the terminal: what was compared on what, then one line per metric."""
    a, b = result["a"], result["b"]
    lines = [
        f"{a['record']}:{a['system']} minus {b['record']}:{b['system']} on {result['shared_requests']} shared "
        f"requests of {result['shared_users']} users (setting {result['setting']}"
        + (f", subset {result['subset']}" if result.get("subset", "all") != "all" else "")
        + "".join(
            f", {side['record']}:{side['system']} {result[key]}"
            for side, key in ((a, "a_format"), (b, "b_format"))
            if result.get(key, "any") != "any"
        )
        + (", items ranked by {} vs {}".format(*result["items_ranked_by"]) if result.get("runs_differ_in") else "")
        + ")"
    ]
    for t in result["tests"]:
        lines.append(
            f"  {t['metric']}: {t['mean_a']:.3f} vs {t['mean_b']:.3f}, diff {t['diff']:+.3f} "
            f"[{t['lo']:+.3f}, {t['hi']:+.3f}], p_perm {t['p_permutation']:.4f}, Holm {t['p_holm']:.4f}, "
            f"MDD {t['mdd']:.3f}"
        )
    return "\n".join(lines)
