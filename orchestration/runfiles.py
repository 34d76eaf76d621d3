"""What a run directory holds, by name, and which configuration keys leave a run's numbers unchanged: the one
place for both. Imports nothing but the standard library, so the tools that only read run directories (the
sweep runner's planning, ``analysis/compare.py``, ``analysis/summarize.py``) can use it without torch.
(``predictions.npz`` is named by :data:`gift_cl.reporting.PREDICTIONS_FILE`, beside the code that writes it.)
"""
from __future__ import annotations

from pathlib import Path

# ------------------------------------------------------------------------------------------- file names
CONFIG_FILE = "config_resolved.yaml"  # the resolved configuration, saved when the run starts
OVERRIDES_FILE = "overrides.yaml"  # the command line that started the run
RESULTS_FILE = "results.json"  # the results schema (gift_cl.reporting.read_results); finished: true at the end
RESULTS_CSV = "results.csv"  # one row per task
SUMMARY_FILE = "summary.txt"  # the printed summary of a finished run
ACCURACY_PLOT = "accuracy.png"
MATRIX_CSV = "accuracy_matrix.csv"  # the accuracy matrix R[i][j] (protocols that have one)
MATRIX_PLOT = "accuracy_matrix.png"
CIL_CSV = "class_incremental.csv"  # the class-incremental protocol: accuracy over all classes seen, per stage
CIL_PLOT = "class_incremental.png"
CHECKPOINTS_DIR = "checkpoints"  # last.pt, and each finished task's <task>.safetensors (independent protocol)
CHECKPOINT = Path(CHECKPOINTS_DIR) / "last.pt"  # the run checkpoint (gift_cl.checkpoint.save_run_checkpoint)
MODEL_DIR = "model"  # the run's model as a gift_cl.pretrained directory (gift_cl.orchestration.export)
LOG_FILE = "gift_cl.log"  # the job log
LOCK_FILE = ".lock"  # held while a run uses the directory (gift_cl.orchestration.rundir.RunLock)
CLAIM_FILE = ".claim"  # a sweep worker's claim on the run
HYDRA_DIR = ".hydra"  # Hydra's record of the job
SWEEP_OVERRIDES_FILE = "overrides.txt"  # a sweep run's plan line (gift_cl.orchestration.sweep)
SWEEP_ERROR_FILE = "sweep_error.txt"  # the traceback of a sweep run that failed
INDEX_FILE = "index.tsv"  # in a sweep's --out: directory <tab> overrides, one line per run of its plans

# what a run leaves in its directory before it saves its configuration (gift_cl.orchestration.rundir.aborted_start)
START_UP_DEBRIS = frozenset({LOCK_FILE, CLAIM_FILE, OVERRIDES_FILE, HYDRA_DIR, LOG_FILE})

# ------------------------------------------------------------------------------------------- result-neutral keys
# top-level configuration keys that do not change a run's numbers: a resume may change them
# (gift_cl.orchestration.rundir.config_differences), the analysis tools do not tell runs apart by them, and a test
# run does not inherit them from its validation run (analysis/compare.py --test-plan)
RESULT_NEUTRAL_KEYS = ("threads", "num_workers", "progress", "device", "eval_batch_size", "resume",
                       "checkpoint_every", "allow_config_change", "logger")


def override_key(override: str) -> str:
    """The dotted key a command-line override sets: ``+a.b=1``, ``~a.b`` -> ``a.b``."""
    return override.lstrip("+~").split("=", 1)[0]


def result_neutral(key_or_override: str) -> bool:
    """Whether a dotted configuration key, or the override that sets it, is or lies below a key of
    :data:`RESULT_NEUTRAL_KEYS` (``threads=2``, ``logger.project=x``)."""
    return override_key(key_or_override).split(".")[0] in RESULT_NEUTRAL_KEYS
