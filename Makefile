# Two entry points for a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# CPU installs pin torch: an unpinned torch pulls several GB of CUDA packages.
TORCH_SPEC ?= torch==2.13.0

.PHONY: venv demo test test-blender-latest lint bench clean extension

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install "$(TORCH_SPEC)" "numpy<2"
	$(PY) -m pip install -e ".[test,blender,data]" "numpy<2"
	# Compile the numba render kernels into their cache now, not in the first render.
	$(PY) -m engine.cli warmup
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m engine.cli demo --out out/demo

test: $(STAMP)
	$(PY) -m ruff check engine gd_blender_addon tests bench examples
	$(PY) -m ruff format --check engine gd_blender_addon tests bench examples
	$(PY) -m pytest -q

# The add-on tests on the newest Blender: bpy 5.3 runs on Python 3.13 (pyenv's 3.13.0 here)
# and brings numpy 2. PyPI's torch for 3.13 on Linux is the CUDA build (~3 GB with its
# nvidia-* packages; it runs on the CPU); the pip cap in /etc/xdg/pip allows 2.13.0.
PYTHON_LATEST ?= $(firstword $(shell PYENV_VERSION=3.13.0 pyenv which python3.13 2>/dev/null) \
                  $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python3.13) \
                  $(shell command -v python3.13 2>/dev/null))
VENV_LATEST   ?= .venv-blender-latest
STAMP_LATEST  := $(VENV_LATEST)/.installed

$(STAMP_LATEST): pyproject.toml
	@test -n "$(PYTHON_LATEST)" || { echo "python3.13 not found (pyenv install 3.13.0)"; exit 1; }
	$(PYTHON_LATEST) -m venv $(VENV_LATEST)
	$(VENV_LATEST)/bin/python -m pip install --upgrade pip
	$(VENV_LATEST)/bin/python -m pip install "$(TORCH_SPEC)"
	$(VENV_LATEST)/bin/python -m pip install -e ".[test,blender]"
	touch $(STAMP_LATEST)

test-blender-latest: $(STAMP_LATEST)
	$(VENV_LATEST)/bin/python -c "import bpy, numpy; print('bpy', bpy.app.version_string, 'numpy', numpy.__version__)"
	$(VENV_LATEST)/bin/python -m pytest -q tests/test_addon_*.py

# Blender extension .zip in dist/, built and validated by Blender's own blender_ext.py.
extension: $(STAMP)
	$(PY) tools/build_extension.py --out dist

bench: $(STAMP)
	$(PY) bench/render.py

clean:
	rm -rf $(VENV) out
