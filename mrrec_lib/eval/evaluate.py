"""Run every requested system on the evaluation queries and score them on the same item index.

`evaluate_systems(cfg, paths)` is the library entry point of stage 05, and stage
06 reuses it on ablation run folders. Per system, per-query results are appended
to `logs/05_eval/<system>-<fingerprint>.jsonl` batch by batch: a crashed or
interrupted evaluation resumes where it stopped, and a rerun with unchanged
inputs does no work. The fingerprint covers the config keys and the input files
(data, memory, checkpoint) the system reads, so retraining a policy or
rebuilding memory never reuses stale results.

A system whose inputs are missing (an upstream stage that did not run, e.g. no
Rec-R1 checkpoint) is not dropped: it is listed in `EvalResult.missing` with the
reason, and the tables show it as "not run".
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from mrrec_lib import stages
from mrrec_lib.config import Config
from mrrec_lib.eval.context import EvalContext
from mrrec_lib.eval.systems import RUNNERS, RunnerFactory, SystemOutput, SystemSpec, resolve_systems
from mrrec_lib.runs import MissingStageError, RunPaths, append_jsonl, atomic_write_text, file_stamps, read_jsonl

log = logging.getLogger(__name__)

TOP_ITEMS = 10  # item ids kept per query for case studies and overlap analyses
# Config keys of stage 05 that change what a system outputs (the rest only change how results are summarised).
OUTPUT_KEYS = ("eval_temperature", "eval_baseline_malformed", "naive_memory_n")
QUERY_COLUMNS = ("qid", "user_id", "category", "query", "target_item_id", "target_timestamp")


@dataclass
class EvalResult:
    """Per-query results of every system that ran, and why the others did not."""

    cfg: Config
    systems: list[SystemSpec]
    queries: pd.DataFrame
    per_query: pd.DataFrame  # one row per (system, qid): rank, metric columns, latency, memory tokens, texts
    missing: dict[str, str] = field(default_factory=dict)
    reused: dict[str, str] = field(default_factory=dict)  # system -> the system whose identical policy it shares

    @property
    def evaluated(self) -> list[str]:
        return [s.name for s in self.systems if s.name not in self.missing]

    def metric_names(self) -> list[str]:
        return metric_names(self.cfg.eval_ks)

    def system_rows(self, name: str) -> pd.DataFrame:
        return self.per_query[self.per_query["system"] == name]


def metric_names(ks: list[int]) -> list[str]:
    return [f"R@{k}" for k in ks] + [f"N@{k}" for k in ks]


def system_fingerprint(spec: SystemSpec, ctx: EvalContext) -> str:
    """Identity of a system's outputs: its upstream stage hash, output-relevant eval keys, and input files.

    An absent checkpoint simply stamps as absent: its runner then fails naming the stage (`EvalContext.policy`).
    """
    cfg, paths = ctx.cfg, ctx.paths
    files = list(paths.data.glob("*.parquet"))
    if spec.memory in ("static", "mrrec"):
        files += [p for p in paths.memory.rglob("*") if p.is_file()]
    stamps = file_stamps(files, paths.root)
    if spec.checkpoint:
        from mrrec_lib.train.checkpoints import final_dir

        d = final_dir(ctx.policy_paths(spec.checkpoint), spec.checkpoint)
        stamps += file_stamps([p for p in d.rglob("*") if p.is_file()], d.parent) if d.is_dir() else ["no-checkpoint"]
    ident = {
        "system": asdict(spec),
        "retriever": ctx.retriever_kind(spec.retriever),
        "stage_hash": stages.stage_hash(cfg, spec.stage),
        "eval": {k: getattr(cfg, k) for k in OUTPUT_KEYS},
        "inputs": stamps,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]


def cache_path(paths: RunPaths, spec: SystemSpec, fingerprint: str) -> Path:
    return paths.logs / "05_eval" / f"{spec.name}-{fingerprint}.jsonl"


def retrieve(retriever, texts: list[str | None], targets: list[str]) -> tuple[list[int | None], list[list[str]]]:
    """Exact target ranks and the top items for the retrievable texts; None/[] where there is nothing to retrieve."""
    ranks: list[int | None] = [None] * len(texts)
    tops: list[list[str]] = [[] for _ in texts]
    idx = [i for i, t in enumerate(texts) if t]
    if idx:
        batch = [texts[i] for i in idx]
        got = retriever.ranks(batch, [targets[i] for i in idx])
        ids, _ = retriever.search(batch, TOP_ITEMS)
        for j, i in enumerate(idx):
            ranks[i] = int(got[j])
            tops[i] = [str(x) for x in ids[j]]
    return ranks, tops


def _result_row(spec: SystemSpec, out: SystemOutput, rank: int | None, top: list[str], latency: float) -> dict:
    row = asdict(out)
    row.update(system=spec.name, rank=rank, top_items=top, latency_s=latency)
    return row


def run_system(
    spec: SystemSpec,
    ctx: EvalContext,
    queries: pd.DataFrame,
    factory: RunnerFactory,
    progress: bool = True,
) -> list[dict]:
    """Per-query result rows of one system, computing only the queries not already in its cache file."""
    cache = cache_path(ctx.paths, spec, system_fingerprint(spec, ctx))
    done = {str(r["qid"]): r for r in read_jsonl(cache)}
    if cache.exists() and not cache.read_bytes().endswith(b"\n"):
        # A torn last line (killed mid-write) would swallow the next appended row: keep only complete rows.
        atomic_write_text(cache, "".join(json.dumps(r) + "\n" for r in done.values()))
    todo = queries[~queries["qid"].astype(str).isin(done)]
    if len(todo):
        runner = factory(spec, ctx)
        retriever = ctx.retriever(ctx.retriever_kind(spec.retriever))
        bs = {"query": 256, "zeroshot": ctx.cfg.llm_batch_size, "policy": ctx.cfg.rollout_batch_size}.get(spec.kind, 8)
        bar = tqdm(total=len(queries), initial=len(queries) - len(todo), desc=spec.name, disable=not progress)
        for start in range(0, len(todo), max(1, bs)):
            batch = todo.iloc[start : start + bs]
            t0 = time.perf_counter()
            outs = runner(batch)
            if [o.qid for o in outs] != batch["qid"].astype(str).tolist():
                raise RuntimeError(f"system {spec.name}: runner returned outputs for other queries than it was given")
            ranks, tops = retrieve(retriever, [o.text for o in outs], batch["target_item_id"].astype(str).tolist())
            latency = (time.perf_counter() - t0) / len(batch)
            rows = [_result_row(spec, o, r, t, latency) for o, r, t in zip(outs, ranks, tops, strict=True)]
            append_jsonl(cache, rows)
            done.update({str(r["qid"]): r for r in rows})
            bar.update(len(batch))
        bar.close()
        if spec.checkpoint:
            ctx.release(spec.checkpoint)
    return [done[str(q)] for q in queries["qid"]]


def per_query_frame(rows: list[dict], queries: pd.DataFrame, ks: list[int]) -> pd.DataFrame:
    """Result rows joined with their queries, with per-query Recall/nDCG at every k (rank inf: not retrieved)."""
    from mrrec_lib.eval.metrics import ndcg_at_k, recall_at_k

    if not rows:
        return pd.DataFrame(columns=["system", *QUERY_COLUMNS, "rank", *metric_names(ks)])
    df = pd.DataFrame(rows)
    df["qid"] = df["qid"].astype(str)
    q = queries[list(QUERY_COLUMNS)].assign(qid=queries["qid"].astype(str))
    df = df.merge(q, on="qid", how="left", validate="many_to_one")
    df["rank"] = pd.to_numeric(df["rank"], errors="coerce").astype(float).fillna(np.inf)
    # "" (not None/NaN) marks "nothing was retrieved" and "parsed fine", so string columns stay strings in parquet.
    df[["text", "parse_error"]] = df[["text", "parse_error"]].fillna("").astype(str)
    ranks = df["rank"].to_numpy()
    for k in ks:
        df[f"R@{k}"] = np.asarray(recall_at_k(ranks, k), dtype=float)
    for k in ks:
        df[f"N@{k}"] = np.asarray(ndcg_at_k(ranks, k), dtype=float)
    front = ["system", *QUERY_COLUMNS, "rank", *metric_names(ks), "latency_s", "memory_tokens", "malformed"]
    return df[front + [c for c in df.columns if c not in front]]


def unchanged_policy(spec: SystemSpec, ctx: EvalContext) -> str | None:
    """The system whose policy `spec` loads unchanged: MR.Rec when GRPO kept its start (SFT) checkpoint.

    Stage 04 publishes step 0 when no validation beat it; its adapter is then the fresh zero-initialised
    LoRA, so the merged weights equal the SFT policy's and greedy decoding would repeat that system's
    answers token for token at ~14 s per request on 2 CPU cores.
    """
    from mrrec_lib.train.checkpoints import POLICY_META, final_dir, read_policy_meta

    if spec.checkpoint != "grpo":
        return None
    d = final_dir(ctx.policy_paths("grpo"), "grpo")
    if not (d / POLICY_META).exists():
        return None
    meta = read_policy_meta(d)
    return "mrrec_sft" if meta.get("best_step") == 0 and meta.get("base") == {"which": "sft"} else None


def evaluate_systems(
    cfg: Config,
    paths: RunPaths,
    systems: list[str] | None = None,
    *,
    context: EvalContext | None = None,
    runners: dict[str, RunnerFactory] | None = None,
    progress: bool = True,
) -> EvalResult:
    """Evaluate `systems` (default `cfg.eval_systems`) on the `cfg.eval_split` queries of the run at `paths`.

    `context` and `runners` (by system kind or name) are injection points for tests and for callers who
    bring their own resources; by default everything is loaded from the run folder.
    """
    specs = resolve_systems(list(systems if systems is not None else cfg.eval_systems))
    ctx = context or EvalContext(cfg, paths)
    queries = ctx.queries
    factories = {**RUNNERS, **(runners or {})}
    rows: dict[str, list[dict]] = {}
    missing: dict[str, str] = {}
    reused: dict[str, str] = {}
    for spec in specs:
        same = unchanged_policy(spec, ctx)
        if same in rows:
            rows[spec.name] = [{**r, "system": spec.name} for r in rows[same]]
            reused[spec.name] = same
            log.info("system %s: same policy as %s (GRPO kept step 0), its answers reused", spec.name, same)
            continue
        factory = factories.get(spec.name) or factories[spec.kind]
        try:
            rows[spec.name] = run_system(spec, ctx, queries, factory, progress=progress)
        except MissingStageError as e:
            missing[spec.name] = str(e)
            log.warning("system %s not run: %s", spec.name, e)
    frame = per_query_frame([r for rs in rows.values() for r in rs], queries, cfg.eval_ks)
    return EvalResult(cfg, specs, queries, frame, missing, reused)
