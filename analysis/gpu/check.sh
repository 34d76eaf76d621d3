#!/usr/bin/env bash
# `make gpu-check`: everything issue 20 asks of a GPU machine, in one command of at most ~6 minutes
# (docs/guide/gpu.md, "Checking a GPU"):
#   install  the carried wheels (gpu_wheels/, from `make gpu-wheels`) offline where gift_cl's imports are missing
#   bench    analysis/bench_speed.py: ViT-B/16, 224 px, bf16 autocast, batch 64: train images/s and peak memory of
#            the frozen-backward floor, GIFT-paca/linear, gift_cl's LoRA, peft LoRA r8, full fine-tuning; ΔW
#            generation; eval merged vs unmerged; 10-task mixed batch vs one task; the goals (alone on the GPU)
#   tests    pytest -m gpu (tests/test_gpu.py), with the two reference runs beside it
#   ref_fp32 / ref_bf16   the default decathlon (`python run.py`) with device=cuda, in fp32 and in bf16
#   summary  analysis/gpu/summary.py
# A failed or timed-out step is recorded and the next one runs; the exit status is non-zero if any step failed.
#
# Output: $OUT (default gpu_out/) gets summary.md (printed at the end), summary.json, gpu_check.log (all the
# console output) and gpu_check.tar.gz (the work folder: junit XML, benchmark JSON and text, the runs' results,
# logs and configurations, nvidia-smi, versions). At most 4 files: the device tool returns 8.
#
#   analysis/gpu/check.sh             on a GPU machine
#   analysis/gpu/check.sh --dry-run   (or GPU_CHECK_DRY=1) every step at its smallest, on the CPU: catches typos
# Environment: PYTHON (default .venv/bin/python if present, else python3), GPU_CHECK_SERIAL=1 (the tests after the
# reference runs, not beside them: their wall times then are not shared; longer), GPU_CHECK_WORK (the work folder).
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
DRY=${GPU_CHECK_DRY:-0}
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-gpu_out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
WORK=${GPU_CHECK_WORK:-/tmp/gift_cl_gpu_check}
rm -rf "$WORK" && mkdir -p "$WORK"
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=$REPO/.venv/bin/python; else PY=python3; fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export GIFT_CL_CACHE=${GIFT_CL_CACHE:-$REPO/.cache/gift_cl}
exec > >(tee "$OUT/gpu_check.log") 2>&1
T0=$(date +%s)
FAILED=0

# step NAME TIMEOUT_S COMMAND...: runs it with a time cap, its output into $WORK/NAME.txt (and the console)
step() {
    local name=$1 cap=$2 t rc note=""
    shift 2
    echo "=== $name (cap ${cap}s, at $(( $(date +%s) - T0 ))s): $*"
    t=$(date +%s)
    timeout --kill-after=10 "$cap" "$@" > "$WORK/$name.txt" 2>&1
    rc=$?
    tail -n 25 "$WORK/$name.txt"
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && note="timed out after ${cap}s"
    record "$name" $rc $(( $(date +%s) - t )) "$note"
}
record() {  # NAME RC SECONDS NOTE
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$WORK/steps.tsv"
    [ "$2" -eq 0 ] || FAILED=1
    echo "--- $1: exit $2 in $3 s${4:+ ($4)}"
}

# ------------------------------------------------------------------ machine and source
echo "gpu_check: python $PY, work $WORK, out $OUT, dry run $DRY"
(nvidia-smi && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv) \
    > "$WORK/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi" >> "$WORK/nvidia-smi.txt"
if git rev-parse HEAD > "$WORK/commit.txt" 2>/dev/null; then
    git status --porcelain >> "$WORK/commit.txt" 2>/dev/null
elif [ -f gpu_wheels/SOURCE ]; then
    cp gpu_wheels/SOURCE "$WORK/commit.txt"  # written by `make gpu-wheels` where the tree was sent from
else
    echo "unknown (no .git here, no gpu_wheels/SOURCE)" > "$WORK/commit.txt"
fi
"$PY" - "$WORK/versions.json" <<'EOF'
import json, platform, sys, time
from pathlib import Path
sys.path.insert(0, "scripts")
from gpu_summary import source_hash
v = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "python": platform.python_version(),
     "commit": Path(sys.argv[1]).with_name("commit.txt").read_text().splitlines()[0],
     "source_sha256": source_hash()}  # of the source that ran: gpu_wheels/SOURCE has the sender's
try:
    import torch
    v.update(torch=torch.__version__, cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
             cuda_available=torch.cuda.is_available())
    if torch.cuda.is_available():
        v["gpu"] = torch.cuda.get_device_name(0)
except Exception as e:  # noqa: BLE001
    v["torch"] = f"not importable: {e}"
for mod in ("timm", "peft", "avalanche", "hydra", "numpy"):
    try:
        v[mod] = __import__(mod).__version__
    except Exception:  # noqa: BLE001
        v[mod] = "missing"
Path(sys.argv[1]).write_text(json.dumps(v, indent=1))
print(json.dumps(v))
EOF

# ------------------------------------------------------------------ install
install() {
    local check='
import importlib.util, sys
mods = ["torch", "torchvision", "timm", "peft", "einops", "safetensors", "sklearn", "scipy", "numpy", "PIL", "yaml",
        "tqdm", "matplotlib", "tensorboard", "pytest", "avalanche", "hydra", "omegaconf", "antlr4", "dill", "gdown",
        "bs4", "pytorchcv", "qpsolvers", "GPUtil", "wandb"]
missing = [m for m in mods if importlib.util.find_spec(m) is None]
print(" ".join(missing))'
    local missing
    missing=$("$PY" -c "$check")
    echo "missing before: ${missing:-nothing}"
    if [ -n "$missing" ] && [ -n "$(echo "$missing" | tr ' ' '\n' | grep -v '^wandb$')" ]; then
        ls gpu_wheels/*.whl > /dev/null 2>&1 || { echo "no gpu_wheels/*.whl: run make gpu-wheels and carry gpu_wheels"; return 1; }
        # --no-deps: exactly the carried set (the machine has the rest); no --upgrade: what is there stays
        local pip=("$PY" -m pip install -q --no-index --no-deps --no-cache-dir --no-compile --find-links gpu_wheels)
        PIP_CONFIG_FILE=/dev/null "${pip[@]}" gpu_wheels/*.whl \
            || PIP_CONFIG_FILE=/dev/null "${pip[@]}" --break-system-packages gpu_wheels/*.whl || return 1
    fi
    if ! "$PY" -c "import wandb" 2>/dev/null; then
        # avalanche-lib 0.6 imports wandb when it is imported; gift_cl needs it only for logger=wandb
        local site
        site=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
        cat > "$site/wandb.py" <<'STUB'
"""A stand-in that analysis/gpu/check.sh put here because wandb is not installed: avalanche-lib 0.6 imports wandb
when it is imported; gift_cl uses it only with logger=wandb."""


def __getattr__(name):
    raise AttributeError(f"wandb.{name}: wandb is not installed here (this is analysis/gpu/check.sh's stand-in for "
                         "avalanche's import); use logger=csv or logger=tensorboard")
STUB
        echo "wandb absent: stand-in module written to $site/wandb.py"
    fi
    missing=$("$PY" -c "$check")
    echo "missing after: ${missing:-nothing}"
    "$PY" -c "
import avalanche
from avalanche.training.templates import SupervisedTemplate
import gift_cl, gift_cl.strategies, gift_cl.orchestration.cli, gift_cl.orchestration.loop
print('gift_cl, strategies, orchestration import')" || return 1
    "$PY" run.py --cfg job > /dev/null || return 1
    [ -z "$missing" ]
}
echo "=== install (at $(( $(date +%s) - T0 ))s)"
t=$(date +%s)
install > "$WORK/install.txt" 2>&1
rc=$?
cat "$WORK/install.txt"
record install $rc $(( $(date +%s) - t )) "$(grep '^missing after' "$WORK/install.txt")"
if [ "$DRY" = 0 ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    record cuda 1 0 "torch sees no CUDA device: every GPU step below fails"
fi

# ------------------------------------------------------------------ throughput (alone on the GPU)
if [ "$DRY" = 1 ]; then
    BENCH=(--quick --device cpu --threads 1 --repeats 1 --warmup 1 --gen-repeats 1)
else
    BENCH=(--model vit_base_patch16_224 --img-size 224 --batch-size 64 --device cuda --tf32 --repeats 10 --warmup 3
           --gen-repeats 10)  # --tf32: as a run's default (tf32=true) for the fp32 matmuls left under autocast
fi
step bench 100 "$PY" analysis/bench_speed.py "${BENCH[@]}" --precision bf16 --goals gpu --sections train gen eval \
    --json "$WORK/bench_gpu.json"

# ------------------------------------------------------------------ CUDA tests and the reference runs
if [ "$DRY" = 1 ]; then
    # no CUDA here: collect the tests, and check that one fails (never skips) with its message
    TESTS=(bash -c '"$0" -m pytest -m gpu -q -p no:cacheprovider --collect-only tests/test_gpu.py || exit 1
        out=$("$0" -m pytest -m gpu -q -p no:cacheprovider -k test_cuda_is_available --junitxml="$1" tests/test_gpu.py)
        rc=$?; echo "$out" | tail -n 3
        [ $rc -ne 0 ] && echo "$out" | grep -q "sees no GPU here" || { echo "expected a failure without CUDA"; exit 1; }
        echo "without CUDA the gpu tests fail (never skip), as designed"' "$PY" "$WORK/gpu_tests.xml")
    REF=(device=cpu threads=1 model=vit_tiny_random "benchmark.domains=[digits,signs]" benchmark.n_train=48
         benchmark.n_test=24 optim.epochs=1)
else
    # 4 pytest-xdist workers where installed (each test is one small run; they share the GPU)
    XDIST=(); "$PY" -c "import xdist" 2>/dev/null && XDIST=(-n 4)
    TESTS=("$PY" -m pytest -m gpu -q -p no:cacheprovider -rA "${XDIST[@]}" --junitxml="$WORK/gpu_tests.xml"
           tests/test_gpu.py)
    REF=(device=cuda)
fi
reference_runs() {
    step ref_fp32 115 "$PY" run.py "${REF[@]}" precision=fp32 progress=false hydra.run.dir="$WORK/ref_fp32"
    step ref_bf16 115 "$PY" run.py "${REF[@]}" precision=bf16 progress=false hydra.run.dir="$WORK/ref_bf16"
}
if [ "${GPU_CHECK_SERIAL:-0}" = 1 ]; then
    reference_runs
    step tests 230 "${TESTS[@]}"
else  # the tests beside the runs: both fit the ~6 minutes; the runs' wall times are then shared with the tests
    (step tests 230 "${TESTS[@]}" > "$WORK/tests.console" 2>&1) &
    tests_pid=$!
    reference_runs
    wait $tests_pid
    cat "$WORK/tests.console"
    grep -q $'^tests\t0\t' "$WORK/steps.tsv" || FAILED=1
fi

# ------------------------------------------------------------------ summary and the output folder
"$PY" analysis/gpu/summary.py "$WORK" "$OUT" || FAILED=1
tar -czf "$OUT/gpu_check.tar.gz" -C "$(dirname "$WORK")" --exclude='checkpoints' --exclude='*.npz' \
    --exclude='*.png' --exclude='*.safetensors' "$(basename "$WORK")"
echo "gpu_check: $(( $(date +%s) - T0 )) s; output in $OUT: $(ls "$OUT" | tr '\n' ' ')"
[ $FAILED = 0 ] && echo "gpu_check: every step passed" || echo "gpu_check: a step FAILED (summary above)"
exit $FAILED
