"""Case studies in the form of the paper's Fig. 7: request, retrieved memory, profile, top items, target.

Queries are drawn at random (seeded) from those the shown system answered, not
picked for looking good; each case also lists the target's rank under every
evaluated system, so a reader sees where the example sits.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from mrrec_lib.eval.evaluate import EvalResult

TOP_SHOWN = 5
RAW_SHOWN = 600  # characters of a malformed answer shown


def case_system(result: EvalResult) -> str | None:
    """The reference system when it ran, else the last evaluated one (the most complex in the default order)."""
    if result.cfg.eval_reference_system in result.evaluated:
        return result.cfg.eval_reference_system
    return result.evaluated[-1] if result.evaluated else None


def case_studies(
    result: EvalResult, items: pd.DataFrame, n: int | None = None, system: str | None = None
) -> list[dict]:
    """`n` (default `cfg.case_study_n`) cases for `system` (default `case_system`)."""
    cfg = result.cfg
    system = system or case_system(result)
    n = cfg.case_study_n if n is None else n
    if system is None or n <= 0:
        return []
    rows = result.system_rows(system)
    rng = np.random.default_rng(cfg.seed)
    picked = rng.choice(len(rows), size=min(n, len(rows)), replace=False) if len(rows) else []
    titles = items.drop_duplicates("item_id").set_index("item_id")["title"]
    ranks = result.per_query.pivot_table(index="qid", columns="system", values="rank", aggfunc="first")
    cases = []
    for i in sorted(picked):
        r = rows.iloc[int(i)]
        top = [str(x) for x in list(r["top_items"])[:TOP_SHOWN]]
        cases.append(
            {
                "qid": r["qid"],
                "category": r["category"],
                "request": r["query"],
                "system": system,
                "tool_queries": list(r["tool_queries"]),
                "memory_ids": list(r["memory_ids"]),
                "memory_text": r["memory_text"],
                "profile": r["profile"],
                "retrieved_text": r["text"],
                "raw": r["raw"][:RAW_SHOWN],
                "malformed": bool(r["malformed"]),
                "parse_error": r["parse_error"],
                "top_items": [
                    {"item_id": x, "title": titles.get(x, ""), "is_target": x == r["target_item_id"]} for x in top
                ],
                "target": {"item_id": r["target_item_id"], "title": titles.get(r["target_item_id"], "")},
                "ranks": {s: _rank(v) for s, v in ranks.loc[r["qid"]].items()},
            }
        )
    return cases


def _rank(v: float) -> int | None:
    return None if v is None or not math.isfinite(v) else int(v)


def format_case_study(case: dict) -> str:
    """One case as Markdown."""
    lines = [
        f"**Query {case['qid']}** ({case['category']}) — system `{case['system']}`",
        "",
        f"> {case['request']}",
        "",
    ]
    if case["tool_queries"]:
        lines.append("**Memory lookups:** " + "; ".join(f"`{q}`" for q in case["tool_queries"]))
    if case["memory_text"]:
        lines += ["", "**Retrieved memory:**", "", "```", case["memory_text"].strip(), "```"]
    elif not case["tool_queries"]:
        lines.append("**Retrieved memory:** none")
    if case["malformed"]:
        fallback = "its raw text was retrieved" if case["retrieved_text"] else "nothing was retrieved (scored 0)"
        lines += [
            "",
            f"**Malformed answer** ({case['parse_error']}): {fallback}.",
            "",
            "What the model wrote:",
            "",
            f"> {' '.join(case['raw'].split()) or '(nothing)'}",
        ]
    else:
        lines += ["", "**Ideal item profile:**", "", f"> {case['profile']}"]
    lines += ["", f"**Top-{TOP_SHOWN} items:**", ""]
    if not case["top_items"]:
        lines.append("(nothing retrieved)")
    for j, it in enumerate(case["top_items"], 1):
        mark = " ✅ (target)" if it["is_target"] else ""
        lines.append(f"{j}. {it['title'] or it['item_id']}{mark}")
    target_rank = case["ranks"].get(case["system"])
    lines += [
        "",
        f"**Target:** {case['target']['title'] or case['target']['item_id']} (rank {target_rank if target_rank else '—'})",
        "",
        "**Target rank per system:** "
        + ", ".join(f"{s}: {r if r is not None else '—'}" for s, r in case["ranks"].items()),
    ]
    return "\n".join(lines) + "\n"
