"""The memory store the policy talks to: per-snapshot local search, per-category global context, and the tool.

Isolation is structural: `search` only ever scores the rows of the requested
snapshot, so a query can neither see another user's memory nor its own
future. Entries per snapshot are few (tens), so exact scoring of those rows
beats any index.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mrrec_lib.config import Config
from mrrec_lib.memory.embed import Encoder, encode_unique, encoder_id
from mrrec_lib.memory.global_memory import GLOBAL_COLUMNS
from mrrec_lib.memory.local import LOCAL_COLUMNS
from mrrec_lib.runs import RunPaths, read_json

log = logging.getLogger(__name__)
MAX_QUERY_CHARS = 512
EMPTY_QUERY_MESSAGE = (
    "No query given: call memory_retrieval_tool with a short description of the preference to look up, "
    'for example "preferred brands" or "price range for snacks".'
)
NO_MEMORY_MESSAGE = "No memory entries found for this user."
DISABLED_MESSAGE = "Local memory is disabled in this configuration; rely on the request itself."


class MemoryStore:
    """Local entries (snapshot, entry_id, level, category, text) and global aspect entries, with retrieval."""

    def __init__(
        self,
        cfg: Config,
        local: pd.DataFrame,
        global_entries: pd.DataFrame,
        aspects: dict[str, dict[str, list[str]]] | None = None,
        encoder: Encoder | None = None,
        cache_dir: Path | None = None,
    ):
        self.cfg = cfg
        self.local = (local if cfg.local_memory else local.iloc[:0]).reset_index(drop=True)
        self.global_entries = (global_entries if cfg.global_memory else global_entries.iloc[:0]).reset_index(drop=True)
        self.aspects = (aspects or {}) if cfg.global_memory else {}
        self.cache_dir = cache_dir
        self._encoder = encoder
        self._levels = self.local["level"].astype(str).to_numpy()
        self._rows = {s: idx.to_numpy() for s, idx in self.local.groupby("snapshot", sort=False).groups.items()}
        self._cat_rows = {
            c: idx.to_numpy() for c, idx in self.global_entries.groupby("category", sort=False).groups.items()
        }
        self._local_emb: np.ndarray | None = None
        self._global_emb: np.ndarray | None = None
        self._bm25: dict[Any, Any] = {}
        self._warned: set[str] = set()

    @classmethod
    def load(cls, cfg: Config, paths: RunPaths, encoder: Encoder | None = None) -> MemoryStore:
        """The stage-02 memory of this run folder; fails naming stage 02 when it has not run."""
        local = pd.DataFrame(columns=LOCAL_COLUMNS)
        glob = pd.DataFrame(columns=GLOBAL_COLUMNS)
        aspects: dict = {}
        if cfg.local_memory:
            local = pd.read_parquet(paths.require(paths.memory / "local_entries.parquet", "02"))
        if cfg.global_memory:
            glob = pd.read_parquet(paths.require(paths.memory / "global_entries.parquet", "02"))
            aspects = read_json(paths.require(paths.memory / "global_aspects.json", "02"))
        for name, df, cols in (("local_entries", local, LOCAL_COLUMNS), ("global_entries", glob, GLOBAL_COLUMNS)):
            missing = set(cols) - set(df.columns)
            if missing:
                raise KeyError(f"{paths.memory / name}.parquet lacks column(s) {sorted(missing)}; rerun stage 02")
        return cls(cfg, local, glob, aspects, encoder, cache_dir=paths.memory / "emb")

    # ---- encoding ---------------------------------------------------------------------
    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            from mrrec_lib.retrieval.encoder import make_encoder  # torch import only when dense search is used

            self._encoder = make_encoder(self.cfg)
        return self._encoder

    def _doc_matrix(self, texts: list[str]) -> np.ndarray:
        return encode_unique(self.encoder, texts, "doc", self.cache_dir, encoder_id(self.cfg))

    def _query_vec(self, query: str) -> np.ndarray:
        return np.asarray(self.encoder.encode([query], kind="query"), dtype=np.float32).reshape(-1)

    @staticmethod
    def _local_doc(row: pd.Series | dict) -> str:
        """Patterns are embedded with their category so `coffee brands` finds the right group's chunk."""
        return f"{row['category']}: {row['text']}" if row["level"] == "pattern" else str(row["text"])

    def _rank(
        self, rows: np.ndarray, query: str, k: int, key: Any, docs: Callable[[], list[str]], matrix
    ) -> list[tuple[int, float]]:
        if len(rows) == 0 or k <= 0:
            return []
        if self.cfg.memory_retriever == "bm25":
            if key not in self._bm25:
                from mrrec_lib.retrieval.index import BM25Index

                self._bm25[key] = BM25Index(docs())
            pos, scores = self._bm25[key].search([query], min(k, len(rows)))
            return [(int(rows[p]), float(s)) for p, s in zip(np.ravel(pos), np.ravel(scores), strict=True) if p >= 0]
        scores = matrix()[rows] @ self._query_vec(query)
        order = np.argsort(-scores, kind="stable")[:k]
        return [(int(rows[i]), float(scores[i])) for i in order]

    def _local_matrix(self) -> np.ndarray:
        if self._local_emb is None:
            self._local_emb = self._doc_matrix([self._local_doc(r) for r in self.local.to_dict("records")])
        return self._local_emb

    def _global_matrix(self) -> np.ndarray:
        if self._global_emb is None:
            self._global_emb = self._doc_matrix(self.global_entries["text"].astype(str).tolist())
        return self._global_emb

    # ---- retrieval ----------------------------------------------------------------------
    @property
    def snapshots(self) -> list[str]:
        return list(self._rows)

    def entries(self, snapshot: str) -> pd.DataFrame:
        """All local entries of one snapshot, in id order as built."""
        return self.local.iloc[self._rows.get(snapshot, [])]

    def search(self, snapshot: str, query: str, k: int | None = None, levels: list[str] | None = None) -> list[dict]:
        """Top-k entries of this snapshot's local memory for `query` (never another snapshot's rows)."""
        if not self.cfg.local_memory:
            return []
        k = self.cfg.memory_top_k if k is None else k
        levels = list(levels or self.cfg.memory_levels)
        if snapshot not in self._rows:
            if snapshot not in self._warned:
                log.warning("no local memory for snapshot %r (empty history or not built in stage 02)", snapshot)
                self._warned.add(snapshot)
            return []
        rows = self._rows[snapshot]
        rows = np.sort(rows[np.isin(self._levels[rows], levels)])
        hits = self._rank(
            rows,
            query,
            k,
            ("local", snapshot, tuple(levels)),
            lambda: [self._local_doc(r) for r in self.local.iloc[rows].to_dict("records")],
            self._local_matrix,
        )
        cols = ["entry_id", "level", "category", "text"]
        return [{**{c: str(self.local.at[i, c]) for c in cols}, "score": s} for i, s in hits]

    def global_context(self, query: str, category: str | None = None, k: int | None = None) -> list[dict]:
        """Top-k global aspect entries for the request, from its category when known, else from all categories."""
        if not self.cfg.global_memory or self.global_entries.empty:
            return []
        k = self.cfg.global_top_k if k is None else k
        known = category in self._cat_rows
        rows = self._cat_rows[category] if known else np.arange(len(self.global_entries))
        hits = self._rank(
            np.sort(rows),
            query,
            k,
            ("global", category if known else None),
            lambda: self.global_entries["text"].iloc[np.sort(rows)].astype(str).tolist(),
            self._global_matrix,
        )
        return [
            {
                "aspect": str(self.global_entries.at[i, "aspect"]),
                "text": str(self.global_entries.at[i, "text"]),
                "category": str(self.global_entries.at[i, "category"]),
                "score": s,
            }
            for i, s in hits
        ]

    def tool_response(self, snapshot: str, query: Any, k: int | None = None) -> str:
        """What the policy reads back from a tool call: clear text for every input, never an exception."""
        if not self.cfg.local_memory:
            return DISABLED_MESSAGE
        if not isinstance(query, str) or not re.search(r"\w", query):
            return EMPTY_QUERY_MESSAGE
        hits = self.search(snapshot, query.strip()[:MAX_QUERY_CHARS], k)
        return format_entries(hits) if hits else NO_MEMORY_MESSAGE


def format_entries(hits: list[dict]) -> str:
    """`[entry_id] (level, category) text`, one entry per line: the form the policy cites ids from."""
    return "\n".join(f"[{h['entry_id']}] ({h['level']}, {h['category']}) {h['text']}" for h in hits)


def memory_tool(store: MemoryStore, snapshot: str, k: int | None = None) -> Callable[[str], str]:
    """The `memory_retrieval_tool` bound to one snapshot; TRL builds its JSON schema from signature + docstring."""
    k = store.cfg.memory_top_k if k is None else k

    def memory_retrieval_tool(query: str) -> str:
        """Search this user's personal memory (past purchases, per-category preferences and general profile).

        Args:
            query: The preference aspect to look up, in a few words, e.g. "preferred coffee brands" or "price range".

        Returns:
            The best matching memory entries, one per line as "[entry_id] (level, category) text".
        """
        return store.tool_response(snapshot, query, k)

    return memory_retrieval_tool


def format_global_aspects(aspects: list[dict] | dict[str, list[str]]) -> str:
    """Global context for a prompt: one line per aspect, its descriptions joined."""
    grouped: dict[str, list[str]] = {}
    if isinstance(aspects, dict):
        for name, descs in aspects.items():
            grouped.setdefault(str(name), []).extend(descs if isinstance(descs, list) else [str(descs)])
    else:
        for a in aspects:
            name, text = str(a["aspect"]), str(a["text"])
            grouped.setdefault(name, []).append(text.removeprefix(f"{name}:").strip())
    return "\n".join(f"- {name}: {' '.join(dict.fromkeys(d for d in descs if d))}" for name, descs in grouped.items())


def static_profile_text(store: MemoryStore, snapshot: str) -> str:
    """The snapshot's whole profile (the paper's "static memory" baseline), in entry order."""
    df = store.entries(snapshot)
    return " ".join(df.loc[df["level"] == "profile", "text"].astype(str))
