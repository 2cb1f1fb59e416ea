# Two entry points for a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# CPU installs pin torch: an unpinned torch pulls several GB of CUDA packages.
TORCH_SPEC ?= torch==2.13.0

.PHONY: venv demo test lint bench clean extension

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install "$(TORCH_SPEC)" "numpy<2"
	$(PY) -m pip install -e ".[test,blender,data]" "numpy<2"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m engine.cli demo --out out/demo

test: $(STAMP)
	$(PY) -m ruff check engine gd_blender_addon tests bench examples
	$(PY) -m pytest -q

# Blender extension .zip in dist/, built and validated by Blender's own blender_ext.py.
extension: $(STAMP)
	$(PY) tools/build_extension.py --out dist

bench: $(STAMP)
	$(PY) bench/render.py

clean:
	rm -rf $(VENV) out
