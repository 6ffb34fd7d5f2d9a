# Two commands do all the set-up on a fresh machine:
#   make demo   capture a zoo model, print its fusion candidates and a plan summary
#   make test   run the whole test suite (and ruff)
#   make timing the tests whose outcome depends on the machine's timing noise (verdicts on rerun), alone
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fusionlab-installed

.PHONY: demo test timing lint notebook bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev,notebook]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m fusionlab demo --model gpt2-block

test: $(STAMP)
	$(BIN)/ruff check fusionlab tests bench
	$(BIN)/python -m pytest -q -n 2 -m "not timing" tests

# Not part of `make test`: whether a measured verdict holds on rerun depends on how noisy the
# machine is, so these run alone (no second pytest worker competing for the CPU) and on demand.
timing: $(STAMP)
	$(BIN)/python -m pytest -q -m timing tests

notebook: $(STAMP)
	$(BIN)/jupyter lab notebooks/

bench: $(STAMP)
	$(BIN)/python bench/kernel_counts.py

clean:
	rm -rf $(VENV) build *.egg-info
