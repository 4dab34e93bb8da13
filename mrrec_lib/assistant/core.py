"""The recommendation assistant of a finished run: a user and a typed request in, a reasoned top-k out.

It is the evaluated MR.Rec system pointed at one request: the same prompt,
memory tool and rollout engine as evaluation (`agent.run.run_policy_on_queries`),
the same item index, greedy decoding (`eval_temperature`). What it adds is the
choice of memory for a free-typed request (the user's latest snapshot), input
checks with errors that list the valid choices, and a full trace of the answer.

Loading is split so bad input fails fast: tables, memory and the item index
load in `from_run`, the policy (the slow part) on the first `recommend`.
"""

from __future__ import annotations

import difflib
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mrrec_lib.assistant.recommendation import RecItem, Recommendation, build_turns, retrieval_text
from mrrec_lib.config import Config, load_config
from mrrec_lib.memory import snapshot_key
from mrrec_lib.runs import MissingStageError, RunPaths, resolve

POLICY_PREFERENCE = ("grpo", "sft")  # best first; "base" (the untrained policy_model) when neither is trained
POLICY_CHOICES = ("auto", "grpo", "sft", "base")
FREE_REQUEST_QID = "ask"
EXAMPLES_SHOWN = 5
TITLE_FALLBACK_CHARS = 90


class AssistantInputError(ValueError):
    """A user id, query id or request the assistant cannot answer; the message lists valid choices."""


class RunNotFoundError(FileNotFoundError):
    """The run folder does not exist or holds no finished run (no config.yaml)."""


def describe_choices(values: Sequence[str], wanted: str = "", n: int = EXAMPLES_SHOWN) -> str:
    """`N valid, e.g. a, b, c` plus close matches of `wanted`: enough to retype, short enough to read."""
    values = sorted(dict.fromkeys(str(v) for v in values))
    if not values:
        return "none available"
    text = f"{len(values)} valid, e.g. {', '.join(values[:n])}" + (", ..." if len(values) > n else "")
    close = difflib.get_close_matches(wanted, values, n=3, cutoff=0.6) if wanted else []
    return text + (f"; did you mean {', '.join(close)}?" if close else "")


def find_run(run: str | Path) -> Path:
    """The run folder named by `run`: a path (as given, or under the project root), or a bare run name in outputs/.

    A finished run has the `config.yaml` the runner writes; without one, the error lists the runs that exist.
    """
    given = Path(str(run)).expanduser()
    candidates = [given, resolve(given), resolve("outputs") / given]
    for c in candidates:
        if (c / "config.yaml").is_file():
            return c.resolve()
    parent = next((c.parent for c in candidates if c.parent.is_dir() and c.parent != c), resolve("outputs"))
    runs = sorted(p.name for p in parent.glob("*") if (p / "config.yaml").is_file()) if parent.is_dir() else []
    hint = describe_choices(runs, given.name) if runs else "none (make one with `mrrec run params/default.yaml`)"
    raise RunNotFoundError(f"no finished run at {str(run)!r} (no config.yaml there). Runs under {parent}: {hint}")


def best_policy(paths: RunPaths) -> str:
    """The most trained policy this run folder holds: grpo > sft > base."""
    from mrrec_lib.train.checkpoints import POLICY_META, final_dir

    return next((w for w in POLICY_PREFERENCE if (final_dir(paths, w) / POLICY_META).exists()), "base")


def check_request(request: Any) -> str:
    if not isinstance(request, str) or not request.strip():
        raise AssistantInputError(
            'empty request: say what you are looking for, e.g. "a strong black tea for mornings"'
        )
    return " ".join(request.split())


@dataclass(frozen=True)
class Ask:
    """Who asks what, and from which memory: a free-typed request (qid None) or a dataset query."""

    user_id: str
    request: str
    snapshot: str
    snapshot_ts: int
    qid: str | None = None


class Assistant:
    """One run's policy, memory, users and item index, ready to answer requests."""

    def __init__(
        self,
        cfg: Config,
        paths: RunPaths,
        *,
        queries: pd.DataFrame,
        items: pd.DataFrame,
        interactions: pd.DataFrame,
        store: Any,
        retriever: Any,
        which: str = "auto",
        policy: Any | None = None,
    ):
        """`policy`: a loaded `TokenPolicy`/`ChatLLM` to use instead of loading `which` from the run (tests, reuse)."""
        if which not in POLICY_CHOICES:
            raise AssistantInputError(f"unknown policy {which!r}; choose one of {', '.join(POLICY_CHOICES)}")
        self.cfg, self.paths = cfg, paths
        self.queries, self.items, self.interactions = queries, items, interactions
        self.store, self.retriever = store, retriever
        self.policy_name = best_policy(paths) if which == "auto" else which
        if self.policy_name != "base" and policy is None:
            from mrrec_lib.train.checkpoints import POLICY_META, STAGE_OF, final_dir

            if not (final_dir(paths, self.policy_name) / POLICY_META).exists():
                stage = STAGE_OF[self.policy_name]
                have = [w for w in POLICY_PREFERENCE if (final_dir(paths, w) / POLICY_META).exists()] + ["base"]
                raise MissingStageError(
                    f"run {paths.root} has no trained {self.policy_name} policy (stage {stage} has not finished); "
                    f"available: {', '.join(have)}. Use which='auto' for the best available."
                )
        self._policy = policy
        self.load_seconds = 0.0
        self._meta = items.drop_duplicates("item_id").set_index("item_id")[["title", "category", "text"]]

    # ---- construction --------------------------------------------------------------------
    @classmethod
    def from_run(cls, run: str | Path, which: str = "auto", policy: Any | None = None) -> Assistant:
        """The assistant of a finished run folder (e.g. `outputs/default`), with the config it was run with."""
        root = find_run(run)
        cfg = load_config(root / "config.yaml")
        return cls.from_config(cfg, RunPaths(root), which=which, policy=policy)

    @classmethod
    def from_config(cls, cfg: Config, paths: RunPaths, which: str = "auto", policy: Any | None = None) -> Assistant:
        """Load tables (stage 01), memory (02) and the item index; each missing stage is named in the error."""
        from mrrec_lib.data import load_data
        from mrrec_lib.memory.store import MemoryStore
        from mrrec_lib.retrieval.items import ItemRetriever

        items, interactions, queries = load_data(paths)
        store = MemoryStore.load(cfg, paths)
        retriever = ItemRetriever.from_run(cfg, paths)
        return cls(
            cfg, paths, queries=queries, items=items, interactions=interactions, store=store, retriever=retriever,
            which=which, policy=policy,
        )

    @property
    def policy(self) -> Any:
        """The policy, loaded on first use (its load time is `load_seconds`, kept out of request latency)."""
        if self._policy is None:
            from mrrec_lib.agent.policy import LocalPolicy, decoding_model
            from mrrec_lib.train.checkpoints import load_policy

            start = time.perf_counter()
            model, tokenizer = load_policy(self.cfg, self.paths, self.policy_name)
            self._policy = LocalPolicy.for_model(decoding_model(model), tokenizer, self.cfg)
            self.load_seconds = time.perf_counter() - start
        return self._policy

    @cached_property
    def prompt_kind(self) -> str:
        from mrrec_lib.agent.run import default_prompt_kind

        return default_prompt_kind(self.cfg)

    def describe(self) -> str:
        return (
            f"run {self.paths.root.name}: policy {self.policy_name} ({self.prompt_kind} prompt), "
            f"{self.queries['user_id'].nunique()} users, {len(self.items):,} items in the pool"
        )

    # ---- users and memory ----------------------------------------------------------------------
    @cached_property
    def users(self) -> list[str]:
        return sorted(self.queries["user_id"].astype(str).unique())

    def check_user(self, user_id: Any) -> str:
        user = str(user_id).strip() if user_id is not None else ""
        if user not in set(self.users):
            raise AssistantInputError(
                f"unknown user {user!r} in run {self.paths.root.name}: {describe_choices(self.users, user)}"
            )
        return user

    def latest_snapshot(self, user_id: str) -> tuple[str, int]:
        """(key, timestamp) of the user's most recent memory: everything before their last held-out purchase."""
        user = self.check_user(user_id)
        ts = int(self.queries.loc[self.queries["user_id"] == user, "target_timestamp"].max())
        return snapshot_key(user, ts), ts

    def query_row(self, qid: Any) -> dict[str, Any]:
        rows = self.queries[self.queries["qid"] == str(qid)]
        if rows.empty:
            raise AssistantInputError(f"unknown query {qid!r}: {describe_choices(self.queries['qid'], str(qid))}")
        return rows.iloc[0].to_dict()

    def pick_query(self, split: str = "test") -> dict[str, Any]:
        """One query of `split`, drawn with the run's seed (a demo case that is not hand-picked)."""
        pool = self.queries[self.queries["split"] == split].sort_values("qid")
        if pool.empty:
            raise AssistantInputError(
                f"run {self.paths.root.name} has no {split!r} queries; splits present: "
                f"{sorted(self.queries['split'].unique())}"
            )
        return pool.iloc[int(np.random.default_rng(self.cfg.seed).integers(len(pool)))].to_dict()

    def prepare(self, user_id: Any = "", request: Any = "", split: str = "test") -> Ask:
        """A free-typed request of `user_id`, or (empty user) a seeded `split` query with its user and request."""
        if user_id is None or not str(user_id).strip():
            row = self.pick_query(split)
            ts = int(row["target_timestamp"])
            return Ask(str(row["user_id"]), str(row["query"]), snapshot_key(str(row["user_id"]), ts), ts, str(row["qid"]))
        user = self.check_user(user_id)
        request = check_request(request)
        snap, ts = self.latest_snapshot(user)
        return Ask(user, request, snap, ts)

    def answer(self, ask: Ask, k: int | None = None) -> Recommendation:
        return self.recommend_for_query(ask.qid, k) if ask.qid else self.recommend(ask.user_id, ask.request, k)

    def history(self, user_id: str, before_ts: int | None = None) -> pd.DataFrame:
        """The user's interactions (before `before_ts`, the history a snapshot was built from), oldest first."""
        from mrrec_lib.data import history_for

        user = self.check_user(user_id)
        h = history_for(self.interactions, user, np.iinfo("int64").max if before_ts is None else int(before_ts))
        h = h.merge(self._meta.reset_index(), on="item_id", how="left", suffixes=("", "_item"))
        h["title"] = [self._title(i) for i in h["item_id"]]
        return h[["timestamp", "item_id", "title", "category", "rating", "review_title"]]

    def memory(self, snapshot: str) -> pd.DataFrame:
        """Every local memory entry of a snapshot (what the tool can return)."""
        return self.store.entries(snapshot)

    # ---- answering ----------------------------------------------------------------------------
    def recommend(self, user_id: Any, request: Any, k: int | None = None) -> Recommendation:
        """Answer a free-typed request from the user's latest memory snapshot (no target is known)."""
        user = self.check_user(user_id)
        request = check_request(request)
        _, ts = self.latest_snapshot(user)
        row = {"qid": FREE_REQUEST_QID, "user_id": user, "target_timestamp": ts, "category": "", "query": request}
        return self._answer(row, k)

    def recommend_for_query(self, qid: Any, k: int | None = None) -> Recommendation:
        """Answer a dataset query from its own snapshot, with its purchased item marked and ranked."""
        return self._answer(self.query_row(qid), k, target=True)

    def _check_k(self, k: int | None) -> int:
        k = self.cfg.assistant_k if k is None else k
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise AssistantInputError(f"k must be a positive integer, got {k!r}")
        return min(int(k), len(self.items))

    def _answer(self, row: dict[str, Any], k: int | None, target: bool = False) -> Recommendation:
        from mrrec_lib.agent.run import run_policy_on_queries

        k = self._check_k(k)
        policy = self.policy
        user, ts = str(row["user_id"]), int(row["target_timestamp"])
        snap, request = snapshot_key(user, ts), str(row["query"])
        kind = self.prompt_kind
        rollout_cfg = self.cfg.model_copy(update={"rollout_temperature": self.cfg.eval_temperature})
        start = time.perf_counter()
        row = {**row, "qid": str(row["qid"]), "category": str(row.get("category") or "")}
        [traj], _ = run_policy_on_queries([row], policy, rollout_cfg, store=self.store, kind=kind, progress=False)
        t_policy = time.perf_counter()
        text, source = retrieval_text(traj.profile, traj.parse_ok, traj.final_text, request)
        [ids], scores = self.retriever.search([text], k)
        target_id = str(row["target_item_id"]) if target else None
        rank = int(self.retriever.ranks([text], [target_id])[0]) if target_id else None
        end = time.perf_counter()
        aspects = []
        if kind in ("mrrec", "global_only") and self.cfg.global_memory:
            aspects = self.store.global_context(request, row["category"], self.cfg.global_top_k)
        entries = {str(r["entry_id"]): r for r in self.memory(snap).to_dict("records")}
        return Recommendation(
            run=self.paths.root.name,
            user_id=user,
            request=request,
            snapshot=snap,
            snapshot_ts=ts,
            policy=self.policy_name,
            prompt_kind=kind,
            aspects=[{k_: a[k_] for k_ in ("aspect", "text", "category") if k_ in a} for a in aspects],
            turns=build_turns(traj, _prompt_length(traj), entries, text),
            profile=traj.profile,
            memory_ids=list(traj.memory_ids),
            parse_ok=traj.parse_ok,
            parse_error=traj.parse_error,
            finish_reason=traj.finish_reason,
            retrieval_text=text,
            retrieval_source=source,
            items=[self._item(i + 1, x, float(s), target_id) for i, (x, s) in enumerate(zip(ids, scores[0], strict=False))],
            pool_size=len(self.items),
            n_tool_calls=traj.n_tool_calls,
            n_invalid_calls=traj.n_invalid_calls,
            timings={
                "policy_s": round(t_policy - start, 3),
                "retrieval_s": round(end - t_policy, 3),
                "total_s": round(end - start, 3),
            },
            qid=str(row["qid"]) if target else None,
            split=str(row.get("split")) if target else None,
            target_item_id=target_id,
            target_title=self._title(target_id) if target_id else "",
            target_rank=rank,
        )

    def _title(self, item_id: str) -> str:
        """The item's title, else the start of its retrieval text (pool items without metadata have no title)."""
        if item_id not in self._meta.index:
            return ""
        row = self._meta.loc[item_id]
        return str(row["title"]).strip() or textwrap.shorten(str(row["text"]), TITLE_FALLBACK_CHARS, placeholder=" ...")

    def _item(self, rank: int, item_id: str, score: float, target_id: str | None) -> RecItem:
        cat = str(self._meta["category"].get(item_id, "")) if item_id in self._meta.index else ""
        return RecItem(rank, item_id, self._title(item_id), cat, round(score, 4), item_id == target_id)


def _prompt_length(traj: Any) -> int:
    """Messages before the first assistant turn: the prompt (system + user)."""
    return next((i for i, m in enumerate(traj.messages) if m.get("role") == "assistant"), len(traj.messages))
