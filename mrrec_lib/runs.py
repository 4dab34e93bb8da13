"""Where a run's artefacts live, and how stages hand them to each other.

One folder per run: `outputs/<run>/{data,memory,models,metrics,figures,notebooks,logs}`.
Every write is atomic (temp file + rename) so a killed stage never leaves a
half-written file that the next stage would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mrrec_lib.config import Config

STAGES = {
    "01": "01_data_prep",
    "02": "02_memory_construction",
    "03": "03_sft_warmup",
    "04": "04_rl_training",
    "05": "05_evaluation",
    "06": "06_ablations",
    "07": "07_assistant",
}


class MissingStageError(FileNotFoundError):
    """A stage's input is absent because an upstream stage has not run in this run folder."""


def project_root() -> Path:
    """The repository root: $MRREC_ROOT, else the nearest parent holding pyproject.toml + mrrec_lib."""
    env = os.environ.get("MRREC_ROOT")
    if env:
        return Path(env).resolve()
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for p in (start, *start.parents):
            if (p / "pyproject.toml").exists() and (p / "mrrec_lib").is_dir():
                return p
    return Path.cwd()


def resolve(path: str | Path, base: Path | None = None) -> Path:
    """Expand ~ and make relative paths relative to the project root (not the notebook's cwd)."""
    p = Path(os.path.expanduser(str(path)))
    return p if p.is_absolute() else (base or project_root()) / p


def shared_data_path(cfg: Config, rel: str) -> Path:
    """A file under the shared data folder ($MRREC_SHARED_DATA overrides the config)."""
    base = os.environ.get("MRREC_SHARED_DATA") or cfg.shared_data_dir
    return resolve(base) / rel


def ablation_summary_file(cfg: Config) -> Path:
    """Where `mrrec ablate` writes, and notebook 06 reads, the batch summary: beside the runs it summarises."""
    return resolve(cfg.ablation_summary or Path(cfg.outputs_dir) / "ablations" / "summary.csv")


def cache_dir(cfg: Config | None = None) -> Path:
    d = resolve(os.environ.get("MRREC_CACHE") or (cfg.cache_dir if cfg else "~/.cache/mrrec"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def embedding_cache_dir(cfg: Config | None = None) -> Path:
    """Content-keyed embeddings shared by every run, so item and request vectors are encoded once."""
    return cache_dir(cfg) / "emb"


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def memory(self) -> Path:
        return self.root / "memory"

    def memory_files(self) -> list[Path]:
        """The built memory, without parts/: the builders' resumption logs, which also hold each batch's timings."""
        return [p for p in self.memory.rglob("*") if p.is_file() and "parts" not in p.relative_to(self.memory).parts]

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def notebooks(self) -> Path:
        return self.root / "notebooks"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def config_file(self) -> Path:
        return self.root / "config.yaml"

    def ensure(self) -> RunPaths:
        for d in (self.data, self.memory, self.models, self.metrics, self.figures, self.notebooks, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        return self

    def require(self, path: Path, stage: str) -> Path:
        """Return `path`, or fail naming the stage that should have produced it."""
        if not path.exists():
            name = STAGES.get(stage, stage)
            raise MissingStageError(
                f"{path} is missing: stage {name} has not run for run folder {self.root}. "
                f"Run it first, e.g. `mrrec run {self.config_file} --only {stage}`."
            )
        return path

    def metrics_file(self, stage: str) -> Path:
        return self.metrics / f"{stage}.json"


def run_paths(cfg: Config) -> RunPaths:
    return RunPaths(resolve(cfg.outputs_dir) / cfg.run_name).ensure()


def file_stamps(files: list[Path], root: Path) -> list[str]:
    """Path, size and mtime of each file: a cheap identity that changes when a file is rewritten, without reading it."""
    return [f"{p.relative_to(root)}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(files) if p.is_file()]


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, memoised on (path, size, mtime) so the several systems of one evaluation hash a
    big input (the item table, the memory) once."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def file_digests(files: list[Path], root: Path) -> list[str]:
    """Path and content hash of each file: unlike `file_stamps`, equal when a later session rebuilds the same bytes,
    so results keyed on it (stage 05's row caches) survive a lost outputs/ folder when the stages are deterministic."""
    return [f"{p.relative_to(root)}:{file_digest(p)}" for p in sorted(files) if p.is_file()]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _finite(o: Any) -> Any:
    """NaN/inf become null: json.dumps would write bare NaN, which is not JSON and breaks readers."""
    if isinstance(o, float) and (o != o or o in (float("inf"), float("-inf"))):
        return None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_finite(v) for v in o]
    return o


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return _finite(float(o))
    if isinstance(o, np.ndarray):
        return _finite(o.tolist())
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path: Path, obj: Any) -> Path:
    atomic_write_text(path, json.dumps(_finite(obj), indent=2, default=_jsonable, allow_nan=False))
    return path


def read_json(path: Path, stage: str | None = None) -> Any:
    if not path.exists():
        if stage:
            raise MissingStageError(f"{path} is missing: stage {STAGES.get(stage, stage)} has not run")
        raise FileNotFoundError(path)
    return json.loads(path.read_text())


def write_parquet(df: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path


def append_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append rows and fsync: resumable stages log finished work this way."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, default=_jsonable) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Replace a JSONL log atomically (e.g. cut back to a resumed checkpoint)."""
    atomic_write_text(path, "".join(json.dumps(r, default=_jsonable) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSONL file, ignoring a torn last line left by a kill mid-write."""
    if not path.exists():
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows
