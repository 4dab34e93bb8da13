"""Reading raw files record by record, counting what is skipped and why.

A malformed line is never fatal and never silent: it lands in a `SkipLog`
under `<source>/<reason>` with the file and line of its first occurrences, and
stage 01 reports the totals.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_EXAMPLES_PER_REASON = 3


@dataclass
class SkipLog:
    """Counts of skipped records per `source/reason`, with a few examples of each."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, source: str, reason: str, where: str = "", n: int = 1) -> None:
        if n <= 0:
            return
        key = f"{source}/{reason}"
        self.counts[key] += n
        if where:
            ex = self.examples.setdefault(key, [])
            if len(ex) < _EXAMPLES_PER_REASON:
                ex.append(where)

    def total(self, source: str | None = None) -> int:
        return sum(v for k, v in self.counts.items() if source is None or k.startswith(f"{source}/"))

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


def iter_jsonl(path: Path, skips: SkipLog, source: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each JSON-object line; broken lines are counted, not raised."""
    if not path.exists():
        raise FileNotFoundError(f"{source}: input file not found: {path}")
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                skips.add(source, "malformed_json", f"{path.name}:{i}: {e.msg}")
                continue
            if not isinstance(obj, dict):
                skips.add(source, "not_an_object", f"{path.name}:{i}")
                continue
            yield i, obj


def read_records(path: Path, source: str, skips: SkipLog) -> list[dict[str, Any]]:
    """A JSON list of objects, a JSONL file or a CSV file, as a list of dicts (format from the suffix)."""
    if not path.exists():
        raise FileNotFoundError(f"{source}: input file not found: {path}")
    if path.suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))
    if path.suffix == ".jsonl":
        return [obj for _, obj in iter_jsonl(path, skips, source)]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{source}: {path} is not valid JSON: {e}") from e
    if not isinstance(data, list):
        raise ValueError(f"{source}: {path} must hold a JSON list of records, got {type(data).__name__}")
    return data


def require_keys(obj: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    """The required keys that are absent or null (empty list: the record is usable)."""
    return [k for k in keys if obj.get(k) is None]
