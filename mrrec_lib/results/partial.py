"""Stage-05 rows of a run that has not finished, kept under version control until it is recorded.

A full-size run's evaluation (hours of LLM rollouts over every system) outlasts a session, and outputs/ may be
gone in the next one, so a paused run would redo every evaluated request. The study therefore copies the run's
row caches (`logs/05_eval/<system>-<fingerprint>.jsonl`) to `results/partial/<run>/` when the run pauses or
fails, and copies them back before the run resumes. The fingerprint hashes the content of every input (data,
memory, policy weights), so saved rows are reused only where the rebuilt stages are bit-identical; anything
else is evaluated again. Each save adds only the rows not saved before, as one gzipped chunk per save
(`<cache stem>.<first row>.jsonl.gz`), so a run advanced over many sessions commits every row once. Beside the rows,
`inputs.json` lists the digest of every input file, so a later save can say which rebuilt input differs (why
saved rows were not reused) instead of leaving it to guesswork. Recording the run deletes its partial folder.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

from mrrec_lib.results.provenance import cpu_model
from mrrec_lib.runs import RunPaths, atomic_write_bytes, atomic_write_text, file_digest, read_jsonl

PARTIAL_DIR = "partial"
EVAL_LOGS = "05_eval"
INPUTS_FILE = "inputs.json"
_CHUNK = re.compile(r"^(?P<stem>.+)\.(?P<start>\d+)\.jsonl\.gz$")


def partial_dir(results: Path, run: str) -> Path:
    return results / PARTIAL_DIR / run


def _chunks(folder: Path) -> dict[str, list[tuple[int, Path]]]:
    """Saved chunks per cache stem, in row order."""
    out: dict[str, list[tuple[int, Path]]] = {}
    for p in sorted(folder.glob("*.jsonl.gz")) if folder.is_dir() else []:
        if m := _CHUNK.match(p.name):
            out.setdefault(m["stem"], []).append((int(m["start"]), p))
    return {stem: sorted(chunks) for stem, chunks in out.items()}


def _saved_lines(chunks: list[tuple[int, Path]]) -> list[str]:
    """The saved rows of one cache, checked to be contiguous: a gap means a chunk went missing."""
    lines: list[str] = []
    for start, p in chunks:
        if start != len(lines):
            raise ValueError(f"{p}: chunk starts at row {start} but the chunks before it hold {len(lines)} rows")
        lines += gzip.decompress(p.read_bytes()).decode("utf-8").splitlines()
    return lines


def input_digests(run_dir: Path) -> dict[str, str]:
    """Content hash of each file stage 05 reads from the run folder: data, memory, published policies."""
    from mrrec_lib.train.checkpoints import policy_files

    paths = RunPaths(run_dir)
    files = [*paths.data.glob("*.parquet"), *paths.memory_files()]
    files += [p for final in sorted(paths.models.glob("*/final")) for p in policy_files(final)]
    return {p.relative_to(paths.root).as_posix(): file_digest(p) for p in sorted(files)}


def changed_inputs(run_dir: Path, results: Path) -> list[str]:
    """Input files whose content differs from the session that saved the rows (new or missing files included)."""
    f = partial_dir(results, run_dir.name) / INPUTS_FILE
    if not f.exists():
        return []
    before, now = json.loads(f.read_text())["files"], input_digests(run_dir)
    return sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))


def saved_on(results: Path, run: str) -> str:
    """The CPU of the session that last saved the rows ("" if none): policies rebuild bit-identically only on the
    same kind of CPU, so it is the first suspect when `changed_inputs` names a policy."""
    f = partial_dir(results, run) / INPUTS_FILE
    return json.loads(f.read_text()).get("cpu_model", "") if f.exists() else ""


def save_partial(run_dir: Path, results: Path) -> dict[str, int]:
    """Save the rows of `run_dir`'s stage-05 caches not saved yet; rows saved per cache stem.

    Only complete lines count (a torn last line of a killed write is left for the evaluator to drop).
    """
    src = RunPaths(run_dir).logs / EVAL_LOGS
    dest = partial_dir(results, run_dir.name) / EVAL_LOGS
    chunks = _chunks(dest)
    saved: dict[str, int] = {}
    for cache in sorted(src.glob("*.jsonl")) if src.is_dir() else []:
        rows = [json.dumps(r) for r in read_jsonl(cache)]
        have = len(_saved_lines(chunks.get(cache.stem, [])))
        if len(rows) > have:
            new = "".join(line + "\n" for line in rows[have:]).encode("utf-8")
            atomic_write_bytes(dest / f"{cache.stem}.{have}.jsonl.gz", gzip.compress(new, mtime=0))
        if rows:
            saved[cache.stem] = max(len(rows), have)
    if saved:
        inputs = {"cpu_model": cpu_model(), "files": input_digests(run_dir)}
        atomic_write_text(dest.parent / INPUTS_FILE, json.dumps(inputs, indent=1, sort_keys=True))
    return saved


def restore_partial(results: Path, run_dir: Path) -> dict[str, int]:
    """Write each saved cache back into `run_dir` where the run folder holds fewer rows of it; rows per stem.

    The evaluator reads only the caches whose fingerprint its inputs give, so restoring every saved cache is
    safe: rows of a policy that retrained differently are simply never read.
    """
    src = partial_dir(results, run_dir.name) / EVAL_LOGS
    dest = RunPaths(run_dir).logs / EVAL_LOGS
    restored: dict[str, int] = {}
    for stem, chunks in _chunks(src).items():
        lines = _saved_lines(chunks)
        target = dest / f"{stem}.jsonl"
        if len(read_jsonl(target)) >= len(lines):
            continue
        atomic_write_text(target, "".join(line + "\n" for line in lines))
        restored[stem] = len(lines)
    return restored


def saved_rows(results: Path, run: str) -> dict[str, int]:
    """Rows saved per cache stem (`<system>-<fingerprint>`), for the study's plan."""
    return {stem: len(_saved_lines(c)) for stem, c in _chunks(partial_dir(results, run) / EVAL_LOGS).items()}


def drop_partial(results: Path, run: str) -> None:
    """Once the run is recorded its rows live in the record: the partial folder goes."""
    shutil.rmtree(partial_dir(results, run), ignore_errors=True)
    parent = results / PARTIAL_DIR
    if parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
