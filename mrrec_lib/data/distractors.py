"""Real product catalogs added to the item pool as distractors (no users, no reviews).

The base pools hold ~140 items per category, so a request naming the product kind
nearly identifies its target; the paper ranks against ~1M items. The catalogs of
`distractor_catalogs/` (see ../shared/data/README.md) add ~150k same-kind items.
A distractor whose normalised title equals a pool item's is dropped (the 2018 Amazon
lists can hold a 2023 pool item, even a target: keeping it would put a second copy of
the answer in the pool), as is a repeat within the catalogs; both are counted.
Every distractor text goes through `compose_item_text`, the one format of every source,
so the retriever cannot tell distractors from pool items by their layout.
"""

from __future__ import annotations

from collections.abc import Callable
from hashlib import sha1
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mrrec_lib.config import Config
from mrrec_lib.data.readers import SkipLog
from mrrec_lib.data.schema import ITEM_COLUMNS
from mrrec_lib.data.text import clean_text, compose_item_text, normalise
from mrrec_lib.runs import shared_data_path

CATALOG_COLUMNS = ("title", "category", "description", "brand", "source")
SOURCE_PREFIX = "distractor:"  # items.source of a distractor: "distractor:<catalog file stem>"
ID_PREFIX = "dx:"
SKIP_SOURCE = "distractors"
# A title with no ASCII letter or digit (Greek, CJK) normalises to "" and cannot be compared: dropped.
DROP_REASONS = ("title_without_ascii_words", "duplicate_of_pool", "duplicate_within", "not_sampled")


def is_distractor(source: pd.Series) -> pd.Series:
    """True for the pool rows `add_distractors` added."""
    return source.fillna("").astype(str).str.startswith(SOURCE_PREFIX)


def read_catalog(path: Path) -> pd.DataFrame:
    """One catalog parquet with its five string columns; a missing file or column is an error naming it."""
    if not path.exists():
        raise FileNotFoundError(
            f"distractor catalog not found: {path} (pool_distractor_files; set pool_distractors: false to run without)"
        )
    df = pd.read_parquet(path)
    missing = [c for c in CATALOG_COLUMNS if c not in df.columns]
    if missing:
        raise KeyError(f"distractor catalog {path} lacks column(s) {missing} (has {list(df.columns)})")
    # plain Python strings: iterating pandas' Arrow-backed str columns costs more than the text work itself
    return pd.DataFrame({c: df[c].fillna("").astype(str).astype(object) for c in CATALOG_COLUMNS})


def _load(cfg: Config) -> pd.DataFrame:
    """Every catalog row in config order, with its catalog stem and normalised title."""
    paths = [shared_data_path(cfg, rel) for rel in cfg.pool_distractor_files]
    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):
        raise ValueError(f"pool_distractor_files names two catalogs with one file stem: {cfg.pool_distractor_files}")
    frames = [read_catalog(p).assign(catalog=p.stem) for p in paths]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in (*CATALOG_COLUMNS, "catalog", "norm")})
    df = pd.concat(frames, ignore_index=True)
    return df.assign(norm=_map_unique(df["title"], normalise))


def _map_unique(values: pd.Series, fn: Callable[[str], str]) -> np.ndarray:
    """`fn` over each distinct value once: catalog categories, genres and aisles repeat thousands of times."""
    uniq = values.unique()
    return values.map(dict(zip(uniq, map(fn, uniq), strict=True))).to_numpy()


def _rows(df: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """Catalog rows -> the items schema (text in the one format every source uses).

    The id equals `stable_id(title, prefix=ID_PREFIX)` (a sha1 of the normalised title), computed from
    the title normalised once in `_load`: stable_id would normalise all 150k titles again (a test pins it).
    """
    texts = [
        compose_item_text(t, description=d, store=b, category=c, max_chars=cfg.item_text_max_chars)
        for t, d, b, c in zip(df["title"], df["description"], df["brand"], df["category"], strict=True)
    ]
    out = pd.DataFrame(
        {
            "item_id": [f"{ID_PREFIX}{sha1(n.encode()).hexdigest()[:12]}" for n in df["norm"]],
            "category": _map_unique(df["category"], clean_text),
            "subcategory": "",
            "title": _map_unique(df["title"], clean_text),
            "description": _map_unique(df["description"], clean_text),
            "store": _map_unique(df["brand"], clean_text),
            "price": np.nan,
            "text": texts,
            "source": (SOURCE_PREFIX + df["catalog"]).to_numpy(),
        }
    )
    return out[list(ITEM_COLUMNS)]


def _empty_report(items: pd.DataFrame, enabled: bool) -> dict[str, Any]:
    return {
        "enabled": enabled,
        "catalogs": {},
        "loaded": 0,
        **dict.fromkeys(DROP_REASONS, 0),
        "added": 0,
        "pool_before": len(items),
        "pool_after": len(items),
        "covered_categories": [],
        "per_category": {},
    }


def add_distractors(items: pd.DataFrame, cfg: Config, skips: SkipLog) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The pool `items` plus the deduplicated (and optionally sampled) distractor catalogs, and a report.

    Order: rows whose title has no ASCII word are skipped (`title_without_ascii_words`); then rows whose normalised title is a pool
    item's (`duplicate_of_pool`); then repeats among the distractors, first in config order kept
    (`duplicate_within`); then, when `pool_distractor_sample` > 0, a sample of that many (seed
    `cfg.seed`). Each drop is counted in `skips` under `distractors/<reason>` and per catalog in the
    report: {"catalogs": {stem: {loaded, title_without_ascii_words, duplicate_of_pool, duplicate_within,
    not_sampled, added}}, the same six counts summed over catalogs, "pool_before", "pool_after",
    "covered_categories" (sorted), "per_category": {category: added}, "enabled"}. Distractor ids
    are `dx:` + a hash of the normalised title, so one product keeps its id across runs, samples
    and catalog orders.
    """
    if not cfg.pool_distractors:
        return items, _empty_report(items, enabled=False)
    if "title" not in items.columns:
        raise KeyError("items table lacks column 'title' (needed to drop distractors that repeat a pool item)")
    df = _load(cfg)
    report = _empty_report(items, enabled=True)
    no_words = df["norm"].eq("")
    in_pool = ~no_words & df["norm"].isin(set(items["title"].map(normalise)) - {""})
    within = ~no_words & ~in_pool & df["norm"].duplicated()
    keep = ~(no_words | in_pool | within)
    sampled = keep.copy()
    n_sample = cfg.pool_distractor_sample
    if n_sample < 0:
        raise ValueError(f"pool_distractor_sample must be >= 0 (0: every distractor), got {n_sample}")
    if 0 < n_sample < int(keep.sum()):
        chosen = np.random.default_rng(cfg.seed).choice(np.flatnonzero(keep), n_sample, replace=False)
        sampled[:] = False
        sampled.iloc[chosen] = True
    drops = dict(zip(DROP_REASONS, (no_words, in_pool, within, keep & ~sampled), strict=True))
    for stem in dict.fromkeys(Path(rel).stem for rel in cfg.pool_distractor_files):
        mine = df["catalog"].eq(stem)
        counts = {reason: int((mask & mine).sum()) for reason, mask in drops.items()}
        report["catalogs"][stem] = {"loaded": int(mine.sum()), **counts, "added": int((sampled & mine).sum())}
        for reason, n in counts.items():
            example = df.loc[drops[reason] & mine, "title"].head(1).tolist()
            skips.add(SKIP_SOURCE, reason, f"{stem}: e.g. {example[0]!r}" if n else "", n=n)
    report |= {"loaded": len(df), **{reason: int(mask.sum()) for reason, mask in drops.items()}}
    if not sampled.any():
        return items, report
    dx = _rows(df[sampled], cfg)
    out = pd.concat([items, dx], ignore_index=True)
    per_category = dx["category"].value_counts()
    report |= {
        "added": len(dx),
        "pool_after": len(out),
        "covered_categories": sorted(per_category.index),
        "per_category": {c: int(n) for c, n in sorted(per_category.items())},
    }
    return out, report
