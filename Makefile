# Two commands on a fresh machine: `make repro` (install + the toy pipeline) and `make test`.
VENV ?= .venv
# `make seeds` runs seeds 0..SEEDS-1
SEEDS ?= 3
PY := $(VENV)/bin/python
# Stage commands run `python ...`: put the virtualenv first on PATH for dvc and its children.
export PATH := $(abspath $(VENV))/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export YOLO_OFFLINE := 1

.PHONY: install repro test test-fast lint bench ablations variant seeds

install: $(VENV)/.installed

# yt-dlp looks for `ffmpeg` on PATH: the last step links the binary that the imageio-ffmpeg wheel ships.
$(VENV)/.installed: requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	ln -sf "$$($(PY) -c 'import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())')" $(VENV)/bin/ffmpeg
	touch $@

repro: install
	$(VENV)/bin/dvc repro

test: install
	$(PY) -m pytest -q

# the tests without the `slow` marker (a few minutes instead of about twelve)
test-fast: install
	$(PY) -m pytest -q -m "not slow"

# ruff (pyproject.toml [tool.ruff]) and the package's layers as an import-linter contract ([tool.importlinter])
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

bench: install
	$(PY) bench/loader.py
	$(PY) bench/train_step.py

# Tables 3, 4, 7 and 9 as DVC experiments on the committed, reproduced workspace -> reports/ablations.md and the
# report page (pipeline/ablations.py). ONLY=no-cmr,un-3-3-2 runs a subset.
ablations: install
	$(PY) -m pipeline.ablations $(if $(ONLY),--only $(ONLY))

# One named preset of presets/ (e.g. NAME=from-scratch) as a DVC experiment, into the same tables.
variant: install
	@test -n "$(NAME)" || { echo "make variant NAME=<a preset of presets/>"; exit 2; }
	$(PY) -m pipeline.ablations --only $(NAME)

# Seeds 0..SEEDS-1 of the training and evaluation stages as DVC experiments on the committed, reproduced workspace
# (data and the pretrained trunk fixed) -> reports/seeds.md, reports/seeds.json, the README's results table and
# the report page (pipeline/seeds.py).
seeds: install
	$(PY) -m pipeline.seeds --seeds $(SEEDS)
