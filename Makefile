# The two set-up commands: `make demo` (main job on the bundled data) and `make test`.
# Each creates the virtual environment when it is missing or pyproject.toml changed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean-cache

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/featcache extract --data builtin:clipart --backbone efficientnet_lite0
	$(BIN)/featcache fit-head --data builtin:clipart --backbone efficientnet_lite0 --head logreg --sweep \
	    --plot cache/clipart-logreg-confusion.png
	$(BIN)/featcache results --key efficientnet_lite0 --limit 5

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean-cache:
	rm -rf cache/features cache/builtin cache/digests.sqlite cache/results.jsonl
