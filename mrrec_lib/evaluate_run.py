"""`mrrec evaluate`: score a trained run's policies on another data configuration, without retraining.

The evaluation gets its own run folder: its config is the trained run's `config.yaml` with the given params
on top, so everything not changed (models, encoder, decoding) is what the policies were trained with. There,
stage 01 builds the new data, stage 02 the new memory (memory is per user, and the users are new), and
stage 05 Table 1, loading the policies from the trained run through `eval_models_run` (Rec-R1 from the
trained run's `eval_recr1_run`). The runner never runs stages 03/04 in such a folder, and the trained run's
folder is only read. `evaluated_from.json` records what was borrowed (the trained runs' stage records) and how
many evaluated requests come from users the policies were trained on: with other data the user-level split
no longer guarantees they are unseen, so that number belongs next to the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mrrec_lib import runner, stages
from mrrec_lib.config import Config, ConfigError, changed_keys, load_config, merge_params
from mrrec_lib.runs import STAGES, MissingStageError, RunPaths, read_json, resolve, write_json
from mrrec_lib.train.checkpoints import POLICY_META, STAGE_OF, final_dir

EVALUATED_FROM = "evaluated_from.json"
# Keys that tie the evaluation run to the trained one; params files cannot set them (--run-name / -p can name it).
LINK_KEYS = ("run_name", "outputs_dir", "eval_models_run", "eval_recr1_run")
TRAINING_SPLITS = ("train", "val")  # val picks the kept checkpoint, so it counts as seen
BORROWED = ("trained_stages", "recr1_stages")  # provenance entries whose change means other policies


@dataclass(frozen=True)
class EvaluationPlan:
    """The evaluation run's config and what it borrows, decided (and checked) before any stage runs."""

    trained: RunPaths
    cfg: Config
    files: list[Path]  # the trained run's config.yaml, then the given params files
    overrides: dict[str, Any]  # the given overrides plus LINK_KEYS
    replaced: dict[str, Any]  # LINK_KEYS values from the params that the link replaced
    training_keys: dict[str, tuple[Any, Any]]  # stage 03/04 keys that differ from the trained run: (trained, here)

    @property
    def recr1(self) -> RunPaths:
        return RunPaths(resolve(self.cfg.outputs_dir) / self.cfg.eval_recr1_run)


def trained_policies(cfg: Config) -> list[str]:
    """The policies a training run publishes (`train.checkpoints` names): SFT unless disabled, then stage 04's.

    Stage 04's name mirrors `train.grpo.policy_name`, not imported because that module loads transformers.
    """
    return (["sft"] if cfg.sft_enabled else []) + ["grpo" if cfg.policy_uses_memory else "recr1"]


def read_trained_run(trained_run: str | Path) -> tuple[RunPaths, Config]:
    """The trained run folder and its config; an error naming what is missing and the stage that makes it."""
    trained = RunPaths(Path(trained_run).expanduser().resolve())
    if not trained.config_file.exists():
        raise FileNotFoundError(
            f"{trained.config_file} not found: {trained.root} is not a run folder (`mrrec run` writes config.yaml)"
        )
    cfg = load_config(trained.config_file)
    if cfg.eval_models_run:
        raise ConfigError(
            f"{trained.root} is itself an evaluation of run {cfg.eval_models_run!r}: evaluate that run instead"
        )
    missing = [
        f"models/{w}/final (stage {STAGES[STAGE_OF[w]]})"
        for w in trained_policies(cfg)
        if not (final_dir(trained, w) / POLICY_META).exists()
    ]
    if missing:
        raise MissingStageError(
            f"{trained.root} has no trained policy {', '.join(missing)}: train it first, "
            f"e.g. `mrrec run {trained.config_file} --only 03,04`"
        )
    return trained, cfg


def recr1_run(trained: RunPaths, cfg: Config) -> str:
    """The folder the trained run's Table 1 took Rec-R1 from: its `eval_recr1_run`, or the trained run itself."""
    return trained.root.name if cfg.eval_recr1_run in ("", cfg.run_name) else cfg.eval_recr1_run


def default_run_name(trained: RunPaths, params: list[Path]) -> str:
    if not params:
        raise ConfigError("name the evaluation run with --run-name when no -f params file is given")
    return f"{trained.root.name}-on-{params[0].stem}"


def training_keys_changed(trained_cfg: Config, cfg: Config) -> dict[str, tuple[Any, Any]]:
    """Keys of stages 03/04 whose value differs from the trained run's: they cannot change the trained policies."""
    keys = sorted(set(stages.stage_keys("04")) - set(stages.stage_keys("02")))
    return changed_keys(trained_cfg, cfg, keys)


def _check_target(cfg: Config) -> None:
    """Refuse a run name that would overwrite a training run's folder (its data would be rebuilt)."""
    if cfg.run_name in (cfg.eval_models_run, cfg.eval_recr1_run):
        raise ConfigError(f"run name {cfg.run_name!r} is a folder the policies come from: choose another --run-name")
    target = RunPaths(resolve(cfg.outputs_dir) / cfg.run_name)
    trained_there = sorted(s for s in stages.read_records(target) if s in runner.TRAINING_STAGES)
    if trained_there:
        raise ConfigError(
            f"{target.root} holds a training run (stages {', '.join(trained_there)} finished there): "
            "choose another --run-name"
        )


def plan_evaluation(
    trained_run: str | Path,
    params: list[str | Path],
    overrides: dict[str, Any] | None = None,
    run_name: str | None = None,
) -> EvaluationPlan:
    """Merge the params over the trained run's config (unknown keys are errors) and link the two runs."""
    trained, trained_cfg = read_trained_run(trained_run)
    files = [Path(p) for p in params]
    given = merge_params(files, overrides)
    name = run_name or (overrides or {}).get("run_name") or default_run_name(trained, files)
    # Run names resolve under outputs_dir: the evaluation lives beside the trained run.
    same_outputs = resolve(trained_cfg.outputs_dir) == trained.root.parent
    link = {
        "run_name": name,
        "outputs_dir": trained_cfg.outputs_dir if same_outputs else str(trained.root.parent),
        "eval_models_run": trained.root.name,
        "eval_recr1_run": recr1_run(trained, trained_cfg),
    }
    full = {**(overrides or {}), **link}
    cfg = load_config(trained.config_file, *files, overrides=full)
    _check_target(cfg)
    return EvaluationPlan(
        trained=trained,
        cfg=cfg,
        files=[trained.config_file, *files],
        overrides=full,
        replaced={k: given[k] for k in LINK_KEYS if k in given and given[k] != link[k]},
        training_keys=training_keys_changed(trained_cfg, cfg),
    )


def notes(plan: EvaluationPlan) -> list[str]:
    """What the user should know before the stages run: replaced link keys, training keys that do not apply."""
    out = []
    if plan.replaced:
        keys = ", ".join(f"{k}={v!r}" for k, v in plan.replaced.items())
        out.append(f"not used ({keys}): the evaluation run is {plan.cfg.run_name!r}, beside {plan.trained.root}")
    if plan.training_keys:
        keys = ", ".join(f"{k} ({a!r} -> {b!r})" for k, (a, b) in plan.training_keys.items())
        out.append(
            f"stage 03/04 keys differ from run {plan.trained.root.name}: {keys}. The policies are not retrained "
            "(they keep that run's values); stage 05 uses the new values only where it reads them at inference."
        )
    return out


def _trained_records(paths: RunPaths) -> dict[str, dict]:
    """The stage records (hash, finish time) of the stages that made a borrowed policy."""
    return {s: r for s, r in stages.read_records(paths).items() if s <= max(runner.TRAINING_STAGES)}


def provenance(plan: EvaluationPlan) -> dict[str, Any]:
    """What `evaluated_from.json` records: the borrowed runs with their stage records, and what was changed."""
    return {
        "trained_run": plan.trained.root.name,
        "trained_run_dir": str(plan.trained.root),
        "trained_stages": _trained_records(plan.trained),
        "recr1_run": plan.cfg.eval_recr1_run,
        "recr1_stages": _trained_records(plan.recr1),
        "params": [str(p) for p in plan.files[1:]],
        "overrides": {k: v for k, v in plan.overrides.items() if k not in LINK_KEYS},
        "training_keys_changed": {k: list(v) for k, v in plan.training_keys.items()},
    }


def seen_in_training(cfg: Config, paths: RunPaths, trained: RunPaths) -> dict[str, int]:
    """How many requests stage 05 will evaluate come from users (and targets) in the trained run's train/val split."""
    from mrrec_lib.data.schema import read_table
    from mrrec_lib.eval.context import select_eval_queries

    evaluated = select_eval_queries(read_table(paths.data, "queries"), cfg)
    seen = read_table(trained.data, "queries")
    seen = seen[seen["split"].isin(TRAINING_SPLITS)]
    key = ["user_id", "target_item_id"]
    return {
        "evaluated_requests": len(evaluated),
        "users_trained_on": int(evaluated["user_id"].isin(seen["user_id"]).sum()),
        "targets_trained_on": len(evaluated[key].merge(seen[key].drop_duplicates(), on=key)),
    }


def evaluate_run(
    trained_run: str | Path,
    params: list[str | Path],
    overrides: dict[str, Any] | None = None,
    run_name: str | None = None,
    log_output: bool = False,
    share: bool = False,
) -> RunPaths:
    """Stages 01, 02 and 05 of a new run on `params`, evaluating `trained_run`'s policies; returns its folder.

    `share` first hard-links stages 01/02 from a run under outputs_dir with the same data and memory hashes, so
    a test-time change (e.g. no global memory in the prompt) costs only stage 05; never 03/04, which this run
    must not hold.
    Current stages are skipped as in `mrrec run`; stage 05 reruns when a borrowed policy's stages reran.
    """
    plan = plan_evaluation(trained_run, params, overrides, run_name)
    for line in notes(plan):
        print(line)
    _, paths = runner.prepare_run(plan.files, plan.overrides)
    if share:
        from mrrec_lib.ablate import share_finished_stages

        share_finished_stages(plan.cfg, paths, last_stage="02")
    record = provenance(plan)
    record_file = paths.root / EVALUATED_FROM
    if record_file.exists() and any(read_json(record_file).get(k) != record[k] for k in BORROWED):
        stages.forget_from(paths, "05")  # its config hash cannot see that the borrowed policies were retrained
    write_json(record_file, record)

    runner.run(plan.files, only="01", overrides=plan.overrides, log_output=log_output)
    record["seen_in_training"] = seen = seen_in_training(plan.cfg, paths, plan.trained)
    write_json(record_file, record)
    if seen["users_trained_on"]:
        print(
            f"note: {seen['users_trained_on']} of {seen['evaluated_requests']} evaluated requests come from users in "
            f"the train/val split of {plan.trained.root.name} ({seen['targets_trained_on']} with the same target item)"
        )
    runner.run(plan.files, only="02,05", overrides=plan.overrides, log_output=log_output)
    return paths
