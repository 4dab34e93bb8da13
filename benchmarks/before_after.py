"""The JSON both before/after benchmarks write: the command, the machine, the first setting as `before`, the rest as
`after`, so `rollout.json` and `grpo.json` read the same way."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any


def write_before_after(out: str, script: str, settings: dict[str, Any], results: dict[str, dict], threads: int) -> None:
    from mrrec_lib.runs import write_json

    first = next(iter(results))
    write_json(
        Path(out),
        {
            "command": f"python benchmarks/{script} " + " ".join(sys.argv[1:]),
            **settings,
            "torch_threads": threads,
            "cpu_count": os.cpu_count(),
            "machine": platform.processor() or platform.machine(),
            "before": {first: results[first]},
            "after": {k: v for k, v in results.items() if k != first},
        },
    )
    print(f"wrote {out}")
