# Two commands from a fresh clone: `make test` and `make lab`.
# Each creates the project's virtual environment (.venv) the first time.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test unit lab demo env clean-env reproduce save-lessons gpu-check

env: $(STAMP)

# Rebuilt when pyproject.toml changes; the stamp records a finished install.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (kd_ref)" >/dev/null
	touch $(STAMP)

# The smoke profile keeps every training run in CI to seconds; one worker per core, each
# notebook and test file whole on one worker (nbval runs a notebook's cells in one kernel), and
# one torch thread per process (workers, kernels, subprocesses): two workers of two threads each
# on two cores only wait for each other.
test: $(STAMP)
	OMP_NUM_THREADS=1 KD_PROFILE=smoke $(PY) -m pytest -n auto --dist loadfile --durations=25

# The fast inner loop: the unit tests only (no notebooks, no kernels, no subprocess runs:
# tests marked slow), on every core.
unit: $(STAMP)
	OMP_NUM_THREADS=1 KD_PROFILE=smoke $(PY) -m pytest tests -m "not slow" -p no:nbval -o addopts=-ra -n auto --dist loadfile

# --allow-root only when run as root (containers); JupyterLab refuses root otherwise.
lab: $(STAMP)
	$(VENV)/bin/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root)

demo: $(STAMP)
	$(VENV)/bin/kd-ref digits

clean-env:
	rm -rf $(VENV)

# Re-run the lessons' studies under KD_PROFILE=cpu in a scratch copy and compare every result row
# with the committed notebooks/results/*.cpu.json: `make reproduce` (all) or `make reproduce LESSON=03`.
reproduce: $(STAMP)
	$(PY) -m kd_ref.lesson reproduce $(LESSON)

# Save lessons as real runs (maintainers): execute in place under KD_PROFILE=cpu, write their results files.
save-lessons: $(STAMP)
	$(PY) -m kd_ref.lesson save $(LESSON)

# On a CUDA machine: what the gpu profiles cost there (CIFAR images/s and epoch time, bf16 vs fp32,
# torch.compile, peak memory, text tokens/s), in under 5 minutes, no network. It runs from the source
# tree with the project's .venv when there is one, else the machine's own python3 (torch, numpy, tqdm;
# no install); without CUDA it says so and exits 0.
GPU_PYTHON := $(if $(wildcard $(PY)),$(PY),$(PYTHON))
gpu-check:
	PYTHONPATH=. $(GPU_PYTHON) -m kd_ref bench gpu
