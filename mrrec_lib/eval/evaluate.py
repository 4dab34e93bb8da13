"""Run every requested system on the evaluation queries and score them on the same item index.

`evaluate_systems(cfg, paths)` is the library entry point of stage 05, and stage
06 reuses it on ablation run folders. Per system, per-query results are appended
to `logs/05_eval/<system>-<fingerprint>.jsonl` batch by batch: a crashed or
interrupted evaluation resumes where it stopped, and a rerun with unchanged
inputs does no work. The fingerprint covers the config keys and the input files
(data, memory, checkpoint) the system reads, so retraining a policy or
rebuilding memory never reuses stale results. For the same reason a run takes
the rows another run in the same outputs folder saved under the same name
(`adopt_sibling_rows`, listed in `EvalResult.adopted`): `mrrec evaluate` on a
trained run's policies, or a second run of the zero-shot rows, does not decode
answers that already exist.

A system whose inputs are missing (an upstream stage that did not run, e.g. no
Rec-R1 checkpoint) is not dropped: it is listed in `EvalResult.missing` with the
reason, and the tables show it as "not run".

Every answer is ranked in all four evaluation settings at once: both malformed
rules (`eval_malformed` and the other one) times the user's earlier items kept in
or excluded from the ranking (`eval_exclude_history`). The cache therefore does
not depend on either key; the per-query frame maps the settings to `rank`
(the headline), `rank_keep` / `rank_excl` and `rank_keep_alt` / `rank_excl_alt`.
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
from mrrec_lib.eval.history import excluded_ranks
from mrrec_lib.eval.systems import (
    MALFORMED_RULES,
    RUNNERS,
    RunnerFactory,
    SystemOutput,
    SystemSpec,
    method_label,
    other_rule,
    resolve_systems,
)
from mrrec_lib.runs import MissingStageError, RunPaths, append_jsonl, atomic_write_text, file_digests, read_jsonl

log = logging.getLogger(__name__)

TOP_ITEMS = 10  # item ids kept per query for case studies and overlap analyses
# Config keys that change what a system outputs beyond its stage hash: stage 05's decoding keys (the rest of stage 05
# only changes how results are summarised; eval_malformed and eval_exclude_history are not here because every cached
# row holds all four settings) and policy_prompt, the instruction text of the zero-shot rows (stage 02). Hash-neutral
# keys are left out at their neutral value (`stages.hashed_keys`), so caches written before they existed stay valid.
OUTPUT_KEYS = ("eval_temperature", "naive_memory_n", "policy_prompt")
ROW_VERSION = 2  # layout of a cached row; bumping it stops older cache files from being read
QUERY_COLUMNS = ("qid", "user_id", "category", "query", "target_item_id", "target_timestamp")
OPTIONAL_QUERY_COLUMNS = ("title_overlap",)  # joined when the queries table has them
RANK_COLUMNS = ("rank", "rank_keep", "rank_excl", "rank_keep_alt", "rank_excl_alt")


@dataclass
class EvalResult:
    """Per-query results of every system that ran, and why the others did not."""

    cfg: Config
    systems: list[SystemSpec]
    queries: pd.DataFrame
    per_query: pd.DataFrame  # one row per (system, qid): rank, metric columns, latency, memory tokens, texts
    missing: dict[str, str] = field(default_factory=dict)
    reused: dict[str, str] = field(default_factory=dict)  # system -> the system whose identical policy it shares
    adopted: dict[str, dict[str, int]] = field(default_factory=dict)  # system -> {run: rows taken from its cache}
    labels: dict[str, str] = field(default_factory=dict)  # system -> Table 1 label (what the row really is)
    covered_categories: list[str] = field(default_factory=list)  # categories the distractor catalogs add items to

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

    Input files count by content, not by mtime: a later session that rebuilds bit-identical data, memory and
    policies (same code, seeds and threads) finds the rows an earlier one saved (`results.partial`), while any
    changed byte starts the system afresh. An absent checkpoint simply stamps as absent: its runner then fails
    naming the stage (`EvalContext.policy`).
    """
    cfg, paths = ctx.cfg, ctx.paths
    files = list(paths.data.glob("*.parquet"))
    if spec.memory in ("static", "mrrec"):
        files += paths.memory_files()
    stamps = file_digests(files, paths.root)
    if spec.checkpoint:
        from mrrec_lib.train.checkpoints import final_dir, policy_digest

        stamps += policy_digest(final_dir(ctx.policy_paths(spec.checkpoint), spec.checkpoint))
    ident = {
        "system": asdict(spec),
        "retriever": ctx.retriever_kind(spec.retriever),
        "stage_hash": stages.stage_hash(cfg, spec.stage),
        "eval": {k: getattr(cfg, k) for k in stages.hashed_keys(cfg, OUTPUT_KEYS)},
        "rows": ROW_VERSION,
        "inputs": stamps,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]


def cache_path(paths: RunPaths, spec: SystemSpec, fingerprint: str) -> Path:
    return paths.logs / "05_eval" / f"{spec.name}-{fingerprint}.jsonl"


def retrieve(
    retriever, texts: list[str | None], targets: list[str], history: list[list[str]]
) -> list[dict[str, object]]:
    """Per text: the target's exact rank with the user's earlier items kept and excluded, and the top items of both.

    None/[] where there is no text (nothing retrieved: scored 0). The excluded top list skips earlier items.
    """
    out: list[dict[str, object]] = [
        {"rank_keep": None, "rank_excl": None, "top_keep": [], "top_excl": []} for _ in texts
    ]
    idx = [i for i, t in enumerate(texts) if t]
    if not idx:
        return out
    batch, tgt, hist = [texts[i] for i in idx], [targets[i] for i in idx], [history[i] for i in idx]
    keep = retriever.ranks(batch, tgt)
    excl = excluded_ranks(retriever, batch, tgt, keep, hist)
    ids, _ = retriever.search(batch, TOP_ITEMS + max(len(h) for h in hist))
    for j, i in enumerate(idx):
        found = [str(x) for x in ids[j]]
        earlier = set(hist[j])
        out[i] = {
            "rank_keep": int(keep[j]),
            "rank_excl": int(excl[j]),
            "top_keep": found[:TOP_ITEMS],
            "top_excl": [x for x in found if x not in earlier][:TOP_ITEMS],
        }
    return out


def retrieve_rules(
    retriever, outs: list[SystemOutput], targets: list[str], history: list[list[str]]
) -> tuple[list[dict[str, object]], float]:
    """`retrieve` under both malformed rules, as flat `<field>_<rule>` columns; a text both rules share is ranked once.

    Also returns the seconds the first rule's retrieval took: what serving one answer costs (the second rule's
    pass is evaluation bookkeeping, not latency).
    """
    texts = {rule: [o.retrieval_text(rule) for o in outs] for rule in MALFORMED_RULES}
    first, second = MALFORMED_RULES
    t0 = time.perf_counter()
    got = {first: retrieve(retriever, texts[first], targets, history)}
    seconds = time.perf_counter() - t0
    differ = [i for i, (a, b) in enumerate(zip(texts[first], texts[second], strict=True)) if a != b]
    extra = retrieve(
        retriever, [texts[second][i] for i in differ], [targets[i] for i in differ], [history[i] for i in differ]
    )
    got[second] = list(got[first])
    for i, r in zip(differ, extra, strict=True):
        got[second][i] = r
    rows: list[dict[str, object]] = [{} for _ in outs]
    for rule in MALFORMED_RULES:
        for row, text, r in zip(rows, texts[rule], got[rule], strict=True):
            row[f"text_{rule}"] = text or ""
            row.update({f"{k}_{rule}": v for k, v in r.items()})
    return rows, seconds


def _result_row(spec: SystemSpec, out: SystemOutput, ranked: dict, n_history: int, latency: float) -> dict:
    return {**asdict(out), **ranked, "system": spec.name, "n_history": n_history, "latency_s": latency}


def adopt_sibling_rows(cache: Path, done: dict[str, dict], wanted: set[str]) -> dict[str, int]:
    """Take into `cache` the wanted rows that runs beside this one saved under the same cache name.

    The name carries `system_fingerprint`, which covers everything a row depends on (data, memory and policy by
    content, the stage hash, the output-relevant eval keys), so such a row is the answer this run would compute:
    `mrrec evaluate` on a trained run's policies, or an 801-request run after a 320-request one (the request
    count is not part of the fingerprint), takes them instead of decoding them again.
    Returns {run: rows taken}, so the caller can say where they came from.
    """
    run_root = cache.parents[2]
    taken: dict[str, int] = {}
    for other in sorted(run_root.parent.glob(f"*/logs/05_eval/{cache.name}")):
        if other.parents[2] == run_root:
            continue
        rows = [r for r in read_jsonl(other) if str(r["qid"]) in wanted and str(r["qid"]) not in done]
        if rows:
            append_jsonl(cache, rows)
            done.update({str(r["qid"]): r for r in rows})
            taken[other.parents[2].name] = len(rows)
    return taken


def run_system(
    spec: SystemSpec,
    ctx: EvalContext,
    queries: pd.DataFrame,
    factory: RunnerFactory,
    progress: bool = True,
    adopted: dict[str, int] | None = None,
) -> list[dict]:
    """Per-query result rows of one system, computing only the queries not already in its cache file.

    Rows another run computed under the same fingerprint are taken first (`adopt_sibling_rows`); `adopted`, if
    given, receives {run: rows taken}.
    """
    cache = cache_path(ctx.paths, spec, system_fingerprint(spec, ctx))
    done = {str(r["qid"]): r for r in read_jsonl(cache)}
    if cache.exists() and not cache.read_bytes().endswith(b"\n"):
        # A torn last line (killed mid-write) would swallow the next appended row: keep only complete rows.
        atomic_write_text(cache, "".join(json.dumps(r) + "\n" for r in done.values()))
    taken = adopt_sibling_rows(cache, done, set(queries["qid"].astype(str)))
    if adopted is not None:
        adopted.update(taken)
    todo = queries[~queries["qid"].astype(str).isin(done)]
    if len(todo):
        runner = factory(spec, ctx)
        retriever = ctx.retriever(ctx.retriever_kind(spec.retriever))
        bs = {
            "query": 256,
            "template": 64,
            "zeroshot": ctx.cfg.llm_batch_size,
            "policy": ctx.cfg.rollout_batch_size,
        }.get(spec.kind, 8)
        bar = tqdm(total=len(queries), initial=len(queries) - len(todo), desc=spec.name, disable=not progress)
        for start in range(0, len(todo), max(1, bs)):
            batch = todo.iloc[start : start + bs]
            history = [ctx.history[str(q)] for q in batch["qid"]]
            t0 = time.perf_counter()
            outs = runner(batch)
            generation = time.perf_counter() - t0
            if [o.qid for o in outs] != batch["qid"].astype(str).tolist():
                raise RuntimeError(f"system {spec.name}: runner returned outputs for other queries than it was given")
            ranked, retrieval = retrieve_rules(retriever, outs, batch["target_item_id"].astype(str).tolist(), history)
            latency = (generation + retrieval) / len(batch)
            rows = [_result_row(spec, o, r, len(h), latency) for o, r, h in zip(outs, ranked, history, strict=True)]
            append_jsonl(cache, rows)
            done.update({str(r["qid"]): r for r in rows})
            bar.update(len(batch))
        bar.close()
        if spec.checkpoint:
            ctx.release(spec.checkpoint)
    return [done[str(q)] for q in queries["qid"]]


def _ranks(df: pd.DataFrame, column: str) -> pd.Series:
    return pd.to_numeric(df[column], errors="coerce").astype(float).fillna(np.inf)


def per_query_frame(rows: list[dict], queries: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """Result rows joined with their queries: the four settings' ranks and per-query Recall/nDCG of the headline.

    Settings (rank inf: nothing retrieved): `rank_keep` / `rank_excl` under `eval_malformed`, `*_alt` under the
    other rule; `rank` / `top_items` / `text` are the headline (`eval_exclude_history` picks keep or excl).
    """
    from mrrec_lib.eval.metrics import metrics_from_ranks

    ks = cfg.eval_ks
    optional = [c for c in OPTIONAL_QUERY_COLUMNS if c in queries.columns]
    if not rows:
        return pd.DataFrame(columns=["system", *QUERY_COLUMNS, *optional, *RANK_COLUMNS, *metric_names(ks)])
    df = pd.DataFrame(rows)
    df["qid"] = df["qid"].astype(str)
    q = queries[[*QUERY_COLUMNS, *optional]].assign(qid=queries["qid"].astype(str))
    df = df.merge(q, on="qid", how="left", validate="many_to_one")
    hist = "excl" if cfg.eval_exclude_history else "keep"
    rule, alt = cfg.eval_malformed, other_rule(cfg.eval_malformed)
    for h in ("keep", "excl"):
        df[f"rank_{h}"] = _ranks(df, f"rank_{h}_{rule}")
        df[f"rank_{h}_alt"] = _ranks(df, f"rank_{h}_{alt}")
    df["rank"] = df[f"rank_{hist}"]
    df["top_items"] = df[f"top_{hist}_{rule}"]
    # "" (not None/NaN) marks "nothing was retrieved" and "parsed fine", so string columns stay strings in parquet.
    df["text"], df["text_alt"] = df[f"text_{rule}"], df[f"text_{alt}"]
    df[["text", "text_alt", "parse_error"]] = df[["text", "text_alt", "parse_error"]].fillna("").astype(str)
    for name, values in metrics_from_ranks(df["rank"].to_numpy(), ks).items():
        df[name] = values
    per_rule = [f"{f}_{r}" for r in MALFORMED_RULES for f in ("text", "rank_keep", "rank_excl", "top_keep", "top_excl")]
    front = [
        "system",
        *QUERY_COLUMNS,
        *optional,
        *RANK_COLUMNS,
        *metric_names(ks),
        "latency_s",
        "memory_tokens",
        "malformed",
    ]
    df = df.drop(columns=per_rule)
    return df[front + [c for c in df.columns if c not in front]]


def kept_start(spec: SystemSpec, ctx: EvalContext) -> str | None:
    """The start ("sft" / "base") GRPO kept when it published step 0 for `spec`'s policy, else None (it trained)."""
    from mrrec_lib.train.checkpoints import POLICY_META, final_dir, read_policy_meta

    if spec.checkpoint not in ("grpo", "recr1"):
        return None
    d = final_dir(ctx.policy_paths(spec.checkpoint), spec.checkpoint)
    if not (d / POLICY_META).exists():
        return None
    meta = read_policy_meta(d)
    if meta.get("best_step") != 0:
        return None
    return "sft" if meta.get("base") == {"which": "sft"} else "base"


def unchanged_policy(spec: SystemSpec, ctx: EvalContext) -> str | None:
    """The system whose policy `spec` loads unchanged: MR.Rec when GRPO kept its start (SFT) checkpoint.

    Stage 04 publishes step 0 when no validation beat it; its adapter is then the fresh zero-initialised
    LoRA, so the merged weights equal the SFT policy's and greedy decoding would repeat that system's
    answers token for token at ~14 s per request on 2 CPU cores.
    """
    return "mrrec_sft" if spec.checkpoint == "grpo" and kept_start(spec, ctx) == "sft" else None


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
    adopted: dict[str, dict[str, int]] = {}
    labels = {spec.name: method_label(spec, cfg, kept_start(spec, ctx)) for spec in specs}
    for spec in specs:
        same = unchanged_policy(spec, ctx)
        if same in rows:
            rows[spec.name] = [{**r, "system": spec.name} for r in rows[same]]
            reused[spec.name] = same
            log.info("system %s: same policy as %s (GRPO kept step 0), its answers reused", spec.name, same)
            continue
        factory = factories.get(spec.name) or factories[spec.kind]
        try:
            taken: dict[str, int] = {}
            rows[spec.name] = run_system(spec, ctx, queries, factory, progress=progress, adopted=taken)
            if taken:
                adopted[spec.name] = taken
        except MissingStageError as e:
            missing[spec.name] = str(e)
            log.warning("system %s not run: %s", spec.name, e)
    frame = per_query_frame([r for rs in rows.values() for r in rs], queries, cfg)
    return EvalResult(cfg, specs, queries, frame, missing, reused, adopted, labels, ctx.covered_categories)
