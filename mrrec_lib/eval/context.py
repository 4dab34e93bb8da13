"""Everything the evaluated systems share, loaded once and only when a system needs it.

Tables, retrievers, the memory store, the auxiliary LLM, the policy tokenizer
(memory tokens are counted with it for every system, so the efficiency column
compares like with like) and the trained policies. Tests inject fakes through
the constructor; a real run loads each resource from the run folder on first use,
and a missing one raises `MissingStageError` naming the stage that makes it.
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from mrrec_lib.config import Config
from mrrec_lib.runs import MissingStageError, RunPaths, resolve


def select_eval_queries(queries: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """The `cfg.eval_split` queries, capped at `eval_max_queries` by a seeded hash order of qid.

    A hash order (not `DataFrame.sample`) makes the subset prefix-stable: raising the cap keeps every query
    already evaluated, so cached per-query results stay valid.
    """
    df = queries[queries["split"] == cfg.eval_split]
    if df.empty:
        have = sorted(queries["split"].unique().tolist())
        raise ValueError(
            f"queries table has no rows with split == {cfg.eval_split!r} (eval_split); splits present: {have}"
        )
    order = [hashlib.sha1(f"{cfg.seed}:{q}".encode()).hexdigest() for q in df["qid"]]
    df = df.assign(_order=order).sort_values("_order", kind="stable").drop(columns="_order")
    if cfg.eval_max_queries > 0:
        df = df.head(cfg.eval_max_queries)
    return df.sort_values("qid", kind="stable").reset_index(drop=True)


def format_naive_memory(history: pd.DataFrame, items: pd.DataFrame, n: int) -> str:
    """The `n` most recent interactions as one line each (oldest first): title, category, rating, review title.

    Short on purpose, like the paper's naive memory (~28 tokens per interaction): the raw behaviour, not a summary.
    """
    recent = history.sort_values("timestamp", kind="stable").tail(n)
    meta = items.set_index("item_id")
    lines = []
    for r in recent.itertuples(index=False):
        title = meta["title"].get(r.item_id, "") if r.item_id in meta.index else ""
        cat = r.category or (meta["category"].get(r.item_id, "") if r.item_id in meta.index else "")
        line = f"- {title or 'unknown item'}" + (f" ({cat})" if cat else "")
        if pd.notna(r.rating):
            line += f", rated {r.rating:g}/5"
        if r.review_title:
            line += f': "{r.review_title}"'
        lines.append(line)
    return "\n".join(lines)


class EvalContext:
    """Lazily loaded shared resources of one evaluation over one run folder."""

    def __init__(
        self,
        cfg: Config,
        paths: RunPaths,
        *,
        queries: pd.DataFrame | None = None,
        items: pd.DataFrame | None = None,
        interactions: pd.DataFrame | None = None,
        retrievers: dict[str, Any] | None = None,
        llm: Any | None = None,
        tokenizer: Any | None = None,
        store: Any | None = None,
        policies: dict[str, Any] | None = None,
    ):
        self.cfg = cfg
        self.paths = paths
        self._all_queries = queries
        self._items = items
        self._interactions = interactions
        self._retrievers = dict(retrievers or {})
        self._llm = llm
        self._tokenizer = tokenizer
        self._store = store
        self._policies = dict(policies or {})

    # ---- tables ------------------------------------------------------------------------
    @cached_property
    def all_queries(self) -> pd.DataFrame:
        if self._all_queries is not None:
            return self._all_queries
        from mrrec_lib.data.schema import read_table

        return read_table(self.paths.data, "queries")

    @cached_property
    def queries(self) -> pd.DataFrame:
        return select_eval_queries(self.all_queries, self.cfg)

    @cached_property
    def items(self) -> pd.DataFrame:
        if self._items is not None:
            return self._items
        from mrrec_lib.data.schema import read_table

        return read_table(self.paths.data, "items")

    @cached_property
    def interactions(self) -> pd.DataFrame:
        if self._interactions is not None:
            return self._interactions
        from mrrec_lib.data.schema import read_table

        return read_table(self.paths.data, "interactions")

    @cached_property
    def history(self) -> dict[str, list[str]]:
        """qid -> the user's items before the query's target (`eval.history`): excluded from the ranking's headline."""
        from mrrec_lib.eval.history import history_items

        q = self.queries
        return dict(zip(q["qid"].astype(str), history_items(self.interactions, q), strict=True))

    @cached_property
    def covered_categories(self) -> list[str]:
        """Categories the distractor catalogs add items to: there the pool holds same-kind items of no user.

        Read as two columns of `items.parquet` (the whole table is not needed); an items table without a
        `source` column (a test fake) has no distractors.
        """
        from mrrec_lib.data.distractors import is_distractor

        if self._items is not None:
            items = self._items
        else:
            items = pd.read_parquet(self.paths.data / "items.parquet", columns=["category", "source"])
        if "source" not in items.columns:
            return []
        return sorted(set(items.loc[is_distractor(items["source"]), "category"].astype(str)))

    # ---- retrieval ----------------------------------------------------------------------
    def retriever_kind(self, spec_retriever: str) -> str:
        """A system's retriever: its own ("dense"/"bm25") or, when unset, the run's `item_retriever`."""
        return spec_retriever or self.cfg.item_retriever

    def retriever(self, kind: str) -> Any:
        """The item retriever of `kind` over the run's item pool (same encoder and index for every system)."""
        if kind not in self._retrievers:
            from mrrec_lib.retrieval.items import ItemRetriever

            self._retrievers[kind] = ItemRetriever.from_run(
                self.cfg.model_copy(update={"item_retriever": kind}), self.paths
            )
        return self._retrievers[kind]

    # ---- memory ------------------------------------------------------------------------
    @property
    def store(self) -> Any:
        if self._store is None:
            from mrrec_lib.memory.store import MemoryStore

            self._store = MemoryStore.load(self.cfg, self.paths)
        return self._store

    def naive_memory_text(self, row: dict) -> str:
        from mrrec_lib.data import history_for

        history = history_for(self.interactions, row["user_id"], int(row["target_timestamp"]))
        return format_naive_memory(history, self.items, self.cfg.naive_memory_n)

    def static_memory_text(self, row: dict) -> str:
        from mrrec_lib.memory import snapshot_key
        from mrrec_lib.memory.store import static_profile_text

        return static_profile_text(self.store, snapshot_key(row["user_id"], int(row["target_timestamp"])))

    def global_aspects(self, row: dict) -> list[dict]:
        """The global-memory aspects the MR.Rec prompt shows for this query (empty when global memory is off)."""
        if not self.cfg.global_memory:
            return []
        return self.store.global_context(row["query"], row["category"], self.cfg.global_top_k)

    def warm_memory(self) -> None:
        """Load the store, its encoder and entry embeddings before any timing: a one-off build, not query latency."""
        from mrrec_lib.memory import snapshot_key

        row = self.queries.iloc[0].to_dict()
        self.global_aspects(row)
        self.store.search(
            snapshot_key(row["user_id"], int(row["target_timestamp"])), row["query"], self.cfg.memory_top_k
        )

    # ---- models ------------------------------------------------------------------------
    @property
    def llm(self) -> Any:
        if self._llm is None:
            from mrrec_lib.llm import make_llm

            self._llm = make_llm(self.cfg)
        return self._llm

    @property
    def tokenizer(self) -> Any:
        """The policy model's tokenizer, loaded without the model."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            from mrrec_lib.llm import SMOLLM2, ensure_smollm2

            name = self.cfg.policy_model
            self._tokenizer = AutoTokenizer.from_pretrained(str(ensure_smollm2(self.cfg)) if name == SMOLLM2 else name)
        return self._tokenizer

    def count_tokens(self, text: str) -> int:
        if not text:
            return 0
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def policy_paths(self, which: str) -> RunPaths:
        """The run folder a trained policy comes from: `eval_recr1_run` for Rec-R1, else `eval_models_run`, else this run.

        `eval_models_run` is how `mrrec evaluate` scores another run's trained policies on this run's data.
        """
        run = (self.cfg.eval_recr1_run if which == "recr1" else "") or self.cfg.eval_models_run
        return RunPaths(resolve(self.cfg.outputs_dir) / run) if run else self.paths

    def policy_dir(self, which: str) -> Path:
        """The trained policy's final folder; MissingStageError (naming the stage) when it is not there."""
        from mrrec_lib.train.checkpoints import POLICY_META, STAGE_OF, final_dir

        d = final_dir(self.policy_paths(which), which)
        if not (d / POLICY_META).exists():
            hint = ""
            if which == "recr1":
                hint = (
                    " Rec-R1 is stage 04 with `policy_uses_memory: false`: run it as a params delta, then point "
                    "`eval_recr1_run` at that run folder (or train it in this one)."
                )
            raise MissingStageError(
                f"{d} holds no trained policy: stage {STAGE_OF[which]} ({which}) has not finished for run folder "
                f"{self.policy_paths(which).root}.{hint}"
            )
        other = self.policy_paths(which)
        # Borrowed policies (eval_models_run) meet other data by design: `mrrec evaluate` records the overlap instead.
        if other.root != self.paths.root and not self.cfg.eval_models_run:
            from mrrec_lib import stages

            theirs = stages.read_records(other).get("01", {}).get("hash")
            if theirs != stages.stage_hash(self.cfg, "01"):
                # Another data build could put this run's test queries in that policy's training split.
                raise MissingStageError(
                    f"{other.root} (eval_recr1_run) was not built from the same data as this run "
                    f"(stage 01 hash {theirs} vs {stages.stage_hash(self.cfg, '01')}): its policy cannot be evaluated here."
                )
        return d

    def policy(self, which: str) -> Any:
        """A `TokenPolicy` for a trained checkpoint (sft / grpo / recr1), loaded once."""
        if which not in self._policies:
            self.policy_dir(which)
            from mrrec_lib.agent.policy import LocalPolicy, decoding_model
            from mrrec_lib.train.checkpoints import load_policy

            model, tokenizer = load_policy(self.cfg, self.policy_paths(which), which)
            self._policies[which] = LocalPolicy.for_model(decoding_model(model), tokenizer, self.cfg)
        return self._policies[which]

    def release(self, which: str) -> None:
        """Drop a loaded policy once its system is done, so two policies never sit in memory together."""
        self._policies.pop(which, None)
