"""Where and from what a record was made: git state, machine, and the stage hashes it vouches for.

Written into record.json so that a number in the README can be traced to a commit and a config,
and so that `check_record` can tell later whether the current code still hashes the recorded
config the way the run's stages were hashed (a key added or moved to another stage changes it).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mrrec_lib import stages
from mrrec_lib.config import FIELDS, Config
from mrrec_lib.runs import STAGES, project_root

MAX_DIRTY_FILES = 20  # enough to see what was uncommitted without bloating the record


def _git(*args: str) -> str | None:
    """Output of a git command in the project, or None when git or the repository is unavailable."""
    try:
        done = subprocess.run(["git", *args], cwd=project_root(), capture_output=True, text=True, check=False)
    except OSError:
        return None
    return done.stdout.rstrip() if done.returncode == 0 else None


def git_state() -> dict[str, Any] | None:
    """HEAD and whether tracked files differ from it (untracked files, like the record itself, do not count)."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return None
    changed = [line[3:] for line in (_git("status", "--porcelain", "--untracked-files=no") or "").splitlines()]
    return {"commit": commit, "dirty": bool(changed), "dirty_files": changed[:MAX_DIRTY_FILES]}


def commit_before(timestamp: float) -> str | None:
    """The newest commit older than `timestamp`: the code a stage started on, if it ran on a committed tree."""
    return _git("rev-list", "-1", f"--before=@{int(timestamp)}", "HEAD") or None


def machine(cfg: Config) -> dict[str, Any]:
    """The recording machine: cores, torch threads (the config's num_threads when torch was not imported), load."""
    torch = sys.modules.get("torch")
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads() if torch else cfg.num_threads,
        "torch_threads_from": "torch" if torch else "config num_threads (0: torch's default)",
        "load_average": list(os.getloadavg()),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
    }


def cpu_model() -> str:
    """The CPU's model name: trained policies rebuild bit-identically only on the same kind of CPU (float kernels
    differ), so a record says which one made it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


def stage_entries(cfg: Config, records: dict[str, dict]) -> dict[str, dict[str, Any]]:
    """Per finished stage: the hash it ran with, the hash the current code gives the config, and its start commit."""
    out = {}
    for stage, rec in sorted(records.items()):
        start = rec["finished_at"] - rec.get("seconds", 0.0)
        out[stage] = {
            "name": STAGES.get(stage, stage),
            "hash": rec["hash"],
            "hash_at_record": stages.stage_hash(cfg, stage),
            "seconds": rec.get("seconds"),
            "finished_at": iso(rec["finished_at"]),
            "commit_before_start": commit_before(start),
        }
    return out


def key_stages() -> dict[str, str]:
    """The first stage of every config key ("ignored" for keys no hash covers), to explain a later hash change."""
    return {k: "ignored" if k in stages.IGNORED_KEYS else stages.first_stage(k) for k in sorted(FIELDS)}


def hash_problems(entries: dict[str, dict[str, Any]]) -> list[str]:
    """Stages whose recorded config no longer hashes to what they ran with (config.yaml rewritten, or code changed)."""
    return [
        f"stage {e['name']} ran with config hash {e['hash']}, but config.yaml hashes to {e['hash_at_record']} "
        "(config.yaml was rewritten by a later `mrrec run` with other params, or the key set changed since)"
        for e in entries.values()
        if e["hash"] != e["hash_at_record"]
    ]


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
