# One entry point for people and CI. `make test` sets up .venv and runs lint + tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup tools lint test bench demo clean

setup: $(VENV)/.installed

# torch==2.13.0 first: it is the CPU build; an unpinned torch resolved through the
# other dependencies would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# shellcheck (Debian) lints infra/*.sh in the tests.
tools:
	@command -v shellcheck >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq shellcheck >/dev/null; }

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint tools
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/encoder_decoder.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# The main job: mine the bundled sample images with the bundled model into out/.
# The bundled model is small and rarely confident: its calibrated predicted IoUs seldom
# reach 0.88 and its stability scores mostly stay below 0.95, so the reference's
# thresholds keep masks on 3 held-out scenes in 20 and none on the photos. 0.5 / 0.7
# were chosen from the threshold sweep of benchmarks/quality.py (see README.md, Quick start).
demo: setup
	$(BIN)/maskmine --output out --pred_iou_thresh 0.5 --stability_score_thresh 0.7
