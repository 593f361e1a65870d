# Two entry points, each creating the virtual environment first if needed.
#   make demo   SFT + PPO on the shipped data (the main job)
#   make test   the whole test suite
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

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

.PHONY: demo test
