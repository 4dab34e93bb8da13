"""Stage-05 rows of an unfinished run kept in results/partial/ across a lost outputs/ folder (`results.partial`),
and the content-based fingerprints that decide whether a later session may reuse them."""

from __future__ import annotations

import gzip
import os

import pytest
from test_evaluate_run import _trained_run

from mrrec_lib.config import load_config
from mrrec_lib.eval.context import EvalContext
from mrrec_lib.eval.evaluate import system_fingerprint
from mrrec_lib.eval.systems import resolve_systems
from mrrec_lib.results.partial import (
    changed_inputs,
    drop_partial,
    partial_dir,
    restore_partial,
    save_partial,
    saved_on,
    saved_rows,
)
from mrrec_lib.results.provenance import cpu_model
from mrrec_lib.runs import RunPaths, append_jsonl, read_jsonl
from mrrec_lib.train.checkpoints import write_policy_meta


def _rows(start: int, stop: int) -> list[dict]:
    return [{"qid": f"q{i}", "rank_keep_zero": i} for i in range(start, stop)]


def test_each_save_adds_only_new_rows_and_a_lost_run_folder_gets_them_back(tmp_path):
    results, run = tmp_path / "results", RunPaths(tmp_path / "outputs" / "r").ensure()
    cache = run.logs / "05_eval" / "mrrec-abc.jsonl"
    append_jsonl(cache, _rows(0, 3))
    assert save_partial(run.root, results) == {"mrrec-abc": 3}
    assert save_partial(run.root, results) == {"mrrec-abc": 3}  # nothing new: no second chunk
    append_jsonl(cache, _rows(3, 5))
    save_partial(run.root, results)
    chunks = sorted(p.name for p in (partial_dir(results, "r") / "05_eval").iterdir())
    assert chunks == ["mrrec-abc.0.jsonl.gz", "mrrec-abc.3.jsonl.gz"]
    assert len(gzip.decompress((partial_dir(results, "r") / "05_eval" / chunks[1]).read_bytes()).splitlines()) == 2
    assert saved_rows(results, "r") == {"mrrec-abc": 5}

    cache.unlink()  # outputs/ lost between sessions
    assert restore_partial(results, run.root) == {"mrrec-abc": 5}
    assert read_jsonl(cache) == _rows(0, 5)
    append_jsonl(cache, _rows(5, 6))
    assert restore_partial(results, run.root) == {}  # the run folder holds more: left alone
    assert save_partial(run.root, results) == {"mrrec-abc": 6}
    assert saved_rows(results, "r") == {"mrrec-abc": 6}

    drop_partial(results, "r")
    assert not (results / "partial").exists() and saved_rows(results, "r") == {}


def test_a_missing_chunk_is_named_not_silently_skipped(tmp_path):
    results, run = tmp_path / "results", RunPaths(tmp_path / "outputs" / "r").ensure()
    cache = run.logs / "05_eval" / "mrrec-abc.jsonl"
    append_jsonl(cache, _rows(0, 2))
    save_partial(run.root, results)
    append_jsonl(cache, _rows(2, 4))
    save_partial(run.root, results)
    (partial_dir(results, "r") / "05_eval" / "mrrec-abc.0.jsonl.gz").unlink()
    with pytest.raises(ValueError, match=r"mrrec-abc\.2\.jsonl\.gz: chunk starts at row 2 but .* hold 0 rows"):
        restore_partial(results, run.root)


def test_fingerprints_follow_content_not_mtimes(tmp_path):
    trained = _trained_run(tmp_path)
    weights = trained.models / "grpo" / "final" / "adapter_model.safetensors"
    weights.write_bytes(b"weights")
    (trained.memory / "parts").mkdir(parents=True)
    (trained.memory / "parts" / "local_x.jsonl").write_text('{"seconds": 1.0}\n')
    (trained.memory / "local_entries.parquet").write_bytes(b"memory")
    cfg = load_config(trained.config_file)
    spec = resolve_systems(["mrrec"])[0]
    before = system_fingerprint(spec, EvalContext(cfg, trained))
    for f in (weights, trained.data / "queries.parquet"):
        os.utime(f, ns=(1, 1))  # a rebuild that wrote the same bytes
    (trained.models / "grpo" / "final" / "trainer_state.json").write_text('{"train_runtime": 12.3}')
    (trained.memory / "parts" / "local_x.jsonl").write_text('{"seconds": 2.5}\n')  # the builder's timings
    assert system_fingerprint(spec, EvalContext(cfg, trained)) == before
    (trained.memory / "local_entries.parquet").write_bytes(b"memorz")
    assert system_fingerprint(spec, EvalContext(cfg, trained)) != before
    (trained.memory / "local_entries.parquet").write_bytes(b"memory")
    assert system_fingerprint(spec, EvalContext(cfg, trained)) == before
    weights.write_bytes(b"weightz")  # same size, other bytes
    assert system_fingerprint(spec, EvalContext(cfg, trained)) != before
    weights.write_bytes(b"weights")
    assert system_fingerprint(spec, EvalContext(cfg, trained)) == before
    write_policy_meta(trained.models / "grpo" / "final", base={"which": "sft"}, adapter=True, info={})
    on_sft = system_fingerprint(spec, EvalContext(cfg, trained))
    (trained.models / "sft" / "final" / "adapter_model.safetensors").write_bytes(b"sft-retrained")
    assert system_fingerprint(spec, EvalContext(cfg, trained)) != on_sft  # GRPO's adapter sits on the SFT weights


def test_a_later_save_names_the_inputs_a_rebuild_changed(tmp_path):
    results, run = tmp_path / "results", RunPaths(tmp_path / "outputs" / "r").ensure()
    append_jsonl(run.logs / "05_eval" / "mrrec-abc.jsonl", _rows(0, 1))
    (run.data / "items.parquet").write_bytes(b"items")
    (run.memory / "parts").mkdir(parents=True)
    (run.memory / "parts" / "local_x.jsonl").write_text('{"seconds": 1.0}\n')
    final = run.models / "sft" / "final"
    final.mkdir(parents=True)
    (final / "adapter_model.safetensors").write_bytes(b"w")
    (final / "trainer_state.json").write_text("{}")
    assert changed_inputs(run.root, results) == [] and saved_on(results, "r") == ""  # nothing saved yet
    save_partial(run.root, results)
    assert saved_on(results, "r") == cpu_model()
    (run.memory / "parts" / "local_x.jsonl").write_text('{"seconds": 2.0}\n')
    (final / "trainer_state.json").write_text('{"train_runtime": 3}')
    assert changed_inputs(run.root, results) == []
    (final / "adapter_model.safetensors").write_bytes(b"v")
    (run.data / "queries.parquet").write_bytes(b"q")
    assert changed_inputs(run.root, results) == ["data/queries.parquet", "models/sft/final/adapter_model.safetensors"]
