# Each target bootstraps .venv on a fresh machine. torch is pinned to the CPU build that is on
# this machine's disk; pyproject keeps a range so GPU users get their own build.
PY      := .venv/bin/python
STAMP   := .venv/.qpass-installed
TORCH   ?= torch==2.13.0
PIP     := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: demo test bench clean

# The code-task sandbox (qpass/sandbox/runner.py) needs bubblewrap; its tests run for real.
SANDBOX := /usr/bin/bwrap

$(SANDBOX):
	@if [ "$$(id -u)" = 0 ]; then apt-get install -y -q bubblewrap >/dev/null || \
	  (apt-get update -q >/dev/null && apt-get install -y -q bubblewrap >/dev/null); \
	else echo "note: install bubblewrap (sudo apt-get install bubblewrap): code tasks refuse to run without it"; fi

# `qpass study --report` writes an HTML report; its test renders it in headless Chromium.
BROWSER := /usr/bin/chromium

$(BROWSER):
	@if [ "$$(id -u)" = 0 ]; then apt-get install -y -q chromium >/dev/null 2>&1 || \
	  (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null) || \
	  echo "note: chromium could not be installed: the study report's rendering test is skipped"; \
	else echo "note: install chromium (sudo apt-get install chromium): the study report's rendering test is skipped without it"; fi

$(STAMP): pyproject.toml | $(SANDBOX) $(BROWSER)
	python3 -m venv .venv
	$(PIP) "$(TORCH)"
	$(PIP) -e ".[dev,plot,data,eval,interop]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m qpass.cli demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2 tests

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf .venv build *.egg-info
