# make demo   set up and run `popbs sync` on examples/mail.log into ./demo
# make test   install what the tests need (Debian packages too) and run them
# make lint   ruff and mypy
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint system-packages clean

$(VENV)/installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/installed
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" sh scripts/demo.sh

system-packages:
	sh scripts/install-system-packages.sh

test: system-packages $(VENV)/installed
	$(PY) -m pytest

lint: $(VENV)/installed
	$(VENV)/bin/ruff check popbs_tools tests
	$(VENV)/bin/ruff format --check popbs_tools tests
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) demo

# make bench  the speed benchmark (P1-P4): a 1 GiB generated log, 5 runs each;
#             BENCH_ARGS="--quick" (100 MiB, 3 runs), "--only P1,P3", "--profile"
.PHONY: bench
bench: $(VENV)/installed
	$(PY) bench/bench.py $(BENCH_ARGS)

# make bench-watch  sync --watch: login-to-relay delay (real Dovecot and
#                   Postfix, 4 cron minutes) and CPU per idle hour
.PHONY: bench-watch
bench-watch: system-packages $(VENV)/installed
	$(PY) bench/watch.py $(BENCH_ARGS)
