# Set-up commands for napari-tskd. `make demo` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
SYSDEPS := xvfb xauth libgl1-mesa-dri libglx-mesa0 libegl1 libxkbcommon-x11-0 libxcb-icccm4 \
	libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 \
	libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_ARGS ?=

.PHONY: install demo test lint sysdeps bench screenshots clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# torch is pinned here (not in setup.cfg) so users elsewhere keep their own build.
$(STAMP): $(PY) setup.cfg pyproject.toml
	$(PIP) install torch==2.14.1 torchvision==0.29.1
	$(PIP) install -e ".[dev,brain]"
	touch $(STAMP)

install: $(STAMP)

sysdeps:
	@(command -v xvfb-run >/dev/null && ldconfig -p | grep -q libxcb-cursor) \
		|| ($(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends $(SYSDEPS))

demo: $(STAMP)
	$(VENV)/bin/tskd demo $(DEMO_ARGS)

test: $(STAMP) sysdeps
	$(VENV)/bin/ruff check src napari_tskd tests benchmarks docs
	xvfb-run -a -s "-screen 0 1280x1024x24" $(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src napari_tskd tests benchmarks docs

bench: $(STAMP)
	$(PY) benchmarks/run_benchmark.py

screenshots: $(STAMP) sysdeps
	xvfb-run -a -s "-screen 0 1600x1200x24" $(PY) docs/make_screenshots.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
