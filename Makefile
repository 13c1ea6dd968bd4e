# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
RUN    ?= runs/demo

.PHONY: install demo test lint bench clean peers

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# The peer libraries (normflows, Pythae) for bench/peer_speed.py, in their own venv, never in .venv.
# setuptools is installed pinned first and the build is not isolated, so building normflows'
# source archive pulls no unpinned build tools either.
PEERS_VENV ?= .venv-peers
$(PEERS_VENV)/.installed: pyproject.toml constraints.txt bench/peers.txt
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install -q -c constraints.txt -c bench/peers.txt setuptools
	$(PEERS_VENV)/bin/python -m pip install -q --no-build-isolation -c constraints.txt -e . -r bench/peers.txt
	touch $@

peers: $(PEERS_VENV)/.installed

# Train dense-mnist on the 5,000 embedded MNIST digits, evaluate, draw the pictures.
demo: install
	$(VENV)/bin/vaekit train --preset dense-mnist --data mnist5k --epochs 20 --out $(RUN)
	$(VENV)/bin/vaekit evaluate $(RUN) --k 1000
	$(VENV)/bin/vaekit sample $(RUN) -n 64 --mean -o $(RUN)/samples.png
	$(VENV)/bin/vaekit reconstruct $(RUN) -o $(RUN)/recon.png
	$(VENV)/bin/vaekit interpolate $(RUN) --steps 10 -o $(RUN)/interp.png
	$(VENV)/bin/vaekit latent-map $(RUN) -o $(RUN)/map.png
	@echo "demo done: pictures and eval-test.json in $(RUN)/"

test: install lint
	$(PY) -m pytest -n 2 tests

# Style and layering: ruff (lint + format) and import-linter's layer contract (pyproject.toml).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) runs .pytest_cache
