# Two commands on a fresh machine: `make run` (the default offline job) and `make test` (the test suite).
# CI (.ci/run): `make real-data lint test test-real-data`.
VENV ?= .venv
PY := $(VENV)/bin/python
# Debian's dataset-fashion-mnist: the real data the `real_data` tests read (benchmark=avalanche/split_fmnist)
FMNIST_DIR := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export HF_HUB_OFFLINE := 1

.PHONY: install run lint test test-all real-data test-real-data constraints clean notebooks pretrain gpu-wheels gpu-check

# pyproject.toml holds version ranges; constraints.txt the exact versions CI tests (`make constraints`).
$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	# torch first, pinned by constraints.txt: these wheels lie on local disk (a newer torch would download GBs)
	$(VENV)/bin/pip install -q -c constraints.txt torch torchvision
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[dev,notebooks]'  # notebooks: tests/test_notebooks.py runs them
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) run.py

# ruff (rules: pyproject.toml [tool.ruff]) and mypy (files and settings: [tool.mypy]); CI runs it before the tests.
lint: install
	$(PY) -m ruff check .
	$(PY) -m mypy

# One pytest-xdist worker per core, at most 4 (every worker holds its own models and data), one thread each.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)
test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS)

# Re-make the shipped backbone (gift_cl/assets/vit_formula.*): resumable; `make pretrain` again continues it.
# On a GPU: make pretrain PRETRAIN_ARGS="--device cuda --batch-size 1024 --samples 3e7 --time-limit 530"
PRETRAIN_ARGS ?= --samples 2400000 --lr 1.5e-3 --compile
pretrain: install
	$(PY) -m gift_cl.pretrain $(PRETRAIN_ARGS) --resume

# Re-execute the analysis notebooks on a finished run (and its linear-probe baseline) and store them with
# their outputs: make notebooks RUN=outputs/default_decathlon BASELINE=outputs/linear_decathlon
RUN ?= outputs/default_decathlon
BASELINE ?= outputs/linear_decathlon
notebooks: install
	GIFT_CL_RUN=$(RUN) GIFT_CL_BASELINE=$(BASELINE) $(VENV)/bin/jupyter execute --inplace analysis/notebooks/*.ipynb

test-all: install  # also the slow and real-data checks
	$(PY) -m pytest -q -m "not official_checkpoint and not gpu"  # those need a released checkpoint (docs/development.md), a GPU (make gpu-check); kill loop included

# Installs the real Fashion-MNIST (31 MB, MIT) with apt; fails (never skips) if that does not work.
real-data:
	@if [ ! -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
		echo "installing Debian package dataset-fashion-mnist"; \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends dataset-fashion-mnist; \
	fi
	@for f in train-images-idx3 train-labels-idx1 t10k-images-idx3 t10k-labels-idx1; do \
		test -s $(FMNIST_DIR)/$$f-ubyte.gz || { echo "real-data: $(FMNIST_DIR)/$$f-ubyte.gz missing after installing dataset-fashion-mnist" >&2; exit 1; }; \
	done

# The fast real-data checks; GIFT_CL_REQUIRE_REAL_DATA=1 turns "data missing" into a failure, not a skip.
test-real-data: install real-data
	GIFT_CL_REQUIRE_REAL_DATA=1 $(PY) -m pytest -q -m "real_data and not slow"

define FREEZE_CONSTRAINTS
import importlib.metadata as md, sys
try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as canon
proj = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = proj.get("optional-dependencies", {})
todo = [(Requirement(r), ()) for r in proj["dependencies"]]
todo += [(Requirement(r), ()) for group in extras.values() for r in group]
pins, missing = {}, set()
direct = {canon(r.name) for r, _ in todo}
while todo:
    req, via = todo.pop()
    name = canon(req.name)
    if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in via or ("",)):
        continue
    try:
        dist = md.distribution(req.name)
    except md.PackageNotFoundError:
        if name in direct:
            missing.add(name)
        continue
    key = (name, tuple(sorted(req.extras)))
    if key in pins:
        continue
    pins[key] = dist.version
    for r in dist.requires or []:
        todo.append((Requirement(r), tuple(req.extras)))
names = sorted({(n, v) for (n, _), v in pins.items()})
print("# Exact versions tested in CI: the transitive closure of gift_cl's dependencies and extras, as")
print("# installed in the project venv. Regenerate with `make constraints`; install with")
print("# `pip install -c constraints.txt -e '.[dev]'`. pyproject.toml holds the ranges.")
if missing:
    print("# Not installed when generated (untested here), so not pinned: " + ", ".join(sorted(missing)))
for n, v in names:
    print(f"{n}=={v}")
endef
export FREEZE_CONSTRAINTS

# Regenerate constraints.txt from the venv (after installing/upgrading and testing there).
constraints:
	$(PY) -c "$$FREEZE_CONSTRAINTS" > constraints.txt.new && mv constraints.txt.new constraints.txt

# A GPU machine without network (docs/guide/gpu.md "Checking a GPU"): `make gpu-wheels` here downloads the wheels it
# lacks (avalanche-lib, Hydra, OmegaConf... pinned by constraints.txt, pure Python) into gpu_wheels/ (git-ignored:
# carry it); `make gpu-check` there installs them offline and runs the CUDA tests, the ViT-B throughput benchmark
# and the GPU reference runs in ~6 minutes (analysis/gpu/check.sh; GPU_CHECK_DRY=1: every step small, on the CPU).
gpu-wheels:
	PY=$(PY) analysis/gpu/wheels.sh

GPU_CHECK_DRY ?= 0
gpu-check:
	GPU_CHECK_DRY=$(GPU_CHECK_DRY) analysis/gpu/check.sh

clean:
	rm -rf $(VENV) .pytest_cache .cache
