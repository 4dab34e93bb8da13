"""Top-k search over a pool: dense (faiss inner product) or lexical (BM25).

Both return `(positions int64 (n, k) padded with -1, scores float32 (n, k) padded with -inf)`.

Dense pools are held exactly once in memory: `flat` keeps the caller's float32
C-contiguous array itself (no faiss copy), `ivf`/`hnsw` keep only faiss's own
storage and expose zero-copy views of it, so the exact scans (`exact_counts`)
that rank a target over the whole pool read the same vectors the index searches.

Exact top-k on CPU is a blocked float32 matrix product (numpy's BLAS) feeding
faiss's C++ top-k heaps: on the 2-core benchmark machine it is 6-12x (per CPU-second)
faster than `faiss.IndexFlatIP.search` (see docs/results.md, "Retrieval and
encoding benchmarks"); on a GPU, faiss's own GPU flat index is used.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import faiss
import numpy as np

from mrrec_lib.config import Config

IndexType = Literal["flat", "ivf", "hnsw"]
# Blocking of the exact search: (queries x pool-rows) score tiles of 1024 x 32768 float32 = 128 MiB.
QUERY_BATCH = 1024
POOL_BLOCK = 32_768
# k-means on at most this many points per IVF list: faiss warns below 39; more mostly costs build time.
IVF_TRAIN_PER_LIST = 40


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def as_float32_rows(x: np.ndarray, what: str = "embeddings") -> np.ndarray:
    """A float32 C-contiguous 2-D view of `x` (copies only when `x` is not one already)."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{what} must be a 2-D (n, dim) array, got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _pad(pos: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pos = pos.astype(np.int64, copy=False)
    scores = scores.astype(np.float32, copy=False)
    scores[pos < 0] = -np.inf
    return pos, scores


class DenseIndex:
    """Inner-product search over L2-normalised embeddings: exact (`flat`) or approximate (`ivf`, `hnsw`)."""

    def __init__(
        self,
        embeddings: np.ndarray,
        index_type: IndexType = "flat",
        *,
        nlist: int = 1024,
        nprobe: int = 16,
        hnsw_m: int = 32,
        ef_search: int = 256,
        ef_construction: int = 80,
        use_gpu: bool = False,
        seed: int = 0,
    ) -> None:
        xb = as_float32_rows(embeddings)
        self.n, self.dim = xb.shape
        self.index_type = index_type
        self.nprobe = nprobe
        self.ef_search = ef_search
        self.on_gpu = bool(use_gpu and gpu_available())
        self._faiss: faiss.Index | None = None
        self._gpu: faiss.Index | None = None
        if index_type == "flat":
            self._xb = xb
            if self.on_gpu:
                self._gpu = faiss.GpuIndexFlatIP(self._gpu_resources(), self.dim)
                self._gpu.add(xb)
        elif index_type == "ivf":
            self._faiss = self._build_ivf(xb, nlist, seed)
            self._xb = None
            if self.on_gpu:
                self._gpu = faiss.index_cpu_to_gpu(self._gpu_resources(), 0, self._faiss)
            self._locate_ivf()
        elif index_type == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = ef_construction
            index.add(xb)
            self._faiss = index
            storage = faiss.downcast_index(index.storage)
            self._xb = faiss.rev_swig_ptr(storage.get_xb(), self.n * self.dim).reshape(self.n, self.dim)
        else:
            raise ValueError(f"index_type must be 'flat', 'ivf' or 'hnsw', got {index_type!r}")

    def _gpu_resources(self) -> faiss.StandardGpuResources:
        self._res = faiss.StandardGpuResources()
        return self._res

    def _build_ivf(self, xb: np.ndarray, nlist: int, seed: int) -> faiss.IndexIVFFlat:
        nlist = max(1, min(nlist, self.n // 39))  # faiss needs >= 39 training points per centroid
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        n_train = min(self.n, IVF_TRAIN_PER_LIST * nlist)
        sample = np.sort(np.random.default_rng(seed).choice(self.n, n_train, replace=False))
        index.cp.seed = seed
        index.train(xb[sample])
        index.add(xb)
        return index

    def _locate_ivf(self) -> None:
        """Inverted list and offset of every vector, for exact scans and reconstruction without a copy."""
        self._list_of = np.empty(self.n, dtype=np.int32)
        self._offset_of = np.empty(self.n, dtype=np.int32)
        invlists = self._faiss.invlists
        for lst in range(invlists.nlist):
            size = invlists.list_size(lst)
            if size:
                ids = faiss.rev_swig_ptr(invlists.get_ids(lst), size)
                self._list_of[ids] = lst
                self._offset_of[ids] = np.arange(size, dtype=np.int32)

    def _ivf_codes(self, lst: int) -> np.ndarray:
        """Zero-copy (size, dim) view of one inverted list's vectors."""
        invlists = self._faiss.invlists
        size = invlists.list_size(lst)
        return faiss.rev_swig_ptr(invlists.get_codes(lst), size * self.dim * 4).view(np.float32).reshape(size, self.dim)

    def __len__(self) -> int:
        return self.n

    # ---- top-k ---------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, batch_size: int = QUERY_BATCH) -> tuple[np.ndarray, np.ndarray]:
        """Top-k positions and inner-product scores per query, best first."""
        q = as_float32_rows(queries, "queries")
        if q.shape[1] != self.dim:
            raise ValueError(f"queries have dim {q.shape[1]}, the index has dim {self.dim}")
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        pos = np.full((len(q), k), -1, dtype=np.int64)
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        kk = min(k, self.n)
        for s in range(0, len(q), batch_size):
            qb = q[s : s + batch_size]
            d, i = self._search_batch(qb, kk)
            pos[s : s + len(qb), :kk], scores[s : s + len(qb), :kk] = _pad(i, d)
        return pos, scores

    def _search_batch(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._gpu is not None:
            if self.index_type == "ivf":
                self._gpu.nprobe = self.nprobe
            return self._gpu.search(q, k)
        if self.index_type == "flat":
            return self._exact_topk(q, k)
        if self.index_type == "ivf":
            params = faiss.SearchParametersIVF()
            params.nprobe = self.nprobe
        else:
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(self.ef_search, k)
        return self._faiss.search(q, k, params=params)

    def _exact_topk(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """BLAS score tiles merged into faiss min-heaps (the k largest inner products per query)."""
        d = np.empty((len(q), k), dtype=np.float32)
        i = np.empty((len(q), k), dtype=np.int64)
        heaps = faiss.float_minheap_array_t()
        heaps.nh, heaps.k = len(q), k
        heaps.val, heaps.ids = faiss.swig_ptr(d), faiss.swig_ptr(i)
        heaps.heapify()
        for start in range(0, self.n, POOL_BLOCK):
            tile = np.ascontiguousarray(q @ self._xb[start : start + POOL_BLOCK].T)
            heaps.addn(tile.shape[1], faiss.swig_ptr(tile), start, 0, len(q))
        heaps.reorder()
        return d, i

    # ---- exact scans -----------------------------------------------------------------------------
    def _blocks(self) -> Iterator[tuple[bool, int, np.ndarray]]:
        """(is_ivf_list, list number or first position, vectors): zero-copy views covering the pool once."""
        if self.index_type == "ivf":
            for lst in range(self._faiss.invlists.nlist):
                if self._faiss.invlists.list_size(lst):
                    yield True, lst, self._ivf_codes(lst)
            return
        for start in range(0, self.n, POOL_BLOCK):
            yield False, start, self._xb[start : start + POOL_BLOCK]

    def vectors(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        """Copies of the stored vectors at `positions` (for scoring a few targets)."""
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        if positions.size and (positions.min() < 0 or positions.max() >= self.n):
            raise IndexError(f"positions out of range [0, {self.n})")
        if self.index_type != "ivf":
            return np.array(self._xb[positions], dtype=np.float32).reshape(len(positions), self.dim)
        out = np.empty((len(positions), self.dim), dtype=np.float32)
        for j, p in enumerate(positions):
            out[j] = self._ivf_codes(int(self._list_of[p]))[self._offset_of[p]]
        return out

    def exact_counts(self, queries: np.ndarray, thresholds: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
        """Per query, how many pool vectors score strictly above its threshold (position `exclude[i]` never counts).

        A full float32 scan in (query batch x pool block) matrix products: exact for any index type.
        """
        q = as_float32_rows(queries, "queries")
        thr = np.asarray(thresholds, dtype=np.float32).reshape(-1)
        if len(thr) != len(q):
            raise ValueError(f"{len(q)} queries but {len(thr)} thresholds")
        counts = np.zeros(len(q), dtype=np.int64)
        for s in range(0, len(q), QUERY_BATCH):
            qb, tb = q[s : s + QUERY_BATCH], thr[s : s + QUERY_BATCH, None]
            ex = None if exclude is None else np.asarray(exclude[s : s + QUERY_BATCH], dtype=np.int64)
            for is_list, where, vecs in self._blocks():
                above = (qb @ vecs.T) > tb
                if ex is not None:
                    if is_list:
                        rows = np.flatnonzero(self._list_of[ex] == where)
                        cols = self._offset_of[ex[rows]]
                    else:
                        rows = np.flatnonzero((ex >= where) & (ex < where + len(vecs)))
                        cols = ex[rows] - where
                    above[rows, cols] = False
                counts[s : s + len(qb)] += above.sum(axis=1)
        return counts


class BM25Index:
    """Okapi BM25 (bm25s) with English stop words removed; `search` takes query strings."""

    def __init__(self, texts: Sequence[str], k1: float = 1.5, b: float = 0.75) -> None:
        import bm25s
        from bm25s.tokenization import Tokenizer

        self.n = len(texts)
        if self.n == 0:
            raise ValueError("BM25Index needs at least one document")
        self._tokenizer = Tokenizer(stopwords="english")
        corpus = self._tokenizer.tokenize([str(t) for t in texts], return_as="ids", show_progress=False)
        self._bm25 = bm25s.BM25(k1=k1, b=b)
        self._bm25.index(corpus, show_progress=False)

    def __len__(self) -> int:
        return self.n

    def _tokens(self, queries: Sequence[str]) -> list[list[int]]:
        return self._tokenizer.tokenize([str(q) for q in queries], update_vocab=False, return_as="ids", show_progress=False)

    def scores(self, queries: Sequence[str]) -> Iterator[np.ndarray]:
        """The full BM25 score vector over the pool, one query at a time (a 1M pool is 4 MB per query)."""
        for toks in self._tokens(queries):
            yield np.asarray(self._bm25.get_scores(toks), dtype=np.float32)

    def search(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k documents per query; documents sharing no term with the query (score 0) are not returned."""
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        pos = np.full((len(queries), k), -1, dtype=np.int64)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        if len(queries) == 0:
            return pos, scores
        kk = min(k, self.n)
        idx, sc = self._bm25.retrieve(self._tokens(queries), k=kk, show_progress=False, n_threads=0)
        idx, sc = np.asarray(idx, dtype=np.int64), np.asarray(sc, dtype=np.float32)
        keep = sc > 0
        pos[:, :kk] = np.where(keep, idx, -1)
        scores[:, :kk] = np.where(keep, sc, -np.inf)
        return pos, scores


def make_index(cfg: Config, embeddings: np.ndarray | None = None, texts: Sequence[str] | None = None) -> DenseIndex | BM25Index:
    """A DenseIndex over `embeddings` configured by cfg (index_type, IVF/HNSW knobs, GPU), or a BM25Index over `texts`."""
    if (embeddings is None) == (texts is None):
        raise ValueError("make_index needs exactly one of embeddings= (dense) or texts= (BM25)")
    if texts is not None:
        return BM25Index(texts)
    return DenseIndex(
        embeddings,
        cfg.index_type,
        nlist=cfg.ivf_nlist,
        nprobe=cfg.ivf_nprobe,
        hnsw_m=cfg.hnsw_m,
        ef_search=cfg.hnsw_ef_search,
        ef_construction=cfg.hnsw_ef_construction,
        use_gpu=cfg.index_use_gpu,
        seed=cfg.seed,
    )
