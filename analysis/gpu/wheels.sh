#!/usr/bin/env bash
# `make gpu-wheels`: the wheels a GPU machine without network needs to run gift_cl, into gpu_wheels/ (git-ignored;
# carry it to the machine, then `make gpu-check` / analysis/gpu/check.sh installs them offline).
#
# The machine this is made for (docs/guide/gpu.md "Checking a GPU") has PyTorch, timm, peft, einops, safetensors,
# scikit-learn, matplotlib, tensorboard, torchmetrics, requests, tqdm, pytest... but not avalanche-lib, Hydra or
# OmegaConf. This set is what `import avalanche` (0.6 imports most of its dependencies when it is imported) and
# gift_cl's own imports need beyond that, found by importing gift_cl, strategies and orchestration in a fresh venv
# holding only torch, torchvision, timm, peft, einops, safetensors, scikit-learn and what that image lists.
# Every wheel is pure Python (py3-none-any): one set for every Python version. Two are sdists on PyPI
# (antlr4-python3-runtime 4.9.3, GPUtil 1.4.0): built into wheels here, so nothing is built on the machine.
# Versions: constraints.txt. avalanche-lib's other dependencies are not imported by gift_cl (wandb: replaced by a
# stand-in module where it is absent, see analysis/gpu/check.sh; qpsolvers' solvers, torchaudio...).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
DEST=${GPU_WHEELS:-gpu_wheels}
PACKAGES="avalanche-lib hydra-core omegaconf antlr4-python3-runtime dill gdown beautifulsoup4 soupsieve pytorchcv
qpsolvers gputil"
pins=()
for p in $PACKAGES; do
    v=$(grep -i "^$p==" constraints.txt | head -1 | cut -d= -f3)
    [ -n "$v" ] || { echo "gpu-wheels: $p has no pin in constraints.txt" >&2; exit 1; }
    pins+=("$p==$v")
done
mkdir -p "$DEST"
rm -f "$DEST"/*.whl "$DEST"/*.tar.gz
# --no-deps: exactly this set; the local mirror's pip configuration is bypassed (PIP_CONFIG_FILE=/dev/null)
# except for the caps in /etc/xdg/pip/constraints.txt, which only concern torch
sdists=$(mktemp -d)
trap 'rm -rf "$sdists"' EXIT
PIP_CONFIG_FILE=/dev/null "$PY" -m pip download -q --no-deps -d "$sdists" "${pins[@]}"
for f in "$sdists"/*; do
    case "$f" in
        *.whl) mv "$f" "$DEST"/ ;;
        *) PIP_CONFIG_FILE=/dev/null "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" "$f" ;;
    esac
done
n=$(ls "$DEST"/*.whl | wc -l)
[ "$n" -eq "$(echo $PACKAGES | wc -w)" ] || { echo "gpu-wheels: $n wheels for $(echo $PACKAGES | wc -w) packages" >&2; exit 1; }
if ls "$DEST"/*.whl | grep -v -- '-py[23.]*-none-any.whl$'; then
    echo "gpu-wheels: the wheels above are not pure Python: download them per Python version" >&2; exit 1
fi
# where the tree was sent from: gpu_check.sh reports it (the machine's copy has no .git); run make gpu-wheels
# again right before sending the tree, so that it names the commit and source that will run
{
    echo "$(git rev-parse HEAD 2>/dev/null || echo no-git) source_sha256 $("$PY" analysis/gpu/summary.py --source-hash)"
    git status --porcelain 2>/dev/null | sed 's/^/  /'
} > "$DEST/SOURCE"
ls -l "$DEST"
du -sh "$DEST"
head -1 "$DEST/SOURCE"
