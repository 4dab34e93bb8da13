"""Load time and generation throughput of a local chat model: `python -m mrrec_lib.llm.bench --help`.

Tokens/s counts only tokens actually generated (greedy, up to EOS or the cap),
with the response cache off, after one warm-up call per batch size. Tokens per
CPU-second is reported too: on a shared machine wall-clock throughput mostly
measures the other processes, CPU time much less so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

REQUESTS = [
    "a gentle face cleanser for dry skin that I can use every morning",
    "a loose-leaf green tea for my afternoon break at the office",
    "a lightweight rain jacket for hiking in spring",
    "a gluten-free snack to pack for my kids' school lunches",
    "a moisturizing shampoo for curly hair",
    "a reusable water bottle that keeps drinks cold on long runs",
    "a fragrance-free sunscreen for sensitive skin",
    "a dark roast coffee for my espresso machine",
]


def conversations(batch: int) -> list[list[dict[str, str]]]:
    return [
        [
            {"role": "system", "content": "You are a shopping assistant. Describe the ideal product in detail."},
            {"role": "user", "content": f"I am looking for {REQUESTS[i % len(REQUESTS)]}."},
        ]
        for i in range(batch)
    ]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch default")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    start, start_cpu = time.perf_counter(), time.process_time()
    import torch

    from mrrec_lib.config import Config
    from mrrec_lib.llm import Sampling, TransformersChat, load_causal_lm

    imported = time.perf_counter()
    cfg = Config(device=args.device, num_threads=args.threads)
    model, tokenizer = load_causal_lm(args.model, cfg)
    loaded, loaded_cpu = time.perf_counter(), time.process_time()
    result = {
        "model": args.model,
        "device": str(next(model.parameters()).device),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "import_seconds": round(imported - start, 2),
        "load_seconds": round(loaded - imported, 2),
        "import_and_load_cpu_seconds": round(loaded_cpu - start_cpu, 2),
        "runs": [],
    }
    sampling = Sampling(max_new_tokens=args.max_new_tokens)
    for batch in args.batch_sizes:
        llm = TransformersChat(model, tokenizer, name=args.model, batch_size=batch)
        llm.chat(conversations(batch), Sampling(max_new_tokens=4))  # warm-up
        llm.usage.completion_tokens = llm.usage.prompt_tokens = 0
        llm.usage.seconds = 0.0
        cpu = time.process_time()
        for _ in range(args.repeats):
            llm.chat(conversations(batch), sampling)
        cpu = time.process_time() - cpu
        u = llm.usage
        result["runs"].append(
            {
                "batch": batch,
                "generated_tokens": u.completion_tokens,
                "prompt_tokens": u.prompt_tokens,
                "seconds": round(u.seconds, 2),
                "tokens_per_second": round(u.completion_tokens / u.seconds, 1),
                "cpu_seconds": round(cpu, 2),
                "tokens_per_cpu_second": round(u.completion_tokens / cpu, 1),
                "seconds_per_batch": round(u.seconds / args.repeats, 2),
            }
        )
    result["load_average_at_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
