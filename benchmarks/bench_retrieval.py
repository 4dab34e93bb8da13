"""Exact vs approximate top-1000 inner-product search at the paper's pool size (1,058,417 items).

Synthetic pools are unit vectors drawn from a Gaussian mixture (clusters of a few hundred
items, like product neighbourhoods), so IVF/HNSW recall is meaningful rather than the
degenerate case of uniform noise. For every pool size it measures:

- exact search: `mrrec_lib` DenseIndex("flat") (BLAS score tiles + faiss heaps, the code path the
  item retriever uses) and, on a subset of queries, plain `faiss.IndexFlatIP` for comparison;
- IVF-Flat at several nprobe and HNSW-Flat at several efSearch: build time, queries/s, memory
  (RSS delta and index bytes), and recall@k against the exact top-k.

Throughput is reported both as wall-clock queries/s and as "CPU-normalised" queries/s
(queries / (process CPU seconds / cores)): on a shared machine, other processes slow the wall
clock but not the CPU time a search needs. The 1-minute load average is recorded with each run.

    .venv/bin/python benchmarks/bench_retrieval.py --sizes 10000 100000 1058417 --out outputs/benchmarks/retrieval.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

from mrrec_lib.retrieval.index import DenseIndex
from mrrec_lib.runs import write_json

PAPER_POOL = 1_058_417


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def clustered_unit_vectors(n: int, dim: int, args: argparse.Namespace, seed: int) -> np.ndarray:
    """n unit vectors from a two-level Gaussian mixture, written in chunks (one n x dim copy).

    Categories (random directions) hold sub-clusters (category + noise of norm `sub_spread`), which hold
    items (sub-cluster + noise of norm `spread`): like a product pool, where a request's top-1000 spans its
    own product family and related ones in the same category rather than random far-away items.
    """
    rng = np.random.default_rng(seed)

    def noise(m: int, norm: float) -> np.ndarray:
        return rng.standard_normal((m, dim), dtype=np.float32) * np.float32(norm / np.sqrt(dim))

    n_sub = max(1, n // args.cluster_size)
    n_cat = max(1, n // args.category_size)
    cats = _unit(rng.standard_normal((n_cat, dim), dtype=np.float32))
    subs = _unit(cats[rng.integers(0, n_cat, n_sub)] + noise(n_sub, args.sub_spread))
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 65_536):
        m = min(65_536, n - s)
        out[s : s + m] = _unit(subs[rng.integers(0, n_sub, m)] + noise(m, args.spread))
    return out


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def timed(fn: Callable[[], object]) -> tuple[object, dict[str, float]]:
    load = os.getloadavg()[0]
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    w, c = time.perf_counter() - w, time.process_time() - c
    return out, {"wall_s": w, "cpu_s": c, "load1_before": load, "load1_after": os.getloadavg()[0]}


def throughput(search: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], queries: np.ndarray) -> tuple[np.ndarray, dict]:
    search(queries[: min(8, len(queries))])  # warm-up: page in, thread pools up
    (ids, _), t = timed(lambda: search(queries))
    cores = os.cpu_count() or 1
    t["queries"] = len(queries)
    t["qps_wall"] = len(queries) / t["wall_s"]
    t["qps_cpu_normalised"] = len(queries) / (t["cpu_s"] / cores)
    return ids, t


def rank_cost(idx: DenseIndex, q: np.ndarray) -> dict:
    """Cost of one exact-rank call (`ItemRetriever.ranks`' full scan) for a batch of len(q) texts."""
    targets = np.arange(len(q))
    thr = np.einsum("ij,ij->i", q, idx.vectors(targets))
    _, t = timed(lambda: idx.exact_counts(q, thr, exclude=targets))
    t["texts"] = len(q)
    t["ms_per_text_cpu_normalised"] = 1000 * t["cpu_s"] / (os.cpu_count() or 1) / len(q)
    print(f"  exact ranks, batch {len(q)}: {t['wall_s']:.2f} s wall, {t['cpu_s']:.2f} CPU s", flush=True)
    return t


def recall_vs_exact(approx: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    return float(np.mean([np.intersect1d(a[a >= 0], e).size / k for a, e in zip(approx, exact, strict=True)]))


def index_bytes(idx: DenseIndex) -> int:
    n, d = idx.n, idx.dim
    if idx.index_type == "flat":
        return n * d * 4
    if idx.index_type == "ivf":
        return n * (d * 4 + 8) + idx._faiss.nlist * d * 4
    return n * d * 4 + idx._faiss.hnsw.neighbors.size() * 4 + idx._faiss.hnsw.levels.size() * 4


def default_nlist(n: int) -> int:
    """~4 sqrt(n), a power of two, at least 39 training points per list."""
    p = 2 ** int(round(np.log2(4 * np.sqrt(n))))
    return int(max(1, min(p, n // 39)))


def bench_pool(n: int, dim: int, args: argparse.Namespace, res: dict, save: Callable[[], None]) -> None:
    """Fill `res` section by section, calling `save` after each (a killed 1M run keeps what it measured)."""
    res.update({"n": n, "dim": dim, "k": args.k, "queries": args.queries})
    (xb, t) = timed(lambda: clustered_unit_vectors(n, dim, args, args.seed))
    res["generate_s"] = t["wall_s"]
    # queries near the pool's own clusters: a random pool item plus noise of norm ~0.5
    rng = np.random.default_rng(args.seed + 1)
    q = xb[rng.integers(0, n, args.queries)] + rng.standard_normal((args.queries, dim), dtype=np.float32) * np.float32(0.5 / np.sqrt(dim))
    q /= np.linalg.norm(q, axis=1, keepdims=True)

    rss0 = rss_bytes()
    flat, t = timed(lambda: DenseIndex(xb, "flat"))
    exact_ids, tp = throughput(lambda x: flat.search(x, args.k), q)
    res["exact_mrrec"] = {"build": t, "search": tp, "rss_delta_bytes": rss_bytes() - rss0, "index_bytes": index_bytes(flat)}
    print(f"[{n:,} x {dim}] exact (mrrec flat): {tp['qps_wall']:.1f} q/s wall, {tp['qps_cpu_normalised']:.1f} cpu-normalised", flush=True)
    res["exact_ranks"] = [rank_cost(flat, q[:m]) for m in args.rank_batches]
    save()

    if args.faiss_flat_queries:
        sub = q[: args.faiss_flat_queries]
        rss0 = rss_bytes()
        fidx = faiss.IndexFlatIP(dim)
        _, t = timed(lambda: fidx.add(xb))
        fids, tp = throughput(lambda x: fidx.search(x, args.k)[::-1], sub)  # faiss returns (scores, ids)
        res["exact_faiss_flat"] = {
            "build": t,
            "search": tp,
            "rss_delta_bytes": rss_bytes() - rss0,
            "recall_vs_mrrec_flat": recall_vs_exact(fids, exact_ids[: len(sub)]),
        }
        print(f"[{n:,} x {dim}] exact (faiss IndexFlatIP, {len(sub)} q): {tp['qps_wall']:.1f} q/s wall, {tp['qps_cpu_normalised']:.1f} cpu-normalised", flush=True)
        save()
        del fidx
        gc.collect()

    nlist = args.nlist or default_nlist(n)
    rss0 = rss_bytes()
    ivf, t = timed(lambda: DenseIndex(xb, "ivf", nlist=nlist, seed=args.seed))
    res["ivf"] = {"nlist": ivf._faiss.nlist, "build": t, "rss_delta_bytes": rss_bytes() - rss0, "index_bytes": index_bytes(ivf), "runs": []}
    print(f"[{n:,} x {dim}] IVF{ivf._faiss.nlist} built in {t['wall_s']:.0f} s ({t['cpu_s']:.0f} CPU s)", flush=True)
    for nprobe in args.nprobe:
        ivf.nprobe = nprobe
        ids, tp = throughput(lambda x, i=ivf: i.search(x, args.k), q)
        r = recall_vs_exact(ids, exact_ids)
        res["ivf"]["runs"].append({"nprobe": nprobe, "search": tp, f"recall@{args.k}": r})
        print(f"[{n:,} x {dim}] IVF{ivf._faiss.nlist} nprobe={nprobe}: {tp['qps_wall']:.1f} q/s wall, {tp['qps_cpu_normalised']:.1f} cpu-normalised, recall {r:.4f}", flush=True)
        save()
    del ivf
    gc.collect()

    if n <= args.hnsw_max_n:
        rss0 = rss_bytes()
        hnsw, t = timed(lambda: DenseIndex(xb, "hnsw", hnsw_m=args.hnsw_m, ef_construction=args.ef_construction))
        res["hnsw"] = {"M": args.hnsw_m, "ef_construction": args.ef_construction, "build": t, "rss_delta_bytes": rss_bytes() - rss0, "index_bytes": index_bytes(hnsw), "runs": []}
        print(f"[{n:,} x {dim}] HNSW{args.hnsw_m} built in {t['wall_s']:.0f} s ({t['cpu_s']:.0f} CPU s)", flush=True)
        for ef in args.ef_search:
            hnsw.ef_search = ef
            ids, tp = throughput(lambda x, h=hnsw: h.search(x, args.k), q)
            r = recall_vs_exact(ids, exact_ids)
            res["hnsw"]["runs"].append({"ef_search": ef, "search": tp, f"recall@{args.k}": r})
            print(f"[{n:,} x {dim}] HNSW efSearch={ef}: {tp['qps_wall']:.1f} q/s wall, {tp['qps_cpu_normalised']:.1f} cpu-normalised, recall {r:.4f}", flush=True)
            save()
        del hnsw


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), platform.processor())
    info = {"nproc": os.cpu_count(), "cpu_model": cpu, "faiss": faiss.__version__, "numpy": np.__version__, "faiss_omp_threads": faiss.omp_get_max_threads()}
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [{k: p.get(k) for k in ("internal_api", "num_threads", "architecture")} for p in threadpool_info()]
    except ImportError:
        pass
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, PAPER_POOL])
    ap.add_argument("--dims", type=int, nargs="+", default=[384])
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--cluster-size", type=int, default=500, help="mean items per mixture component")
    ap.add_argument("--category-size", type=int, default=20_000, help="mean items per top-level category")
    ap.add_argument("--sub-spread", type=float, default=1.0, help="sub-cluster noise norm around its category")
    ap.add_argument("--spread", type=float, default=0.8, help="item noise norm around its sub-cluster")
    ap.add_argument("--nlist", type=int, default=0, help="IVF lists (0: ~4 sqrt(n), power of two)")
    ap.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=80)
    ap.add_argument("--ef-search", type=int, nargs="+", default=[1000, 2000])
    ap.add_argument("--hnsw-max-n", type=int, default=PAPER_POOL, help="skip HNSW above this pool size")
    ap.add_argument("--faiss-flat-queries", type=int, default=200, help="queries for the plain IndexFlatIP comparison (0: skip)")
    ap.add_argument("--rank-batches", type=int, nargs="*", default=[1, 8, 64], help="texts per exact-rank call timed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("outputs/benchmarks/retrieval.json"))
    args = ap.parse_args()

    report = {"command": "python benchmarks/bench_retrieval.py " + " ".join(sys.argv[1:]), "machine": machine(), "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "pools": []}
    for dim in args.dims:
        for n in args.sizes:
            res: dict = {}
            report["pools"].append(res)
            bench_pool(n, dim, args, res, lambda: write_json(args.out, report))
            gc.collect()
    print(json.dumps(report["machine"]), f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
