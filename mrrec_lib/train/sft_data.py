"""SFT warm-up data: tool-calling trajectories on train-split queries, filtered by the RL reward.

A 135M model never emits `<tool_call>` on its own, so GRPO would have nothing to
reinforce; a short SFT on trajectories that call the tool and end in a parseable
boxed answer teaches the syntax. Three teachers (cfg.sft_teacher):

- `scripted`: picks aspects from the global memory for the request, calls the
  memory tool with them (1..max_tool_calls calls, a sentence of reasoning before
  each) and writes the profile from the request plus, per call, the clause of
  the top memory entry that speaks to the aspect. It
  never sees the target item: the profile is built only from what the policy
  itself could see, so SFT teaches the procedure, not the answer.
- `rejection`: best of `sft_rejection_samples` rollouts of the policy itself.
- `llm`: best of `sft_rejection_samples` rollouts of the chat backend (cfg.llm_*),
  e.g. a stronger model behind an OpenAI-compatible endpoint.

Every candidate is scored by the exact reward GRPO uses (`make_trl_reward_funcs`
on the TRL message form); it is kept when the answer parses and the reward is
above `sft_reward_threshold`. Records are chat conversations with structured
`tool_calls`, the `tools` schema, and the tool results as `tool` messages.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from mrrec_lib.config import Config
from mrrec_lib.train.environment import TOOL_NAME, tool_schema

FALLBACK_ASPECTS = ("preferred brands", "price range", "quality expectations")


@dataclass
class SFTData:
    records: list[dict[str, Any]]
    report: dict[str, Any] = field(default_factory=dict)


def _aspect_name(a: dict) -> str:
    return str(a.get("aspect") or a.get("text") or "").strip()


_CLAUSE_SPLIT = re.compile(r";\s+|\.\s+")
_STOPWORDS = frozenset({"and", "or", "the", "of", "for", "in", "with", "a", "an"})


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", text.lower()) if w not in _STOPWORDS}


def aspect_clause(text: str, aspect: str, max_words: int = 12) -> str:
    """The clause of a memory entry that speaks to `aspect`, at most `max_words` words, quotes and brackets removed.

    Whole entries (up to 160 chars, cut mid-list) made long, irregular answers that the
    warmed-up 135M policy could not copy to the end: it looped and never closed the
    boxed answer. One short clause per call (e.g. "flavor and scent garlic, spicy,
    orange") keeps the profile's keywords and gives the answer a regular shape.
    A clause's "label: values" form also competes without its label, so the shorter
    one wins when both name the aspect; with no clause naming it, the first is used.
    """
    clean = " ".join(re.sub(r'["()\[\]]|\.\.\.', " ", str(text)).split()).replace(" :", ":")
    clauses = [c.strip(" ,;:.") for c in _CLAUSE_SPLIT.split(clean) if c.strip(" ,;:.")]
    if not clauses:
        return ""
    candidates = clauses + [c.split(": ", 1)[1] for c in clauses if ": " in c]
    target = _words(aspect)
    best = max(candidates, key=lambda c: (len(target & _words(c)), -len(c)))
    if not target & _words(best):
        best = clauses[0]
    return " ".join(best.split()[:max_words]).strip(" ,;:.")


def scripted_conversation(
    row: dict[str, Any],
    aspects: list[dict],
    search: Callable[[str], list[dict]],
    tool: Callable[[str], str],
    max_calls: int,
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    """The completion messages of one scripted trajectory (assistant/tool turns, final boxed answer).

    `search(q)` gives the structured hits behind `tool(q)`'s text (same store, same k),
    so the answer can cite entry ids; only the request, the aspects and the
    retrieved memory are used, never the target item.
    """
    query, category = str(row["query"]).strip(), str(row.get("category", "")).strip()
    names = list(dict.fromkeys(n for n in (_aspect_name(a) for a in aspects) if n))
    if not names:
        names = list(FALLBACK_ASPECTS)
    n_calls = int(rng.integers(1, max(1, max_calls) + 1))
    pool = names[: max(n_calls, min(len(names), 4))]
    chosen = list(rng.choice(pool, size=min(n_calls, len(pool)), replace=False))
    messages: list[dict[str, Any]] = []
    used_ids: list[str] = []
    found: list[str] = []
    for aspect in chosen:
        # One fixed sentence naming the aspect, and the aspect itself as the query: a 135M model learns a
        # constant lead-in followed by `<tool_call>` within a few dozen steps, while free text echoing the
        # request drifted into copying the prompt and an "aspect + category" query ran on (docs/results.md, SFT).
        tool_query = aspect.lower()
        thought = f"I look up what this user prefers for {tool_query}."
        messages.append(
            {
                "role": "assistant",
                "content": thought,
                "tool_calls": [
                    {"type": "function", "function": {"name": TOOL_NAME, "arguments": {"query": tool_query}}}
                ],
            }
        )
        messages.append({"role": "tool", "name": TOOL_NAME, "content": tool(tool_query)})
        for hit in search(tool_query)[:1]:
            clause = aspect_clause(hit.get("text", ""), tool_query)
            if hit["entry_id"] not in used_ids and clause and clause not in found:
                used_ids.append(str(hit["entry_id"]))
                found.append(clause)
    parts = [query.rstrip(".") + "."]
    if category:
        parts.append(f"Category: {category}.")
    if found:
        # One lead-in for all entries: a prefix repeated per entry taught greedy decoding to loop on it
        # and never close the answer (docs/results.md, SFT).
        parts.append("This user's preferences: " + "; ".join(t.rstrip(".") for t in found) + ".")
    profile = " ".join(parts)
    summary = (
        "The memory shows what this user values; I combine it with the request."
        if found
        else "Memory has nothing specific for this, so I describe the item from the request itself."
    )
    answer = json.dumps({"ideal_item_profile": profile, "useful_memory_ids": used_ids}, ensure_ascii=False)
    messages.append({"role": "assistant", "content": f"{summary}\n\\boxed{answer}"})
    return messages


def scripted_rewrite(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The one-turn trajectory of the no-memory setting (Rec-R1): the profile restates the request and category.

    It teaches only the answer format; what the rewrite should add is left to GRPO, as in Rec-R1.
    """
    query, category = str(row["query"]).strip().rstrip("."), str(row.get("category", "")).strip()
    profile = f"{query}." + (f" Category: {category}." if category else "")
    answer = json.dumps({"ideal_item_profile": profile}, ensure_ascii=False)
    return [{"role": "assistant", "content": f"I describe the ideal item from the request.\n\\boxed{answer}"}]


def score_completions(
    reward_funcs: Sequence[Callable[..., list[float]]], prompts: list, completions: list, rows: list[dict]
) -> list[float]:
    """The GRPO reward of finished conversations: the sum of TRL reward functions, given the dataset columns."""
    columns = {k: [r.get(k) for r in rows] for k in ("target_item_id", "qid", "snapshot", "category", "query")}
    totals = np.zeros(len(completions))
    for f in reward_funcs:
        totals += np.asarray(f(prompts=prompts, completions=completions, **columns), dtype=float)
    return totals.tolist()


def _record(
    row: dict, prompt: list[dict], completion: list[dict], reward: float, teacher: str, with_tool: bool
) -> dict[str, Any]:
    return {
        "qid": str(row["qid"]),
        "teacher": teacher,
        "reward": float(reward),
        "n_tool_calls": sum(1 for m in completion if m["role"] == "tool"),
        "messages": prompt + completion,
        "tools": json.dumps([tool_schema()] if with_tool else []),
    }


def _filter(candidates: list[tuple[dict, list[dict], list[dict], float]], cfg: Config, teacher: str) -> SFTData:
    from mrrec_lib.agent.parse import parse_answer

    kept, bad_parse, low_reward = [], 0, 0
    for row, prompt, completion, reward in candidates:
        final = completion[-1] if completion and completion[-1]["role"] == "assistant" else None
        if final is None or not parse_answer(final.get("content") or "").ok:
            bad_parse += 1
        elif not reward > cfg.sft_reward_threshold:
            low_reward += 1
        else:
            kept.append(_record(row, prompt, completion, reward, teacher, cfg.policy_uses_memory))
    rewards = [r["reward"] for r in kept]
    report = {
        "teacher": teacher,
        "candidates": len(candidates),
        "kept": len(kept),
        "dropped_unparseable": bad_parse,
        "dropped_low_reward": low_reward,
        "reward_threshold": cfg.sft_reward_threshold,
        "kept_reward_mean": float(np.mean(rewards)) if rewards else float("nan"),
        "kept_tool_calls_mean": float(np.mean([r["n_tool_calls"] for r in kept])) if kept else float("nan"),
    }
    return SFTData(kept, report)


def scripted_data(
    cfg: Config, queries: pd.DataFrame, store: Any, reward_funcs: Sequence[Callable], progress: bool = True
) -> SFTData:
    from mrrec_lib.agent.prompt import build_messages
    from mrrec_lib.memory import snapshot_key
    from mrrec_lib.memory.store import memory_tool

    rng = np.random.default_rng(cfg.seed)
    use_memory = cfg.policy_uses_memory  # the setting GRPO trains in: the warm-up teaches that format
    with_aspects = use_memory and cfg.global_memory
    rows, prompts, completions = [], [], []
    for row in tqdm(queries.to_dict("records"), desc="scripted SFT trajectories", disable=not progress):
        snap = snapshot_key(row["user_id"], row["target_timestamp"])
        aspects = store.global_context(row["query"], row["category"], cfg.global_top_k) if with_aspects else []
        if use_memory:
            completion = scripted_conversation(
                row,
                aspects,
                lambda q, s=snap: store.search(s, q, cfg.memory_top_k),
                memory_tool(store, snap, cfg.memory_top_k),
                cfg.max_tool_calls,
                rng,
            )
        else:
            completion = scripted_rewrite(row)
        rows.append(row)
        prompts.append(build_messages(row["query"], aspects, use_memory, cfg.policy_prompt))
        completions.append(completion)
    rewards = score_completions(reward_funcs, prompts, completions, rows)
    return _filter(list(zip(rows, prompts, completions, rewards, strict=True)), cfg, "scripted")


def best_of_n_data(
    cfg: Config, queries: pd.DataFrame, policy: Any, store: Any, retriever: Any, teacher: str, out_path=None
) -> SFTData:
    """Roll out `policy` (a local TokenPolicy or a ChatLLM) n times per query; keep each query's best rollout."""
    from mrrec_lib.agent.prompt import policy_prompt_kind, structured_messages
    from mrrec_lib.agent.run import run_policy_on_queries

    n = max(1, cfg.sft_rejection_samples)
    kind = policy_prompt_kind(cfg.policy_uses_memory)
    trajs, rewards = run_policy_on_queries(
        queries, policy, cfg, store=store, retriever=retriever, kind=kind, num_samples=n, out_path=out_path
    )
    by_qid = {str(r["qid"]): r for r in queries.to_dict("records")}
    best: dict[str, tuple[Any, Any]] = {}
    for t, r in zip(trajs, rewards or [], strict=True):
        if t.qid not in best or (t.parse_ok, r.total) > (best[t.qid][0].parse_ok, best[t.qid][1].total):
            best[t.qid] = (t, r)
    candidates = []
    for qid, (t, r) in best.items():
        msgs = structured_messages(t.messages)
        n_prompt = next(i for i, m in enumerate(msgs) if m["role"] == "user") + 1
        candidates.append((by_qid[qid], msgs[:n_prompt], msgs[n_prompt:], r.total))
    data = _filter(candidates, cfg, teacher)
    data.report["rollouts"] = len(trajs)
    data.report["rollout_format_rate"] = float(np.mean([t.parse_ok for t in trajs])) if trajs else float("nan")
    data.report["rollout_tool_call_rate"] = (
        float(np.mean([t.n_tool_calls > 0 for t in trajs])) if trajs else float("nan")
    )
    return data


def build_sft_data(cfg: Config, paths: Any, progress: bool = True) -> SFTData:
    """Stage 03 data from the run folder: train-split queries only, the configured teacher, filtered and reported."""
    from mrrec_lib.data.schema import read_table
    from mrrec_lib.memory.store import MemoryStore
    from mrrec_lib.retrieval.items import ItemRetriever
    from mrrec_lib.train.rewards import make_trl_reward_funcs

    queries = read_table(paths.data, "queries")
    train_q = queries[queries["split"] == "train"]
    if train_q.empty:
        raise ValueError(f"{paths.data / 'queries.parquet'}: no train-split queries to build SFT data from")
    store = MemoryStore.load(cfg, paths)
    retriever = ItemRetriever.from_run(cfg, paths)
    if cfg.sft_teacher == "scripted":
        data = scripted_data(cfg, train_q, store, make_trl_reward_funcs(retriever, cfg), progress)
    elif cfg.sft_teacher == "rejection":
        from mrrec_lib.agent.policy import LocalPolicy

        policy = LocalPolicy.from_config(cfg)
        data = best_of_n_data(cfg, train_q, policy, store, retriever, "rejection", paths.logs / "03_sft_rollouts.jsonl")
    else:
        from mrrec_lib.llm import make_llm

        data = best_of_n_data(
            cfg, train_q, make_llm(cfg), store, retriever, "llm", paths.logs / "03_sft_rollouts.jsonl"
        )
    data.report["train_queries"] = len(train_q)
    return data


def save_sft_data(path: Any, data: SFTData) -> None:
    """The kept conversations as JSONL (one record per line), written atomically."""
    from mrrec_lib.runs import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data.records))


def render_conversation(messages: list[dict[str, Any]]) -> str:
    """A readable transcript of one conversation, tool calls shown as calls."""
    lines = []
    for m in messages:
        text = str(m.get("content") or "").strip()
        for call in m.get("tool_calls") or []:
            fn = call.get("function", call)
            text += f"\n  -> {fn.get('name')}({json.dumps(fn.get('arguments'), ensure_ascii=False)})"
        lines.append(f"[{m['role']}] {text.strip()}")
    return "\n".join(lines)
