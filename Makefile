# Two entry points, each creating the virtual environment first if needed.
#   make demo   SFT + PPO on the shipped data (the main job)
#   make test   the whole test suite
#   make notebooks   JupyterLab on tutorials/ (installed into the venv on first use)
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tf-ppo demo

# Two workers, one per core (most of a test's time is single-threaded tracing and XLA compilation);
# --dist loadscope keeps each module on one worker, so a module's shared fixture is built once;
# --no-loadscope-reorder keeps the order tests/conftest.py gives (the longest scopes first).
test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder --durations=25

# JupyterLab is for reading the tutorials, not for running the package: installed on first use only
# (order-only on the stamp: a reinstalled package does not reinstall it).
$(VENV)/bin/jupyter-lab: | $(STAMP)
	$(VENV)/bin/pip install --quiet -e ".[notebooks]"

notebooks: $(VENV)/bin/jupyter-lab
	$(VENV)/bin/jupyter lab tutorials/

.PHONY: demo test notebooks
