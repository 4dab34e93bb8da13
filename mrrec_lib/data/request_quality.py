"""How close the request builders come to real Amazon-C4 requests (notebook 01; not part of prepare_data).

Amazon-C4's writer saw one 5-star review and wrote a request; the shared
`amazon_c4_pairs` file holds those (review, request) pairs. The extractive
builder is run on the same reviews (review alone, no category: the pairs carry
none) and compared with the real requests on
- `mean_words`: length;
- `review_word_share`: the mean share of a request's content words
  (`data.overlap.content_words`) that occur in its review: how much is copied
  from the review rather than inferred;
- `similarity_to_real`: mean cosine similarity of its embedding to the real
  request's (any encoder with `encode(texts, kind=...)` returning L2-normalised
  rows; by default cfg's encoder, its embeddings kept in the shared cache).
The same length and review-word statistics are given for our run's requests
(shared and extractive, on the same targets), so the three can be read side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from mrrec_lib.config import Config
from mrrec_lib.data.overlap import content_words
from mrrec_lib.data.queries import extractive_request, review_views
from mrrec_lib.memory.embed import encode_unique, encoder_id
from mrrec_lib.runs import embedding_cache_dir, shared_data_path

PAIR_COLUMNS = ("query", "ori_review", "c4_file")


class Encoder(Protocol):
    def encode(self, texts: list[str], kind: str = "query") -> np.ndarray: ...


class _EncoderOnDemand:
    """`make_encoder(cfg)` at the first cache miss: a run whose sample is cached never imports the model."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def encode(self, texts: list[str], kind: str = "query") -> np.ndarray:
        from mrrec_lib.retrieval.encoder import make_encoder

        return make_encoder(self.cfg).encode(texts, kind=kind)


def c4_test_pairs(cfg: Config) -> pd.DataFrame:
    """A seeded sample of at most `cfg.request_quality_sample` real Amazon-C4 test pairs (query, ori_review, rating)."""
    path = shared_data_path(cfg, cfg.c4_pairs_file)
    if not path.exists():
        raise FileNotFoundError(f"Amazon-C4 pairs not found: {path} (config c4_pairs_file)")
    df = pd.read_parquet(path)
    missing = [c for c in PAIR_COLUMNS if c not in df.columns]
    if missing:
        raise KeyError(f"{path} lacks column(s) {missing} (has {list(df.columns)})")
    test = df[(df["c4_file"] == "test") & df["query"].fillna("").str.strip().ne("")]
    test = test[test["ori_review"].fillna("").str.strip().ne("")].reset_index(drop=True)
    n = cfg.request_quality_sample
    if 0 < n < len(test):
        test = test.iloc[np.sort(np.random.default_rng(cfg.seed).choice(len(test), n, replace=False))]
    rating = test["ori_rating"] if "ori_rating" in test else pd.Series(5.0, index=test.index)
    return pd.DataFrame(
        {"query": test["query"].to_numpy(), "ori_review": test["ori_review"].to_numpy(), "rating": rating.to_numpy()}
    )


def review_word_share(request: str, review: str) -> float:
    """Share of the request's content words that occur in the review (0.0 for a request without any)."""
    words = content_words(request)
    return len(words & content_words(review)) / len(words) if words else 0.0


def text_stats(requests: pd.Series, reviews: pd.Series) -> dict[str, float]:
    """n, mean words and mean review-word share of index-aligned requests and their reviews."""
    shares = [review_word_share(q, r) for q, r in zip(requests, reviews, strict=True)]
    words = requests.fillna("").str.split().str.len()
    return {
        "n": int(len(requests)),
        "mean_words": round(float(words.mean()), 1) if len(requests) else 0.0,
        "review_word_share": round(float(np.mean(shares)), 3) if shares else 0.0,
    }


def _similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine of index-aligned (normalised) embeddings."""
    return round(float(np.mean(np.sum(a * b, axis=1))), 3) if len(a) else 0.0


def builder_vs_c4(
    pairs: pd.DataFrame, encoder: Encoder, cache: Path | None = None, cache_key: list | None = None
) -> pd.DataFrame:
    """Rows: the real C4 requests, the extractive builder's request and its simplified sentence, all from the
    same reviews; columns n, mean_words, review_word_share, similarity_to_real.

    With `cache` (a directory) the embeddings are stored under the encoder's `cache_key` and the texts, so
    every later run on the same sample reads them instead of encoding."""
    views = pd.DataFrame(
        {"review_title": "", "review_text": pairs["ori_review"], "rating": pairs["rating"], "category": ""}
    )
    built = [extractive_request(v) for v in review_views(views)]
    texts = {
        "Amazon-C4 request (real)": pairs["query"].reset_index(drop=True),
        "extractive request": pd.Series([r for r, _ in built]),
        "extractive simplified": pd.Series([s for _, s in built]),
    }
    reviews = pairs["ori_review"].reset_index(drop=True)
    flat = [text for t in texts.values() for text in t.tolist()]
    emb = encode_unique(encoder, flat, "query", cache, cache_key or [])  # the real requests once, not per row
    bounds = np.cumsum([0] + [len(t) for t in texts.values()])
    vecs = {name: emb[bounds[i] : bounds[i + 1]] for i, name in enumerate(texts)}
    real = vecs["Amazon-C4 request (real)"]
    rows = {
        name: {**text_stats(t, reviews), "similarity_to_real": _similarity(vecs[name], real)}
        for name, t in texts.items()
    }
    return pd.DataFrame(rows).T


def run_request_stats(queries: pd.DataFrame, interactions: pd.DataFrame) -> pd.DataFrame:
    """Length and review-word share of a run's requests and of the extractive builder's on the same targets.

    Rows: `raw_query` and `query` per query builder of the run (e.g. "shared
    request"), then "extractive request" / "extractive simplified" for every query.
    """
    reviews = queries.merge(
        interactions[["user_id", "item_id", "timestamp", "review_title", "review_text", "rating"]],
        left_on=["user_id", "target_item_id", "target_timestamp"],
        right_on=["user_id", "item_id", "timestamp"],
        how="left",
        validate="one_to_one",
    )
    if reviews["review_text"].isna().any():
        qid = reviews.loc[reviews["review_text"].isna(), "qid"].iloc[0]
        raise KeyError(f"query {qid!r}: its target review is not in the interactions")
    rows: dict[str, dict[str, Any]] = {}
    for builder, group in reviews.groupby("query_builder", sort=True):
        rows[f"{builder} request"] = text_stats(group["raw_query"], group["review_text"])
        rows[f"{builder} simplified"] = text_stats(group["query"], group["review_text"])
    built = [extractive_request(v) for v in review_views(reviews)]
    rows["extractive request (same targets)"] = text_stats(pd.Series([r for r, _ in built]), reviews["review_text"])
    rows["extractive simplified (same targets)"] = text_stats(pd.Series([s for _, s in built]), reviews["review_text"])
    return pd.DataFrame(rows).T


def request_quality(
    cfg: Config, queries: pd.DataFrame, interactions: pd.DataFrame, encoder: Encoder | None = None
) -> dict[str, Any]:
    """Both tables as JSON-ready dicts, for `metrics/01_data.json` under `request_quality`.

    Without `encoder`, cfg's encoder is loaded only if the sample's embeddings are not in the shared cache."""

    def records(df: pd.DataFrame) -> dict[str, dict[str, float]]:
        return {
            str(name): {k: (int(v) if k == "n" else float(v)) for k, v in row.items()} for name, row in df.iterrows()
        }

    pairs = c4_test_pairs(cfg)
    if encoder is None:  # cfg's encoder: its embeddings may be shared through the cache, a caller's may not
        vs_c4 = builder_vs_c4(pairs, _EncoderOnDemand(cfg), embedding_cache_dir(cfg), encoder_id(cfg))
    else:
        vs_c4 = builder_vs_c4(pairs, encoder)
    return {
        "c4_pairs_file": cfg.c4_pairs_file,
        "c4_test_pairs_sampled": int(len(pairs)),
        "vs_real_c4": records(vs_c4),
        "this_run": records(run_request_stats(queries, interactions)),
    }
