"""The item retriever: an ideal-item profile (or a raw request) in, pool items out.

The reward and the evaluation both score a text by the EXACT rank of the
purchased item over the whole pool (not its position in a truncated top-1000
list), so nDCG@1000 and Recall@1000 are exact and a profile that moves the
target from rank 5,000 to 2,000 is visible in the logged ranks. Item
embeddings are cached in the run folder (`data/item_emb_<model>.npy`) so every
stage after 01 reuses them instead of re-embedding the pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from mrrec_lib.config import Config
from mrrec_lib.retrieval.encoder import TextEncoder, make_encoder, model_slug
from mrrec_lib.retrieval.index import BM25Index, DenseIndex, make_index
from mrrec_lib.runs import RunPaths

Kind = Literal["dense", "bm25"]


def item_embeddings_path(cfg: Config, paths: RunPaths) -> Path:
    return paths.data / f"item_emb_{model_slug(cfg.encoder_model)}.npy"


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
        texts = items["text"].fillna("").astype(str).tolist()
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
        """The run's item pool (stage 01's `items.parquet`), embedded once and cached in the run folder."""
        from mrrec_lib.data.schema import read_table

        items = read_table(paths.data, "items")
        if cfg.item_retriever == "bm25":
            return cls(items, None, cfg, "bm25")
        encoder = encoder or make_encoder(cfg)
        texts = items["text"].astype(str).tolist()
        # ivf/hnsw copy the vectors into faiss: read them memory-mapped so the build never holds two copies
        emb = encoder.encode_to_file(texts, "doc", item_embeddings_path(cfg, paths), mmap=cfg.index_type != "flat")
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
