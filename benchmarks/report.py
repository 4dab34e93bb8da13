"""Render the benchmark JSON files as the markdown tables of docs/results.md (numbers are never typed by hand).

    .venv/bin/python benchmarks/report.py outputs/benchmarks/retrieval.json outputs/benchmarks/encoder.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EXACT_TARGET_QPS = 100
APPROX_RECALL, APPROX_SPEEDUP = 0.95, 5


def _mb(b: float | None) -> str:
    return "" if b is None else f"{b / 2**20:,.0f}"


def _row(method: str, params: str, build: dict | None, search: dict, recall: float | None, index_b: int | None, rss_b: int | None) -> str:
    b = f"{build['wall_s']:.1f} / {build['cpu_s']:.1f}" if build else ""
    r = "" if recall is None else f"{recall:.4f}"
    return (
        f"| {method} | {params} | {b} | {search['qps_wall']:,.1f} | {search['qps_cpu_normalised']:,.1f} | {r} | "
        f"{_mb(index_b)} | {_mb(rss_b)} | {search['load1_before']:.1f} |"
    )


def retrieval_tables(rep: dict) -> list[str]:
    m = rep["machine"]
    blas = ", ".join(f"{b['internal_api']} ({b.get('architecture')})" for b in m.get("blas", []))
    out = [
        f"Machine: {m['nproc']} cores, {m['cpu_model']}; faiss {m['faiss']}, numpy {m['numpy']}; "
        f"BLAS: {blas}.",
        "",
        f"Command: `{rep['command']}`",
        "",
    ]
    for p in rep["pools"]:
        k = p["k"]
        out += [
            f"**{p['n']:,} x {p['dim']}**, {p['queries']} queries, top-{k}",
            "",
            f"| method | params | build s (wall / CPU) | q/s wall | q/s CPU-normalised | recall@{k} | index MB | RSS delta MB | load1 |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        e = p["exact_mrrec"]
        out.append(_row("exact (mrrec DenseIndex flat)", "BLAS tiles + faiss heaps", e["build"], e["search"], 1.0, e["index_bytes"], e["rss_delta_bytes"]))
        if "exact_faiss_flat" in p:
            f = p["exact_faiss_flat"]
            out.append(_row("exact (faiss IndexFlatIP)", f"{f['search']['queries']} queries", f["build"], f["search"], f.get("recall_vs_mrrec_flat"), None, f["rss_delta_bytes"]))
        if "ivf" in p:
            v = p["ivf"]
            for i, r in enumerate(v["runs"]):
                out.append(_row("IVF-Flat", f"nlist {v['nlist']}, nprobe {r['nprobe']}", v["build"] if i == 0 else None, r["search"], r[f"recall@{k}"], v["index_bytes"] if i == 0 else None, v["rss_delta_bytes"] if i == 0 else None))
        if "hnsw" in p:
            h = p["hnsw"]
            for i, r in enumerate(h["runs"]):
                out.append(_row("HNSW-Flat", f"M {h['M']}, efC {h['ef_construction']}, efSearch {r['ef_search']}", h["build"] if i == 0 else None, r["search"], r[f"recall@{k}"], h["index_bytes"] if i == 0 else None, h["rss_delta_bytes"] if i == 0 else None))
        ranks = ", ".join(f"{r['texts']} texts {r['wall_s']:.2f} s wall / {r['cpu_s']:.2f} CPU s" for r in p.get("exact_ranks", []))
        out += ["", *target_check(p), *([f"- one exact-rank call (full scan): {ranks}."] if ranks else []), ""]
    return out


def target_check(p: dict) -> list[str]:
    k = p["k"]
    exact = p["exact_mrrec"]["search"]
    lines = [
        f"- exact top-{k}: {exact['qps_cpu_normalised']:,.1f} q/s CPU-normalised ({exact['qps_wall']:,.1f} wall) "
        f"vs target {EXACT_TARGET_QPS}: {'met' if exact['qps_cpu_normalised'] >= EXACT_TARGET_QPS else 'MISSED'} (CPU-normalised)."
    ]
    ok = [
        (name, r, r["search"]["qps_cpu_normalised"] / exact["qps_cpu_normalised"])
        for name, key in (("IVF", "ivf"), ("HNSW", "hnsw"))
        for r in p.get(key, {}).get("runs", [])
        if r[f"recall@{k}"] >= APPROX_RECALL
    ]
    if ok:
        name, r, speedup = max(ok, key=lambda t: t[2])
        knob = f"nprobe {r['nprobe']}" if "nprobe" in r else f"efSearch {r['ef_search']}"
        lines.append(
            f"- fastest approximate index with recall@{k} >= {APPROX_RECALL}: {name} {knob}, recall {r[f'recall@{k}']:.4f}, "
            f"{speedup:.2f}x exact (CPU-normalised) vs target {APPROX_SPEEDUP}x: {'met' if speedup >= APPROX_SPEEDUP else 'MISSED'}."
        )
    else:
        lines.append(f"- no approximate setting reached recall@{k} >= {APPROX_RECALL}.")
    return lines


def encoder_table(rep: dict) -> list[str]:
    out = [
        f"Encoder `{rep['model']}` on {rep['device']}, {rep['nproc']} cores, {rep['cpu_model']}; model load {rep['load_s']:.1f} s.",
        "",
        f"Command: `{rep['command']}`",
        "",
        "| texts | n | mean chars | mean tokens | batch | items/s wall | items/s CPU-normalised | 1,058,417 items, h (wall / CPU-normalised) | load1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rep["runs"]:
        out.append(
            f"| {r['source']} | {r['texts']} | {r['mean_chars']:.0f} | {r['mean_tokens']:.0f} | {r['batch_size']} | "
            f"{r['items_per_s_wall']:.1f} | {r['items_per_s_cpu_normalised']:.1f} | "
            f"{r['paper_pool_hours_wall']:.1f} / {r['paper_pool_hours_cpu_normalised']:.1f} | {r['load1_before']:.1f} |"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", type=Path, nargs="+")
    args = ap.parse_args()
    for f in args.files:
        rep = json.loads(f.read_text())
        print("\n".join(retrieval_tables(rep) if "pools" in rep else encoder_table(rep)), end="\n\n")


if __name__ == "__main__":
    main()
