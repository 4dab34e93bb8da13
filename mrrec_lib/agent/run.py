"""Run the policy on a table of queries: prompts, per-user memory tools, rollouts, rewards.

The one entry point later stages share (SFT data by rejection sampling,
evaluation, the assistant), so every stage builds prompts and tools the same
way. With `out_path` the work is logged batch by batch to JSONL and a rerun
skips what is already there.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from mrrec_lib.agent.prompt import PromptKind, build_prompt
from mrrec_lib.agent.rollout import ToolFn, ToolResult, run_rollouts
from mrrec_lib.agent.trajectory import Trajectory
from mrrec_lib.runs import append_jsonl, read_jsonl
from mrrec_lib.train.rewards import RewardBreakdown, score_trajectories

_ENTRY_LINE = re.compile(r"^\[([^\]\n]+)\] \(", re.MULTILINE)  # `[entry_id] (level, category) text`


def default_prompt_kind(cfg: Any) -> PromptKind:
    """The policy's setting from the config: no memory (Rec-R1), global aspects only, or full MR.Rec."""
    if not cfg.policy_uses_memory:
        return "no_memory"
    return "mrrec" if cfg.local_memory else "global_only"


def store_tool(store: Any, snapshot: str, k: int) -> ToolFn:
    """The memory tool of one snapshot, reporting which entries it showed the model.

    The text is `mrrec_lib.memory.store.memory_tool`'s (the words GRPO's environment shows the model, one
    `[entry_id] (level, category) text` line per entry); the ids are read back from those lines.
    """
    from mrrec_lib.memory.store import memory_tool

    text_tool = memory_tool(store, snapshot, k)

    def memory_retrieval_tool(query: str) -> ToolResult:
        text = text_tool(query)
        return ToolResult(text=text, entry_ids=_ENTRY_LINE.findall(text))

    return memory_retrieval_tool


def _records(queries: pd.DataFrame | Sequence[Mapping[str, Any]], needed: set[str]) -> list[dict[str, Any]]:
    rows = queries.to_dict("records") if isinstance(queries, pd.DataFrame) else [dict(q) for q in queries]
    for i, r in enumerate(rows):
        missing = needed - set(r)
        if missing:
            raise KeyError(f"query row {i} (qid={r.get('qid')!r}) lacks column(s) {sorted(missing)}")
    return rows


def _row(traj: Trajectory, target: str, reward: RewardBreakdown | None) -> dict[str, Any]:
    row = traj.to_dict()
    row["target_item_id"] = target
    if reward is not None:
        row["reward"] = asdict(reward)
    return row


def run_policy_on_queries(
    queries: pd.DataFrame | Sequence[Mapping[str, Any]],
    policy: Any,
    cfg: Any,
    *,
    store: Any | None = None,
    retriever: Any | None = None,
    kind: PromptKind | None = None,
    memory_texts: Mapping[str, str] | None = None,
    num_samples: int = 1,
    seed: int | None = None,
    out_path: Path | None = None,
    progress: bool = True,
) -> tuple[list[Trajectory], list[RewardBreakdown] | None]:
    """Roll out `policy` (a `TokenPolicy` such as `LocalPolicy`, or a `ChatLLM`) on every query, `num_samples` times.

    queries: rows with `qid, query`, plus `user_id, target_timestamp, category` when memory is used and
    `target_item_id` when `retriever` is given. `kind` defaults to `default_prompt_kind(cfg)`; `naive`/`static`
    need `memory_texts[qid]`. Global aspects come from `store.global_context` (if `cfg.global_memory`), the tool
    from `store_tool` (kind `mrrec`). Returns trajectories (query order, samples adjacent) and, with a
    retriever, their rewards (one `ranks()` call per batch).
    """
    kind = kind or default_prompt_kind(cfg)
    uses_store = kind in ("mrrec", "global_only")
    if uses_store and store is None:
        raise ValueError(f"prompt kind {kind!r} needs a MemoryStore (store=...)")
    needed = {"qid", "query"} | ({"user_id", "target_timestamp", "category"} if uses_store else set())
    rows = _records(queries, needed | ({"target_item_id"} if retriever is not None else set()))
    if kind in ("naive", "static"):
        lacking = [r["qid"] for r in rows if not (memory_texts or {}).get(str(r["qid"]), "").strip()]
        if lacking:
            raise KeyError(f"prompt kind {kind!r}: no memory_texts for qid(s) {lacking[:5]}")
    seed = cfg.seed if seed is None else seed
    jobs = [(r, k) for r in rows for k in range(num_samples)]
    done: dict[tuple[str, int], dict[str, Any]] = {}
    if out_path is not None:
        logged = read_jsonl(Path(out_path))
        done = {(str(d["qid"]), int(d.get("sample", 0))): d for d in logged if retriever is None or "reward" in d}

    from mrrec_lib.memory import snapshot_key

    bs = max(1, cfg.rollout_chunk_size if cfg.rollout_engine == "kv" else cfg.rollout_batch_size)
    bar = tqdm(
        total=len(jobs),
        initial=sum(1 for r, k in jobs if (str(r["qid"]), k) in done),
        desc=f"policy ({kind})",
        disable=not progress,
    )
    for b, start in enumerate(range(0, len(jobs), bs)):
        todo = [(r, k) for r, k in jobs[start : start + bs] if (str(r["qid"]), k) not in done]
        if not todo:
            continue
        prompts, tools = [], []
        for r, _ in todo:
            snap = snapshot_key(r["user_id"], r["target_timestamp"]) if uses_store else ""
            aspects = (
                store.global_context(r["query"], r["category"], cfg.global_top_k)
                if uses_store and cfg.global_memory
                else []
            )
            memory_text = (memory_texts or {}).get(str(r["qid"]), "")
            prompts.append(
                build_prompt(kind, r["query"], aspects=aspects, memory_text=memory_text, style=cfg.policy_prompt)
            )
            tools.append(store_tool(store, snap, cfg.memory_top_k) if kind == "mrrec" else None)
        trajs = run_rollouts(
            policy,
            prompts,
            tools,
            cfg,
            qids=[str(r["qid"]) for r, _ in todo],
            samples=[k for _, k in todo],
            seed=seed + 7919 * b,
            progress=False,
        )
        targets = [str(r.get("target_item_id", "")) for r, _ in todo]
        rewards = score_trajectories(trajs, targets, retriever, cfg) if retriever is not None else [None] * len(trajs)
        new_rows = [_row(t, tg, rw) for t, tg, rw in zip(trajs, targets, rewards, strict=True)]
        if out_path is not None:
            append_jsonl(Path(out_path), new_rows)
        done.update({(str(d["qid"]), int(d["sample"])): d for d in new_rows})
        bar.update(len(todo))
    bar.close()

    ordered = [done[(str(r["qid"]), k)] for r, k in jobs]
    trajs_out = [Trajectory.from_dict(d) for d in ordered]
    if retriever is None:
        return trajs_out, None
    return trajs_out, [RewardBreakdown(**d["reward"]) for d in ordered]
