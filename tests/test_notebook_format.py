"""The committed notebooks as files: valid nbformat 4.5 that papermill can run without normalising them.

A cell without an id is repaired silently today (with a warning in every run's log) and will be a hard error in a
future nbformat; committed outputs would make a diff of a notebook unreadable and leak one run into the next.
"""

import json
import warnings
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_every_numbered_stage_has_a_notebook():
    assert [p.name[:2] for p in NOTEBOOKS] == [f"{i:02d}" for i in range(1, len(NOTEBOOKS) + 1)]
    assert len(NOTEBOOKS) >= 6


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_validates_without_repair(path):
    raw = json.loads(path.read_text())
    missing = [i for i, c in enumerate(raw["cells"]) if "id" not in c]
    assert not missing, f"{path.name}: cells {missing} have no id"
    ids = [c["id"] for c in raw["cells"]]
    assert len(set(ids)) == len(ids), f"{path.name}: duplicate cell ids"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nbformat.validate(nbformat.from_dict(raw))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_has_one_parameters_cell_and_no_outputs(path):
    cells = json.loads(path.read_text())["cells"]
    params = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, f"{path.name}: {len(params)} cells tagged 'parameters'"
    source = "".join(params[0]["source"])
    assert "config_file" in source and "run_name" in source, f"{path.name}: the runner passes config_file and run_name"
    code = [c for c in cells if c["cell_type"] == "code"]
    assert not any(c.get("outputs") or c.get("execution_count") is not None for c in code), (
        f"{path.name}: committed with outputs; clear them"
    )
