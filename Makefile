# Two commands on a fresh machine: `make repro` (install + the toy pipeline) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# Stage commands run `python ...`: put the virtualenv first on PATH for dvc and its children.
export PATH := $(abspath $(VENV))/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export YOLO_OFFLINE := 1

.PHONY: install repro test bench ablations

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

bench: install
	$(PY) bench/loader.py
	$(PY) bench/train_step.py

# Tables 3, 4, 7 and 9 as DVC experiments on the committed, reproduced workspace -> reports/ablations.md and the
# report page (pipeline/ablations.py). ONLY=no-cmr,un-3-3-2 runs a subset.
ablations: install
	$(PY) -m pipeline.ablations $(if $(ONLY),--only $(ONLY))
