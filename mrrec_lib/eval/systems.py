"""The systems Table 1 compares, and how each one turns a request into the text that is retrieved.

Every system ends in the same place: one text per query, matched against the
same item index (`ItemRetriever`), scored by the rank of the single target. They
differ only in how that text is written and how much memory went into it:

- `query_*`: the request itself, dense (BLaIR's role: no LLM) or BM25;
- `zeroshot_*`: the auxiliary LLM writes an ideal item profile (Rec-R1-style expansion prompt) with no memory,
  the `naive_memory_n` most recent interactions, or the static user profile pasted into the prompt;
- `recr1`, `mrrec_sft`, `mrrec`: trained policies rolled out by the agent (no memory / MR.Rec memory + tool);
- `template_recr1`, `template_mrrec`: reference rows, no LLM: the scripted answers the SFT teachers write
  (`train.sft_data.scripted_rewrite`: request + category; `scripted_conversation`: aspect lookups in the same
  memory store, one clause per lookup). A trained row is worth its training only by what it adds to these.

Runners report what the model wrote (`SystemOutput`: parsed profile and raw final text); which text is
retrieved for an unparseable answer is decided afterwards for both rules (`SystemOutput.retrieval_text`), so
every LLM row follows the same rule and the other rule is reported from the same answers.

A runner is built once per system (loading its model, which may raise `MissingStageError` naming the stage
that should have produced it) and then called on batches of queries.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mrrec_lib.config import Config

if TYPE_CHECKING:
    from mrrec_lib.eval.context import EvalContext


@dataclass(frozen=True)
class SystemSpec:
    """One row family of Table 1: what kind of system, which memory it sees, where its inputs come from."""

    name: str
    kind: str  # "query" | "zeroshot" | "policy" | "template"
    memory: str  # "none" | "naive" | "static" | "mrrec"
    retriever: str = ""  # "dense" | "bm25"; "": the run's item_retriever (what the policies were trained against)
    checkpoint: str = ""  # policy to load (train.checkpoints: sft / grpo / recr1)
    stage: str = "02"  # the last upstream stage whose outputs the system reads (for cache invalidation)


SYSTEMS: dict[str, SystemSpec] = {
    s.name: s
    for s in (
        SystemSpec("query_dense", "query", "none", retriever="dense"),
        SystemSpec("query_bm25", "query", "none", retriever="bm25"),
        SystemSpec("zeroshot_none", "zeroshot", "none"),
        SystemSpec("zeroshot_naive", "zeroshot", "naive"),
        SystemSpec("zeroshot_static", "zeroshot", "static"),
        SystemSpec("recr1", "policy", "none", checkpoint="recr1", stage="04"),
        SystemSpec("mrrec_sft", "policy", "mrrec", checkpoint="sft", stage="03"),
        SystemSpec("mrrec", "policy", "mrrec", checkpoint="grpo", stage="04"),
        SystemSpec("template_recr1", "template", "none", stage="01"),
        SystemSpec("template_mrrec", "template", "mrrec", stage="03"),
    )
}
MALFORMED_RULES = ("zero", "raw_text")


def other_rule(rule: str) -> str:
    """The malformed-answer rule that is not `rule` (reported next to the headline one)."""
    return MALFORMED_RULES[1 - MALFORMED_RULES.index(rule)]


def resolve_systems(names: list[str]) -> list[SystemSpec]:
    """Specs for `names` in order; an unknown name is an error listing the valid ones."""
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown:
        raise ValueError(f"unknown eval system(s) {unknown} in eval_systems; valid: {sorted(SYSTEMS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"eval_systems lists a system twice: {names}")
    return [SYSTEMS[n] for n in names]


# Marks a row whose GRPO early stopping kept its start policy; a figure's short label repeats it (see record_tables).
KEPT_STEP0 = "GRPO kept step 0"


def method_label(spec: SystemSpec, cfg: Config, kept_start: str | None = None) -> str:
    """The Table 1 'system' column: what produced the retrieval text, with the model that did it.

    `kept_start` ("sft" / "base") says GRPO kept its step-0 start policy (stage 04's `best_step` 0): the row is
    then labelled as the policy it really is, never as an RL-trained one.
    """
    if spec.kind == "query":
        return "BM25 (query)" if spec.retriever == "bm25" else f"Dense query ({cfg.encoder_model})"
    if spec.kind == "zeroshot":
        return f"Zero-shot {cfg.llm_model}"
    if spec.kind == "template":
        return {
            "none": "Template: request + category (Rec-R1 SFT teacher, no LLM)",
            "mrrec": "Template: scripted MR.Rec profile (SFT teacher, no LLM)",
        }[spec.memory]
    name = {"recr1": "Rec-R1", "sft": "MR.Rec", "grpo": "MR.Rec"}[spec.checkpoint]
    if kept_start is not None:
        start = "SFT only" if kept_start == "sft" else "untrained"
        return f"{name} ({cfg.policy_model}), {start} — {KEPT_STEP0}"
    return {
        "recr1": f"Rec-R1 ({cfg.policy_model}, GRPO, no memory)",
        "sft": f"MR.Rec w/o RL ({cfg.policy_model}, SFT)",
        "grpo": f"MR.Rec ({cfg.policy_model}, SFT+GRPO)",
    }[spec.checkpoint]


def kept_start_note(label: str) -> str:
    """The "<start> — GRPO kept step 0" part of a `method_label` ("" for a policy GRPO trained): a record keeps only
    the label, so a table built from records learns what the policy really is from it."""
    return label.rsplit(", ", 1)[-1] if label.endswith(KEPT_STEP0) else ""


def memory_label(spec: SystemSpec, cfg: Config) -> str:
    """The Table 1 'memory' column: for MR.Rec rows, the memory the policy was given in this run, so an ablation
    (trained, or applied at test time by `mrrec evaluate`) is never labelled as the full hierarchy."""
    if spec.kind == "template" and spec.memory == "mrrec":
        return "hierarchical, scripted lookups"
    if spec.memory == "mrrec":
        return f"{_mrrec_memory(cfg)} + reasoning"
    return {
        "none": "none",
        "naive": f"naive (recent {cfg.naive_memory_n})",
        "static": "static profile",
    }[spec.memory]


def _mrrec_memory(cfg: Config) -> str:
    full = list(Config.model_fields["memory_levels"].default)
    local = cfg.local_memory and bool(cfg.memory_levels)
    if local and cfg.global_memory and list(cfg.memory_levels) == full:
        return "hierarchical"
    parts = [f"local ({', '.join(cfg.memory_levels)})" if local else "", "global" if cfg.global_memory else ""]
    named = [p for p in parts if p]
    return " + ".join(named) if named else "no memory"


@dataclass
class SystemOutput:
    """What a system produced for one query, before retrieval.

    `profile` is retrieved when the answer is well-formed (for non-LLM rows: the request or the template);
    `final_text` is the answer turn with tool calls removed, retrieved instead under the `raw_text` rule when
    the answer is malformed; `raw` is what the model wrote, for display.
    """

    qid: str
    profile: str
    raw: str = ""
    final_text: str = ""
    malformed: bool = False
    parse_error: str | None = None
    memory_text: str = ""
    memory_tokens: int = 0
    memory_tokens_global: int = 0
    memory_ids: list[str] = field(default_factory=list)
    tool_queries: list[str] = field(default_factory=list)
    tool_calls: int = 0

    def retrieval_text(self, rule: str) -> str | None:
        """The text retrieved under a malformed rule: the profile, else the raw text ("raw_text") or none ("zero")."""
        if rule not in MALFORMED_RULES:
            raise ValueError(f"malformed rule must be one of {MALFORMED_RULES}, got {rule!r}")
        text = (self.final_text if rule == "raw_text" else "") if self.malformed else self.profile
        return text.strip() or None


BatchRunner = Callable[[pd.DataFrame], list[SystemOutput]]
RunnerFactory = Callable[[SystemSpec, "EvalContext"], BatchRunner]


def query_runner(spec: SystemSpec, ctx: EvalContext) -> BatchRunner:
    """The request as-is: no LLM, no memory."""

    def run(batch: pd.DataFrame) -> list[SystemOutput]:
        return [SystemOutput(qid=q, profile=t) for q, t in zip(batch["qid"], batch["query"], strict=True)]

    return run


def zeroshot_runner(spec: SystemSpec, ctx: EvalContext) -> BatchRunner:
    """One chat call per query with the agent's tool-less prompt; memory text pasted in for naive/static."""
    from mrrec_lib.agent.parse import parse_answer, strip_tool_calls
    from mrrec_lib.agent.prompt import build_prompt
    from mrrec_lib.llm import default_sampling

    kind = {"none": "no_memory", "naive": "naive", "static": "static"}[spec.memory]
    memory_of = {"none": lambda row: "", "naive": ctx.naive_memory_text, "static": ctx.static_memory_text}[spec.memory]
    memory_of(ctx.queries.iloc[0].to_dict())  # loads the tables/store it reads before the timed batches
    llm = ctx.llm
    sampling = default_sampling(ctx.cfg, temperature=ctx.cfg.eval_temperature)

    def run(batch: pd.DataFrame) -> list[SystemOutput]:
        rows = batch.to_dict("records")
        memories = [memory_of(r) for r in rows]
        # A user with no usable memory still gets a prompt: the setting falls back to no memory, and says so.
        prompts = [
            build_prompt(kind if m.strip() else "no_memory", r["query"], memory_text=m, style=ctx.cfg.policy_prompt)
            for r, m in zip(rows, memories, strict=True)
        ]
        outs = llm.chat([p.messages for p in prompts], sampling, n=1)
        results = []
        for r, m, out in zip(rows, memories, outs, strict=True):
            raw = (out[0] if out else "") or ""
            ans = parse_answer(raw)
            results.append(
                SystemOutput(
                    qid=r["qid"],
                    profile=ans.profile,
                    raw=raw,
                    final_text=strip_tool_calls(raw),
                    malformed=not ans.ok,
                    parse_error=ans.error,
                    memory_text=m,
                    memory_tokens=ctx.count_tokens(m),
                )
            )
        return results

    return run


def policy_runner(spec: SystemSpec, ctx: EvalContext) -> BatchRunner:
    """Rollouts of a trained policy through the agent's `run_policy_on_queries` (the prompts and tools of training).

    MR.Rec systems use the run's memory setting (`default_prompt_kind`, so ablation runs evaluate what they
    trained); Rec-R1 gets the no-memory rewriting prompt.
    """
    from mrrec_lib.agent.prompt import format_aspects
    from mrrec_lib.agent.run import default_prompt_kind, run_policy_on_queries

    cfg = ctx.cfg
    kind = default_prompt_kind(cfg) if spec.memory == "mrrec" else "no_memory"
    uses_store = kind in ("mrrec", "global_only")
    policy = ctx.policy(spec.checkpoint)
    if uses_store:
        ctx.warm_memory()
    store = ctx.store if uses_store else None
    rollout_cfg = cfg.model_copy(update={"rollout_temperature": cfg.eval_temperature})

    def run(batch: pd.DataFrame) -> list[SystemOutput]:
        trajs, _ = run_policy_on_queries(batch, policy, rollout_cfg, store=store, kind=kind, progress=False)
        rows = batch.to_dict("records")
        results = []
        for r, t in zip(rows, trajs, strict=True):
            local = tool_results(t)
            global_tokens = ctx.count_tokens(format_aspects(ctx.global_aspects(r))) if uses_store else 0
            results.append(
                SystemOutput(
                    qid=t.qid,
                    profile=t.profile,
                    raw=t.messages[-1].get("content", "") if t.messages else "",
                    final_text=t.final_text,
                    malformed=not t.parse_ok,
                    parse_error=t.parse_error,
                    memory_text="\n".join(local),
                    memory_tokens=sum(ctx.count_tokens(x) for x in local) + global_tokens,
                    memory_tokens_global=global_tokens,
                    memory_ids=list(t.retrieved_ids),
                    tool_queries=list(t.tool_queries),
                    tool_calls=t.n_tool_calls,
                )
            )
        return results

    return run


def tool_results(traj) -> list[str]:
    """Texts of the tool messages that answered a successful memory call (error replies are not memory).

    Each call appends one record and at most one tool message, in order, so they pair up positionally.
    """
    msgs = [m.get("content", "") for m in traj.messages if m.get("role") == "tool"]
    return [m for m, c in zip(msgs, traj.tool_calls, strict=False) if c.error is None]


def query_seed(seed: int, qid: str) -> int:
    """A per-query seed: a query's scripted answer does not depend on which other queries share its batch."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{qid}".encode()).digest()[:8], "little")


def template_runner(spec: SystemSpec, ctx: EvalContext) -> BatchRunner:
    """The SFT teachers' scripted answers for each eval query, no LLM (`train.sft_data`).

    `template_recr1`: `scripted_rewrite`, the request and its category. `template_mrrec`: `scripted_conversation`
    on the same memory store, global aspects, `memory_top_k` and `max_tool_calls` the policy uses, with a
    per-query seeded number of lookups; its memory tokens are counted as the policy's are.
    """
    from mrrec_lib.agent.parse import parse_answer
    from mrrec_lib.agent.prompt import format_aspects
    from mrrec_lib.memory import snapshot_key
    from mrrec_lib.memory.store import memory_tool
    from mrrec_lib.train.sft_data import scripted_conversation, scripted_rewrite

    cfg = ctx.cfg
    if spec.memory == "mrrec":
        ctx.warm_memory()

    def scripted(row: dict) -> tuple[list[dict], list[str], int]:
        """(completion messages, retrieved entry ids, global-aspect tokens) of one query."""
        if spec.memory == "none":
            return scripted_rewrite(row), [], 0
        snap = snapshot_key(row["user_id"], int(row["target_timestamp"]))
        seen: list[str] = []

        def search(q: str) -> list[dict]:
            hits = ctx.store.search(snap, q, cfg.memory_top_k)
            seen.extend(str(h["entry_id"]) for h in hits)
            return hits

        aspects = ctx.global_aspects(row)
        tool = memory_tool(ctx.store, snap, cfg.memory_top_k)
        rng = np.random.default_rng(query_seed(cfg.seed, str(row["qid"])))
        messages = scripted_conversation(row, aspects, search, tool, cfg.max_tool_calls, rng)
        return messages, seen, ctx.count_tokens(format_aspects(aspects))

    def run(batch: pd.DataFrame) -> list[SystemOutput]:
        results = []
        for r in batch.to_dict("records"):
            messages, ids, global_tokens = scripted(r)
            final = messages[-1]["content"]
            ans = parse_answer(final)
            tool_texts = [m["content"] for m in messages if m["role"] == "tool"]
            queries = [c["function"]["arguments"]["query"] for m in messages for c in m.get("tool_calls", [])]
            results.append(
                SystemOutput(
                    qid=r["qid"],
                    profile=ans.profile,
                    raw=final,
                    final_text=final,
                    malformed=not ans.ok,
                    parse_error=ans.error,
                    memory_text="\n".join(tool_texts),
                    memory_tokens=sum(ctx.count_tokens(x) for x in tool_texts) + global_tokens,
                    memory_tokens_global=global_tokens,
                    memory_ids=list(dict.fromkeys(ids)),
                    tool_queries=queries,
                    tool_calls=len(queries),
                )
            )
        return results

    return run


RUNNERS: dict[str, RunnerFactory] = {
    "query": query_runner,
    "zeroshot": zeroshot_runner,
    "policy": policy_runner,
    "template": template_runner,
}
