# The two commands of the Quick start. Both set up what they need on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test system-deps bench schema clean

demo: $(STAMP)
	$(BIN)/mailops demo

test: $(STAMP) system-deps
	$(BIN)/ruff check mailops tests benchmarks
	$(BIN)/ruff format --check mailops tests benchmarks
	$(BIN)/python -m pytest

# The virtualenv is rebuilt only when the dependencies change.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Debian packages the integration tests start as real servers (Dovecot for IMAP).
DEBIAN_PACKAGES := dovecot-imapd
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-deps:
	@if command -v dovecot >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		echo "installing $(DEBIAN_PACKAGES) (apt)"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(DEBIAN_PACKAGES) >/dev/null; \
	else \
		echo "dovecot is missing and apt-get is not available: install Dovecot (IMAP) yourself" >&2; exit 1; \
	fi

bench: $(STAMP) system-deps
	$(BIN)/python benchmarks/cli_startup.py
	$(BIN)/python benchmarks/plan_1000.py
	$(BIN)/python benchmarks/apply_concurrency.py

schema: $(STAMP)
	$(BIN)/python -m mailops.spec.schema > schema/mailops.schema.json

clean:
	rm -rf $(VENV) .pytest_cache .mailops
