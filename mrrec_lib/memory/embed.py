"""Embeddings of memory texts, cached on disk per (encoder, texts).

Memory is re-loaded by every later stage (SFT, RL, evaluation, ablations);
encoding tens of thousands of entries each time would dominate their start-up.
Identical texts (a user's records repeat across that user's snapshots) are
encoded once.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Protocol

import numpy as np

from mrrec_lib.config import Config
from mrrec_lib.memory.text import content_hash
from mrrec_lib.runs import atomic_write_bytes


class Encoder(Protocol):
    def encode(self, texts: list[str], kind: str = "doc") -> np.ndarray: ...


def encoder_id(cfg: Config) -> list:
    return [cfg.encoder_model, cfg.encoder_query_instruction, cfg.encoder_max_length]


def encode_unique(encoder: Encoder, texts: list[str], kind: str, cache_dir: Path | None, key: list) -> np.ndarray:
    """Row i is the embedding of texts[i]; each distinct text is encoded once and the matrix is cached."""
    unique = list(dict.fromkeys(texts))
    path = cache_dir / f"emb_{content_hash([key, kind, unique])}.npy" if cache_dir else None
    if path is not None and path.exists():
        emb = np.load(path)
    else:
        emb = np.asarray(encoder.encode(unique, kind=kind), dtype=np.float32).reshape(len(unique), -1)
        if path is not None:
            buf = io.BytesIO()
            np.save(buf, emb)
            atomic_write_bytes(path, buf.getvalue())
    pos = {t: i for i, t in enumerate(unique)}
    return emb[[pos[t] for t in texts]] if texts else emb
