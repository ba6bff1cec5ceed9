# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Debian packages the tests need (Postfix and Dovecot, private instances a company's mail servers
# stand for, over TLS; Chromium, the dashboard's browser) and the benchmarks need (Postfix's
# smtp-sink and smtp-source, run directly).
TEST_DEBS := postfix dovecot-imapd chromium
BENCH_DEBS := postfix dovecot-imapd

.PHONY: demo test test-quick lint bench fuzz lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# constraints.txt pins every package to the version CI ran (`make lock` writes it again from a
# fresh environment, after a change of pyproject.toml's ranges).
$(VENV)/.installed-run: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c constraints.txt -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@ $(VENV)/.installed-run

lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip
	.venv-lock/bin/python -m pip install --quiet -e '.[test]'
	( echo "# The versions CI ran, written by \`make lock\` from a fresh environment. Installed with"; \
	  echo "# pip's -c by make test, make demo and deploy/Containerfile."; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable ) > constraints.txt
	rm -rf .venv-lock

demo: $(VENV)/.installed-run
	$(BIN)/gateway demo

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict gateway

test: $(VENV)/.installed-test lint
	scripts/debian-packages $(TEST_DEBS)
	$(BIN)/pytest

# The rules and core paths, in-process servers only (no Debian packages): under a minute,
# for the edit-test loop. `make test` is what CI runs.
test-quick: $(VENV)/.installed-test
	$(BIN)/pytest -q -m "quick and not slow and not postgres"

bench: $(VENV)/.installed-test
	scripts/debian-packages $(BENCH_DEBS)
	$(BIN)/python bench/run_all.py

# Coverage-guided exploration of the parsers (FUZZ_SECONDS per target); what it finds joins the
# corpus that `make test` replays.
fuzz: $(VENV)/.installed-test
	PYTHON=$(BIN)/python scripts/fuzz

clean:
	rm -rf $(VENV) demo .pytest_cache .mypy_cache .ruff_cache
