"""Ablation runs: one run per params delta, sharing identical upstream stages.

Before a run starts, the longest prefix of stages whose config hashes match a
finished run (any folder under outputs/) is seeded from that donor: big,
immutable artefacts (data, memory, checkpoints) are hard-linked, small mutable
ones (logs, figures) copied. Then `runner.run` skips the seeded stages. A
failing run is reported, not raised, so the study (`mrrec_lib.study`, which
orders, budgets and records these runs) goes on.
"""

from __future__ import annotations

import os
import shutil
import traceback
from pathlib import Path

import pandas as pd

from mrrec_lib import runner, stages
from mrrec_lib.config import Config, load_config
from mrrec_lib.runs import RunPaths, atomic_write_text, read_json, resolve, write_json

# Per stage, the run-folder subpaths it produces that later stages only read.
STAGE_ARTEFACTS: dict[str, tuple[str, ...]] = {
    "01": ("data",),
    "02": ("memory",),
    "03": ("models/sft",),
    "04": ("models/grpo", "models/recr1"),
    "05": (),
}


def scale_name(scale: Path) -> str:
    """The run-name part a scale overlay adds: its file stem, dashed (params/eval/grpo_probe.yaml -> grpo-probe)."""
    return scale.stem.replace("_", "-")


def run_files(base: Path, delta: Path | None, scale: Path | None = None) -> list[Path]:
    """Base, then the delta, then the scale overlay: the scale's budget keys win, as in the manual recipes."""
    return [base, *(f for f in (delta, scale) if f is not None)]


def run_config(base: Path, delta: Path | None, scale: Path | None = None) -> Config:
    """The merged config of the base (delta None) or of base + delta, with the scale overlay last.

    A delta without its own name runs as abl-<stem>, or <scale>-<stem> under a scale (grpo-probe-no_local_memory);
    the base under a scale runs as <base run>-<scale> (default-grpo-probe), the names the session-sized recipes
    in params/eval/ use, so their committed records count for the study.
    """
    cfg = load_config(*run_files(base, delta, scale))
    base_name = load_config(base).run_name
    if cfg.run_name != base_name:
        return cfg
    if delta is not None:
        name = f"{scale_name(scale)}-{delta.stem}" if scale is not None else f"abl-{delta.stem}"
    elif scale is not None:
        name = f"{base_name}-{scale_name(scale)}"
    else:
        return cfg
    return load_config(*run_files(base, delta, scale), overrides={"run_name": name})


def _matching_prefix(cfg: Config, donor: RunPaths) -> list[str]:
    records = stages.read_records(donor)
    prefix = []
    for stage in STAGE_ARTEFACTS:
        rec = records.get(stage)
        if not rec or rec["hash"] != stages.stage_hash(cfg, stage):
            break
        prefix.append(stage)
    return prefix


def _link_tree(src: Path, dst: Path) -> None:
    if not src.exists():
        return
    if dst.exists():
        shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
    if src.is_dir():
        shutil.copytree(src, dst, copy_function=os.link)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.link(src, dst)


def seed_from_donor(
    cfg: Config, paths: RunPaths, outputs: Path, last_stage: str | None = None
) -> tuple[str | None, list[str]]:
    """Copy the longest matching finished stage prefix (up to `last_stage`, if given) from another run into `paths`."""
    if stages.read_records(paths):
        return None, []
    best: tuple[RunPaths | None, list[str]] = (None, [])
    for folder in sorted(outputs.iterdir()) if outputs.exists() else []:
        if folder == paths.root or not (folder / "stages.json").exists():
            continue
        donor = RunPaths(folder)
        prefix = [st for st in _matching_prefix(cfg, donor) if last_stage is None or st <= last_stage]
        if len(prefix) > len(best[1]):
            best = (donor, prefix)
    donor, prefix = best
    if donor is None:
        return None, []
    records = stages.read_records(donor)
    for stage in prefix:
        for sub in STAGE_ARTEFACTS[stage]:
            _link_tree(donor.root / sub, paths.root / sub)
        # Only the shared stages' files: a later stage's logs would be appended to by this run's own rerun
        # of that stage (e.g. another SFT's loss curve continuing the donor's).
        for kind in ("metrics", "notebooks", "figures", "logs"):
            for f in (donor.root / kind).glob(f"{stage}_*"):
                if f.is_dir():
                    shutil.copytree(f, paths.root / kind / f.name, dirs_exist_ok=True)
                else:
                    shutil.copy2(f, paths.root / kind / f.name)
    write_json(paths.root / "stages.json", {s: records[s] for s in prefix})
    return donor.root.name, prefix


def share_finished_stages(cfg: Config, paths: RunPaths, last_stage: str | None = None) -> None:
    """`seed_from_donor` from the runs beside this one (under outputs_dir), saying what was shared (`--share`)."""
    donor, shared = seed_from_donor(cfg, paths, resolve(cfg.outputs_dir), last_stage)
    print(f"shared from {donor}: stages {', '.join(shared)}" if donor else "no run shares a finished stage")


def run_one(
    base: Path,
    delta: Path | None,
    only: str | None,
    outputs: Path,
    scale: Path | None = None,
    deadline: float | None = None,
) -> dict:
    """Seed the run from a donor, run its stages until `deadline` (a `time.time()` value); the outcome as a dict
    (status "ok", "paused" with the stage and minutes, or "failed"; never raised)."""
    name = delta.stem if delta else "base"
    try:
        cfg = run_config(base, delta, scale)
        files = run_files(base, delta, scale)
        cfg_paths = runner.prepare_run(files, {"run_name": cfg.run_name})[1]
        donor, shared = seed_from_donor(cfg, cfg_paths, outputs)
        runner.run(files, only=only, overrides={"run_name": cfg.run_name}, deadline=deadline)
        return {"ablation": name, "run": cfg.run_name, "status": "ok", "shared_from": donor, "shared_stages": shared}
    except runner.StagePaused as e:
        return {"ablation": name, "run": cfg.run_name, "status": "paused", "stage": e.stage, "error": str(e),
                "shared_from": donor, "shared_stages": shared}  # fmt: skip
    except Exception as e:  # one failing configuration must not stop the study
        return {
            "ablation": name,
            "run": None,
            "status": "failed",
            "error": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc(limit=3),
        }


def train_recr1_companion(
    params: list[str | Path], overrides: dict | None, cfg: Config, deadline: float | None = None
) -> None:
    """Stages 01-04 of the Rec-R1 run this run's Table 1 reads, so one `mrrec run` fills every row.

    The companion is this run's params plus the `eval_recr1_params` delta, in folder
    `eval_recr1_run`; it reuses this run's data and memory (hard links) and skips
    whatever is already current, so a second call costs nothing.
    """
    delta = resolve(cfg.eval_recr1_params)
    if not delta.exists():
        raise FileNotFoundError(f"eval_recr1_params: Rec-R1 params delta not found: {delta}")
    files = [*params, delta]
    companion = {**(overrides or {}), "run_name": cfg.eval_recr1_run}
    if load_config(*files, overrides=companion).policy_uses_memory:
        raise ValueError(f"eval_recr1_params {delta} must set policy_uses_memory: false (Rec-R1 has no memory)")
    seed_from_donor(*runner.prepare_run(files, companion), resolve(cfg.outputs_dir))
    runner.run(files, only="01,02,03,04", overrides=companion, deadline=deadline)


def flatten_metrics(run_dir: Path) -> list[dict]:
    """One row per evaluated system of a run, from its recorded metrics/05_eval.json."""
    f = run_dir / "metrics" / "05_eval.json"
    if not f.exists():
        return []
    ev = read_json(f)
    rows = []
    for system, res in ev.get("systems", {}).items():
        row = {"system": system, "status": res.get("status", "ok")}
        for metric, val in (res.get("metrics") or {}).items():
            if isinstance(val, dict):
                row[metric] = val.get("mean")
                row[f"{metric}_lo"] = val.get("lo")
                row[f"{metric}_hi"] = val.get("hi")
            else:
                row[metric] = val
        rows.append(row)
    return rows


def summarise(results: list[dict], runs: Path, summary: Path) -> pd.DataFrame:
    """The ablation summary notebook 06 reads: one row per (ablation, evaluated system) of `runs/<run>/metrics`.

    `runs` is outputs/ or results/ (a record keeps the run's metrics/05_eval.json under the same path).
    """
    rows = []
    for r in results:
        base_row = {"ablation": r["ablation"], "run": r["run"], "run_status": r["status"]}
        metric_rows = flatten_metrics(runs / r["run"]) if r["run"] else []
        rows += [{**base_row, **m} for m in metric_rows] or [{**base_row, "error": r.get("error", "no metrics")}]
    df = pd.DataFrame(rows)
    summary.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(summary, df.to_csv(index=False))
    atomic_write_text(summary.with_suffix(".md"), df.to_markdown(index=False, floatfmt=".4f") if len(df) else "")
    write_json(summary.with_suffix(".runs.json"), results)
    return df
