"""The scale benchmark's own pieces on a tiny pool (the real runs are in docs/results.md)."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_retrieval", ROOT / "benchmarks" / "bench_retrieval.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_retrieval_tiny_run(tmp_path, monkeypatch):
    bench = load_bench()
    out = tmp_path / "r.json"
    argv = ["bench_retrieval.py", "--sizes", "2000", "--queries", "40", "--k", "50", "--nprobe", "4", "51",
            "--ef-search", "64", "--faiss-flat-queries", "10", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    bench.main()
    pool = json.loads(out.read_text())["pools"][0]
    assert pool["exact_faiss_flat"]["recall_vs_mrrec_flat"] > 0.99  # both exact
    recalls = [r["recall@50"] for r in pool["ivf"]["runs"]]
    assert 0 < recalls[0] <= recalls[1] and recalls[1] == 1.0  # nprobe = nlist is exhaustive
    assert pool["ivf"]["nlist"] == 51 and pool["hnsw"]["runs"][0]["search"]["qps_wall"] > 0
    assert pool["exact_mrrec"]["index_bytes"] == 2000 * 384 * 4
    assert [r["texts"] for r in pool["exact_ranks"]] == [1, 8, 40]  # batch 64 capped at the 40 queries


def test_synthetic_pool_is_clustered_unit_vectors():
    bench = load_bench()
    args = type("A", (), {"cluster_size": 100, "category_size": 1000, "sub_spread": 1.0, "spread": 0.8})
    x = bench.clustered_unit_vectors(3000, 64, args, seed=0)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    s = x[:200] @ x.T
    top = np.sort(s, axis=1)[:, -11:-1].mean()  # 10 nearest others
    assert top > 0.4 and abs(np.median(s)) < 0.1  # tight neighbourhoods, unrelated items near orthogonal
