# Every target builds its own virtual environment from nothing, with the tested pins.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PINS    := requirements/constraints.txt

.PHONY: venv train test bench clean

$(BIN)/alignkit: pyproject.toml $(PINS)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c $(PINS) -e '.[dev,count]'
	touch $@

venv: $(BIN)/alignkit

# The main job: align the embedded toy model on CPU (replacing the previous run of this
# target), then evaluate base vs tuned on held-out prompts, read by the toy world's own rules
# (an independent judge): with the training sampler, then with plain DDIM (eta 0), as users sample.
TOY_RUN ?= runs/toy-count
train: venv
	$(BIN)/alignkit train --output-dir $(TOY_RUN) --overwrite
	$(BIN)/alignkit eval $(TOY_RUN) --seeds 8 --scales 0.5,1
	$(BIN)/alignkit eval $(TOY_RUN) --seeds 8 --scales 1 --eta 0 --output-dir $(TOY_RUN)/eval-ddim

test: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: venv
	$(BIN)/python benchmarks/run_all.py --quick

clean:
	rm -rf $(VENV) build *.egg-info
