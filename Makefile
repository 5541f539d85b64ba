# The two commands of the Quick start. Both set up what they need on a fresh machine.
# The virtualenv's interpreter: Debian's own Python 3 where it is 3.11 or newer, else python3
# on the PATH. Debian builds it with profile-guided and link-time optimisation: every mailops
# command runs about a quarter faster on it than on a default build from source (pyenv's).
SYSTEM_PYTHON := /usr/bin/python3
PYTHON ?= $(shell $(SYSTEM_PYTHON) -c 'import sys, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
	&& echo $(SYSTEM_PYTHON) || echo python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test venv-deps system-deps bench schema clean

demo: $(STAMP)
	$(BIN)/mailops demo

test: $(STAMP) system-deps
	$(BIN)/ruff check mailops tests benchmarks
	$(BIN)/ruff format --check mailops tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest

# The virtualenv is rebuilt only when the dependencies change.
$(STAMP): pyproject.toml | venv-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# compat: a plain path entry; the default editable finder costs every mailops start ~30 ms.
	$(BIN)/python -m pip install --quiet --config-settings editable_mode=compat -e '.[dev]'
	touch $(STAMP)

# Debian's Python makes a virtualenv only with its venv package: installed where apt is available.
venv-deps:
	@[ ! -x $(SYSTEM_PYTHON) ] || $(SYSTEM_PYTHON) -c 'import ensurepip' >/dev/null 2>&1 \
		|| ! command -v apt-get >/dev/null 2>&1 || { \
		echo "installing python3-venv (apt)"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends python3-venv >/dev/null; }

# Debian packages the integration tests start as real servers: Dovecot (IMAP) and
# PostgreSQL (the state store on a team database), the system Python that the test
# Dovecot's shared-mailbox check runs with, and Chromium, which the browser tests drive
# through Playwright (never `playwright install`: it would download a browser of its own).
# Installed only when missing.
system-deps:
	@missing=""; \
	command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ] || missing="$$missing dovecot-imapd"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	[ -x $(SYSTEM_PYTHON) ] || missing="$$missing python3-minimal"; \
	[ -x /usr/lib/chromium/chromium ] || missing="$$missing chromium"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
		echo "missing:$$missing; apt-get is not available, install them yourself" >&2; exit 1; \
	fi; \
	echo "installing$$missing (apt)"; \
	$(SUDO) apt-get update -qq && \
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null

bench: $(STAMP) system-deps
	@missed=""; \
	for name in cli_startup plan apply_concurrency outbox_classify send_batch outbox_analysis outbox_explorer import_tickets; do \
		echo "$(BIN)/python benchmarks/$$name.py"; \
		$(BIN)/python benchmarks/$$name.py || missed="$$missed $$name"; \
	done; \
	if [ -n "$$missed" ]; then echo "benchmarks that missed a target or failed:$$missed" >&2; exit 1; fi

schema: $(STAMP)
	$(BIN)/python -m mailops.spec.schema --out-dir schema

clean:
	rm -rf $(VENV) .pytest_cache .mailops
