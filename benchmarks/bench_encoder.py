"""Encoding throughput of the item encoder on real item texts, and the time to embed the paper's pool.

Texts are real: product title + description from the AgenticShop grocery users (Amazon Reviews
2023 metadata) and review title + text from the Amazon 2023 All_Beauty histories in the shared
data folder. Reports items/s per batch size, token-length statistics, and the extrapolated
time to embed 1,058,417 items (Amazon-C4's pool) at the measured rate.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_encoder.py --out outputs/benchmarks/encoder.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from mrrec_lib.retrieval.encoder import DEFAULT_ENCODER, TextEncoder
from mrrec_lib.runs import write_json

PAPER_POOL = 1_058_417


def _join(x: object) -> str:
    return " ".join(str(v) for v in x) if isinstance(x, list) else str(x or "")


def real_item_texts(shared: Path, limit: int) -> dict[str, list[str]]:
    """Distinct real texts: grocery products (title + description) and beauty reviews (title + text)."""
    products: dict[str, None] = {}
    for body in json.loads((shared / "agenticshop/Grocery_and_Gourmet_Food.json").read_text()).values():
        entries = body[1]["review"] + [body[1]["target"]]
        for e in entries:
            p = e["product"]
            products[f"{p.get('title', '')}. {_join(p.get('description'))}".strip()] = None
    reviews: dict[str, None] = {}
    with open(shared / "amazon2023_beauty/test.jsonl") as f:
        for line in f:
            row = json.loads(line)
            for r in [*row["history"], row["target"]]:
                text = f"{r.get('title', '')}. {r.get('text', '')}".strip()
                if len(text) > 2:
                    reviews[text] = None
    return {"grocery_products": list(products)[:limit], "beauty_reviews": list(reviews)[:limit]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_ENCODER)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--limit", type=int, default=1000, help="texts per source")
    ap.add_argument("--shared", type=Path, default=Path(os.environ.get("MRREC_SHARED_DATA", "../shared/data")))
    ap.add_argument("--out", type=Path, default=Path("outputs/benchmarks/encoder.json"))
    args = ap.parse_args()

    sources = real_item_texts(args.shared, args.limit)
    t0 = time.perf_counter()
    enc = TextEncoder(args.model, device=args.device, max_length=args.max_length)
    load_s = time.perf_counter() - t0
    tok = enc.model.tokenizer
    report: dict = {
        "command": "python benchmarks/bench_encoder.py " + " ".join(sys.argv[1:]),
        "model": args.model,
        "device": enc.device,
        "nproc": os.cpu_count(),
        "cpu_model": next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), ""),
        "load_s": load_s,
        "runs": [],
    }
    enc.encode(["warm up"] * 8, kind="doc")
    for name, texts in sources.items():
        n_tok = np.array([len(tok(t, truncation=True, max_length=args.max_length)["input_ids"]) for t in texts])
        for bs in args.batch_sizes:
            enc.batch_size = bs
            load = os.getloadavg()[0]
            w, c = time.perf_counter(), time.process_time()
            enc.encode(texts, kind="doc")
            w, c = time.perf_counter() - w, time.process_time() - c
            cores = os.cpu_count() or 1
            run = {
                "source": name,
                "texts": len(texts),
                "mean_chars": float(np.mean([len(t) for t in texts])),
                "mean_tokens": float(n_tok.mean()),
                "truncated_share": float((n_tok >= args.max_length).mean()),
                "batch_size": bs,
                "wall_s": w,
                "cpu_s": c,
                "load1_before": load,
                "items_per_s_wall": len(texts) / w,
                "items_per_s_cpu_normalised": len(texts) / (c / cores),
            }
            run["paper_pool_hours_wall"] = PAPER_POOL / run["items_per_s_wall"] / 3600
            run["paper_pool_hours_cpu_normalised"] = PAPER_POOL / run["items_per_s_cpu_normalised"] / 3600
            report["runs"].append(run)
            print(
                f"{name} bs={bs}: {run['items_per_s_wall']:.0f} items/s wall ({run['items_per_s_cpu_normalised']:.0f} cpu-normalised), "
                f"mean {run['mean_tokens']:.0f} tokens -> 1,058,417 items in {run['paper_pool_hours_wall']:.1f} h "
                f"({run['paper_pool_hours_cpu_normalised']:.1f} h cpu-normalised)",
                flush=True,
            )
            write_json(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
