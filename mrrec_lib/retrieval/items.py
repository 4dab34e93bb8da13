"""The item retriever: an ideal-item profile (or a raw request) in, pool items out.

The reward and the evaluation both score a text by the EXACT rank of the
purchased item over the whole pool (not its position in a truncated top-1000
list), so nDCG@1000 and Recall@1000 are exact and a profile that moves the
target from rank 5,000 to 2,000 is visible in the logged ranks. Item
embeddings are cached by content in a cache shared across runs
(`<cache_dir>/emb/items_<model>_<key>.npy`, key = model + truncation + every item
text), so every stage after 01, a second run and every ablation run over the same
pool reuse them: encoding a 155k-item pool takes ~9 minutes on 2 CPU cores.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from mrrec_lib.config import Config
from mrrec_lib.retrieval.encoder import TextEncoder, embedding_key, make_encoder, model_slug
from mrrec_lib.retrieval.index import POOL_BLOCK, QUERY_BATCH, BM25Index, DenseIndex, make_index
from mrrec_lib.runs import RunPaths, embedding_cache_dir

Kind = Literal["dense", "bm25"]
LONG_SCAN = 50_000_000  # (texts x pool items) from which a scan shows a progress bar: a few seconds on one core


def _cache_file(cfg: Config, model: str, key: str) -> Path:
    return embedding_cache_dir(cfg) / f"items_{model_slug(model)}_{key[:24]}.npy"


def item_texts(items: pd.DataFrame) -> list[str]:
    """What the retriever embeds per item, row order kept (one definition for the cache key and the encoder)."""
    return items["text"].fillna("").astype(str).tolist()


def item_embeddings(
    cfg: Config, items: pd.DataFrame, encoder: TextEncoder | None = None, mmap: bool = False
) -> np.ndarray:
    """Row i = the embedding of `items` row i, from the shared cache (encoded resumably on a miss).

    `mmap=True` returns a read-only memory map (for faiss indexes that copy the vectors anyway).
    """
    encoder = encoder or make_encoder(cfg)
    texts = item_texts(items)
    key = encoder.cache_key(texts, "doc")
    return encoder.encode_to_file(texts, "doc", _cache_file(cfg, encoder.name, key), key=key, mmap=mmap)


def item_embeddings_path(cfg: Config, paths: RunPaths) -> Path:
    """The cache file holding the embeddings of the run's pool (stage 01's `items.parquet`) under cfg's encoder.

    It exists once any run has embedded the same pool with the same encoder settings.
    """
    from mrrec_lib.data.schema import read_table

    texts = item_texts(read_table(paths.data, "items"))
    key = embedding_key(cfg.encoder_model, cfg.encoder_query_instruction, cfg.encoder_max_length, "doc", texts)
    return _cache_file(cfg, cfg.encoder_model, key)


class ItemRetriever:
    """Search and exact ranking over the unified `items` table (`item_id`, `text`)."""

    def __init__(
        self,
        items: pd.DataFrame,
        encoder: TextEncoder | None,
        cfg: Config,
        kind: Kind = "dense",
        embeddings: np.ndarray | None = None,
    ) -> None:
        """`embeddings` (row i = items row i) skips encoding; the retriever then holds the pool's only copy."""
        missing = [c for c in ("item_id", "text") if c not in items.columns]
        if missing:
            raise KeyError(f"items table lacks column(s) {missing}")
        if len(items) == 0:
            raise ValueError("items table is empty: nothing to retrieve from")
        self.item_ids = items["item_id"].astype(str).to_numpy()
        dup = pd.Index(self.item_ids)[pd.Index(self.item_ids).duplicated()]
        if len(dup):
            raise ValueError(f"items table has duplicate item_id(s), e.g. {list(dup[:5])}")
        self._pos = {item: i for i, item in enumerate(self.item_ids)}
        self.kind = kind
        self.encoder = encoder
        texts = item_texts(items)
        if kind == "bm25":
            self.index: DenseIndex | BM25Index = BM25Index(texts)
        elif kind == "dense":
            if encoder is None:
                raise ValueError("a dense ItemRetriever needs an encoder (for the request texts)")
            if embeddings is None:
                embeddings = encoder.encode(texts, kind="doc", show_progress=True)
            if len(embeddings) != len(texts):
                raise ValueError(f"{len(embeddings)} item embeddings for {len(texts)} items")
            self.index = make_index(cfg, embeddings=embeddings)
        else:
            raise ValueError(f"kind must be 'dense' or 'bm25', got {kind!r}")

    @classmethod
    def from_run(cls, cfg: Config, paths: RunPaths, encoder: TextEncoder | None = None) -> ItemRetriever:
        """The run's item pool (stage 01's `items.parquet`), embedded once per content (`item_embeddings`)."""
        from mrrec_lib.data.schema import read_table

        items = read_table(paths.data, "items")
        if cfg.item_retriever == "bm25":
            return cls(items, None, cfg, "bm25")
        encoder = encoder or make_encoder(cfg)
        # ivf/hnsw copy the vectors into faiss: read them memory-mapped so the build never holds two copies
        emb = item_embeddings(cfg, items, encoder, mmap=cfg.index_type != "flat")
        return cls(items, encoder, cfg, "dense", embeddings=emb)

    def __len__(self) -> int:
        return len(self.item_ids)

    def positions(self, item_ids: Sequence[str]) -> np.ndarray:
        """Pool rows of `item_ids`; an id not in the pool is an error naming it."""
        unknown = [str(i) for i in item_ids if str(i) not in self._pos]
        if unknown:
            raise KeyError(f"target item id(s) not in the item pool ({len(self)} items): {unknown[:5]}")
        return np.array([self._pos[str(i)] for i in item_ids], dtype=np.int64)

    def _queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.encoder.encode(list(texts), kind="query")

    def search(self, texts: Sequence[str], k: int) -> tuple[list[list[str]], np.ndarray]:
        """Top-k item ids per text (shorter when fewer items match; none for an empty text) and their scores.

        Scores are float32 (n, k), -inf where a list is shorter than k.
        """
        texts = [str(t) for t in texts]
        scores = np.full((len(texts), k), -np.inf, dtype=np.float32)
        live = [i for i, t in enumerate(texts) if t.strip()]
        ids: list[list[str]] = [[] for _ in texts]
        if not live:
            return ids, scores
        live_texts = [texts[i] for i in live]
        if isinstance(self.index, BM25Index):
            pos, sc = self.index.search(live_texts, k)
        else:
            pos, sc = self.index.search(self._queries(live_texts), k)
        scores[live] = sc
        for row, i in enumerate(live):
            ids[i] = self.item_ids[pos[row][pos[row] >= 0]].tolist()
        return ids, scores

    def ranks(self, texts: Sequence[str], target_item_ids: Sequence[str]) -> np.ndarray:
        """1-based exact rank of each target over the whole pool; an empty text gets the worst rank, len(pool).

        Dense: 1 + the number of items scoring strictly higher than the target (a full scan).
        BM25: 1 + strictly higher + half the other items tied with the target (BM25 ties are common, e.g. every
        item sharing no term with the text scores 0; mid-tie is the expected rank under a random tie-break).
        """
        texts = [str(t) for t in texts]
        if len(texts) != len(target_item_ids):
            raise ValueError(f"{len(texts)} texts but {len(target_item_ids)} target item ids")
        targets = self.positions(target_item_ids)
        out = np.full(len(texts), len(self), dtype=np.int64)
        live = np.array([i for i, t in enumerate(texts) if t.strip()], dtype=np.int64)
        if len(live) == 0:
            return out
        live_texts = [texts[i] for i in live]
        if isinstance(self.index, BM25Index):
            for j, scores in zip(live, self.index.scores(live_texts), strict=True):
                t = scores[targets[j]]
                ties = int((scores == t).sum()) - 1
                out[j] = 1 + int((scores > t).sum()) + ties // 2
            return out
        q = self._queries(live_texts)
        target_scores = np.einsum("ij,ij->i", q, self.index.vectors(targets[live]))
        out[live] = 1 + self.index.exact_counts(q, target_scores, exclude=targets[live])
        return out

    def nested_ranks(
        self,
        texts: Sequence[str],
        target_item_ids: Sequence[str],
        tier: np.ndarray,
        n_tiers: int,
        exclude: Sequence[Sequence[str]] | None = None,
    ) -> np.ndarray:
        """(len(texts), n_tiers) exact ranks of each target within nested sub-pools, from one scan of the pool.

        Sub-pool j holds the pool rows with `tier <= j` (`tier`: one int >= 0 per pool row; >= n_tiers: in no
        sub-pool), so with every tier 0 the last column is `ranks`. The rank rule is `ranks`' (dense: 1 + items
        strictly higher; BM25: + half the other tied items), counted within each sub-pool: the pool-size curve
        scores a text against the pool once instead of once per size. `exclude[i]` (e.g. the user's earlier
        items) is removed from every sub-pool of text i; the target and ids not in the pool are ignored there.
        An empty text gets its sub-pool's size (the worst rank, as in `ranks`).
        """
        texts = [str(t) for t in texts]
        if len(texts) != len(target_item_ids):
            raise ValueError(f"{len(texts)} texts but {len(target_item_ids)} target item ids")
        if exclude is not None and len(exclude) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(exclude)} exclude lists")
        tier = np.asarray(tier, dtype=np.int64).reshape(-1)
        if len(tier) != len(self):
            raise ValueError(f"tier has {len(tier)} entries for a pool of {len(self)} items")
        if n_tiers < 1 or (tier < 0).any():
            raise ValueError(f"need n_tiers >= 1 and every tier >= 0 (n_tiers={n_tiers}, min tier={tier.min()})")
        tier = np.minimum(tier, n_tiers)  # n_tiers = in no sub-pool
        targets = self.positions(target_item_ids)
        out = np.tile(_cumulative(tier, n_tiers), (len(texts), 1))
        live = [i for i, t in enumerate(texts) if t.strip()]
        if not live:
            return out
        removed = [self._removed(targets[i], exclude[i] if exclude is not None else ()) for i in live]
        live_texts = [texts[i] for i in live]
        if isinstance(self.index, BM25Index):
            scans = tqdm(
                self.index.scores(live_texts),
                "nested ranks (BM25)",
                len(live),
                disable=len(live) * len(self) < LONG_SCAN,
            )
            for i, gone, scores in zip(live, removed, scans, strict=True):
                t = scores[targets[i]]
                higher, tied = scores > t, scores == t
                higher[gone] = tied[gone] = False
                out[i] = 1 + _cumulative(tier[higher], n_tiers) + _cumulative(tier[tied], n_tiers) // 2
            return out
        out[live] = 1 + self._nested_counts(self._queries(live_texts), targets[live], removed, tier, n_tiers)
        return out

    def _removed(self, target: int, exclude: Sequence[str]) -> np.ndarray:
        """Pool rows never counted above a text's target: the target itself and its excluded items in the pool."""
        rows = [self._pos[str(i)] for i in exclude if str(i) in self._pos]
        return np.unique(np.array([target, *rows], dtype=np.int64))

    def _nested_counts(
        self, q: np.ndarray, targets: np.ndarray, removed: list[np.ndarray], tier: np.ndarray, n_tiers: int
    ) -> np.ndarray:
        """Cumulative per-tier counts of items scoring strictly above each target (dense).

        The pool is visited in tier order, in blocks of POOL_BLOCK copied vectors, so a (QUERY_BATCH x
        POOL_BLOCK) score tile is the largest array: ~160 MB whatever the pool and query count.
        """
        order = np.argsort(tier, kind="stable")
        bounds = np.searchsorted(tier[order], np.arange(n_tiers + 1))
        at = np.empty(len(tier), dtype=np.int64)
        at[order] = np.arange(len(tier))
        thresholds = np.einsum("ij,ij->i", q, self.index.vectors(targets))
        counts = np.zeros((len(q), n_tiers), dtype=np.int64)
        blocks = [
            (j, a, min(a + POOL_BLOCK, bounds[j + 1]))
            for j in range(n_tiers)
            for a in range(bounds[j], bounds[j + 1], POOL_BLOCK)
        ]
        for s in range(0, len(q), QUERY_BATCH):
            qb, tb = q[s : s + QUERY_BATCH], thresholds[s : s + QUERY_BATCH, None]
            gone = removed[s : s + QUERY_BATCH]
            rows = np.repeat(np.arange(len(gone)), [len(g) for g in gone])
            cols = at[np.concatenate(gone)]
            for j, a, b in tqdm(blocks, desc="nested ranks", unit="block", disable=len(q) * len(tier) < LONG_SCAN):
                above = (qb @ self.index.vectors(order[a:b]).T) > tb
                hit = (cols >= a) & (cols < b)
                above[rows[hit], cols[hit] - a] = False
                counts[s : s + len(qb), j] += above.sum(axis=1)
        return np.cumsum(counts, axis=1)


def _cumulative(tier: np.ndarray, n_tiers: int) -> np.ndarray:
    """Items per sub-pool: how many of `tier` are <= j, for j = 0..n_tiers-1."""
    return np.cumsum(np.bincount(tier, minlength=n_tiers + 1)[:n_tiers])
