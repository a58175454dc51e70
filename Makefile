# Two commands on a fresh clone: `make demo` and `make test`. Each sets up .venv itself.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE ?= 1
# Test processes (pytest-xdist); each test file runs whole in one of them, so its module fixtures are built once.
TEST_WORKERS ?= 2

.PHONY: demo test bench browser clean-demo venv

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch and torchvision together, pinned (an unpinned torchvision swaps torch)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/saga demo --out work/demo

test: $(STAMP) browser
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

# The report test renders HTML in Debian's headless Chromium; without it that test is skipped.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null); } || \
		echo "chromium not installed: the browser test will be skipped"

bench: $(STAMP)
	$(PY) bench/extract.py

clean-demo:
	rm -rf work/demo
