"""Result files a researcher reads or looks at: CSV rows, a printed table, plots."""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Optional

from .atomic import atomic_path, write_text
from .protocols import get_protocol


def read_json(path: str | os.PathLike) -> Optional[dict]:
    path = Path(path)
    if not path.is_file():
        return None
    with open(path) as f:
        return json.load(f)


RESULTS_SCHEMA_VERSION = 2  # orchestration/results.py writes it
# what the analysis tools read: version 2 added the class_incremental block (null outside that protocol)
READABLE_SCHEMA_VERSIONS = (1, 2)


def find_result_dirs(paths) -> list[Path]:
    """Every run directory (a folder with ``results.json``) at or below the given paths."""
    runs = []
    for p in map(Path, paths):
        runs += [r.parent for r in ([p / "results.json"] if (p / "results.json").is_file() else p.rglob("results.json"))]
    return sorted(set(runs))


class ResultsError(SystemExit):
    """A ``results.json`` that is not the results schema. A ``SystemExit`` carrying one line (``error:
    ResultsError: <file>: <what>``): an analysis tool stops with it, exit status 1, no traceback."""

    def __init__(self, path: str | os.PathLike, message: str):
        super().__init__(f"error: ResultsError: {path}: {message}")


# ------------------------------------------------------------------ the fields the analysis tools read
class _Of:
    """A container field: ``_Of(list, item)`` (every item) or ``_Of(dict, item)`` (every value)."""

    def __init__(self, kind: type[list] | type[dict], item):
        self.kind, self.item = kind, item


class _Nullable:
    def __init__(self, inner):
        self.inner = inner


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


NUMBER = ("a finite number", _is_number)
FRACTION = ("a fraction in [0, 1] (accuracies are fractions)", lambda v: _is_number(v) and 0 <= v <= 1)
INTEGER = ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool))
TEXT = ("a string", lambda v: isinstance(v, str))
FLAG = ("true or false", lambda v: isinstance(v, bool))

# field: (type, required); a dict is a JSON object with those fields (others are allowed and not read)
RESULTS_FIELDS = {
    "strategy": (TEXT, True),
    "protocol": (TEXT, True),
    "seed": (INTEGER, True),
    "finished": (FLAG, True),
    "tasks": (_Of(list, {"name": (TEXT, True), "num_classes": (INTEGER, False),
                         "info": (_Nullable({"eval_split": (TEXT, False)}), False)}), True),
    "final_accuracy": (_Of(dict, FRACTION), True),
    "average_accuracy": (_Nullable(FRACTION), True),
    "params": ({"per_task": (_Of(dict, NUMBER), True), "shared": (NUMBER, True),
                "per_task_excl_classifier": (_Nullable(_Of(dict, NUMBER)), False),
                "total": (_Nullable(NUMBER), False), "backbone": (_Nullable(NUMBER), False)}, True),
    "accuracy_matrix": (_Of(list, _Of(list, _Nullable(FRACTION))), False),
    "forgetting": (_Nullable(NUMBER), False),
    "bwt": (_Nullable(NUMBER), False),
    "task_id_accuracy": (_Nullable(FRACTION), False),
    "average_accuracy_inferred_task": (_Nullable(FRACTION), False),
    "wall_time_s": (_Nullable(NUMBER), False),
    "overrides": (_Of(list, TEXT), False),
    "addons": (_Nullable(_Of(list, TEXT)), False),
    "plugins": (_Nullable(_Of(list, TEXT)), False),  # the add-ons' field in results written under its former name
    "data_seed": (_Nullable(INTEGER), False),
    "benchmark": (TEXT, False),
    "method": (TEXT, False),
    "class_incremental": (_Nullable({
        "accuracy_per_stage": (_Of(list, _Nullable(FRACTION)), True),
        "last_accuracy": (_Nullable(FRACTION), True),
        "average_incremental_accuracy": (_Nullable(FRACTION), True),
        "accuracy_matrix": (_Of(list, _Of(list, _Nullable(FRACTION))), True),
        "forgetting": (_Nullable(NUMBER), True)}), False),
}


def _words(value) -> str:
    kind = ("null" if value is None else "a boolean" if isinstance(value, bool) else "a number"
            if isinstance(value, (int, float)) else "a string" if isinstance(value, str) else "a list"
            if isinstance(value, list) else "an object")
    shown = json.dumps(value)
    return f"{kind} {shown if len(shown) <= 40 else shown[:37] + '...'}"


def _check_field(value, spec, field: str, path) -> None:
    """``value`` of ``field`` against ``spec`` (see :data:`RESULTS_FIELDS`); the first mismatch stops."""
    if isinstance(spec, _Nullable):
        if value is not None:
            _check_field(value, spec.inner, field, path)
    elif isinstance(spec, _Of):
        if not isinstance(value, spec.kind):
            raise ResultsError(path, f"field {field!r} must be {'a list' if spec.kind is list else 'an object'}, "
                                     f"got {_words(value)}")
        items = enumerate(value) if isinstance(value, list) else value.items()  # value is a spec.kind
        for key, item in items:
            _check_field(item, spec.item, f"{field}[{key}]" if spec.kind is list else f"{field}.{key}", path)
    elif isinstance(spec, dict):
        if not isinstance(value, dict):
            raise ResultsError(path, f"field {field!r} must be an object, got {_words(value)}")
        for name, (sub, required) in spec.items():
            here = f"{field}.{name}" if field else name
            if name not in value:
                if required:
                    raise ResultsError(path, f"field {here!r} is missing (docs/guide/runs.md \"Results schema\")")
                continue
            _check_field(value[name], sub, here, path)
    elif not spec[1](value):
        raise ResultsError(path, f"field {field!r} must be {spec[0]}, got {_words(value)}")


def read_results(run_dir: str | os.PathLike) -> dict:
    """A run's ``results.json``, checked against the results schema: the fields the analysis tools read
    (:data:`RESULTS_FIELDS`) with their types. A file that is unreadable, truncated, not a JSON object, of
    another schema version or with a field missing or mistyped stops with one :class:`ResultsError` naming
    the file and the field."""
    path = Path(run_dir) / "results.json"
    try:
        res = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ResultsError(path, f"cannot be read ({err.strerror or err})") from None
    except UnicodeDecodeError:
        raise ResultsError(path, "is not UTF-8 text; expected the JSON a run writes") from None
    except json.JSONDecodeError as err:
        raise ResultsError(path, f"is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
                                 f"truncated or damaged?") from None
    if not isinstance(res, dict):
        raise ResultsError(path, f"expected a JSON object (the results schema), got {_words(res)}")
    if res.get("schema_version") not in READABLE_SCHEMA_VERSIONS:
        raise ResultsError(path, f"schema_version {res.get('schema_version')!r}, this tool reads "
                                 f"{' and '.join(map(str, READABLE_SCHEMA_VERSIONS))}")
    _check_field(res, RESULTS_FIELDS, "", path)
    return res


PREDICTIONS_FILE = "predictions.npz"


def write_predictions(predictions: dict[str, tuple], run_dir: str | os.PathLike) -> None:
    """``predictions.npz``: for each task ``<task>.pred`` and ``<task>.target`` (int64, test-set order)."""
    import numpy as np

    # Any: mypy would match the arrays against savez_compressed's `allow_pickle: bool` (no key is that name)
    arrays: dict[str, Any] = {f"{task}.{kind}": np.asarray(a, dtype=np.int64)
              for task, (pred, target) in predictions.items() for kind, a in (("pred", pred), ("target", target))}
    with atomic_path(Path(run_dir) / PREDICTIONS_FILE) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)


def read_predictions(run_dir: str | os.PathLike) -> Optional[dict[str, tuple]]:
    """``{task: (pred, target)}`` from a run's ``predictions.npz`` (no pickles), or None without one."""
    import numpy as np

    path = Path(run_dir) / PREDICTIONS_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as err:
        raise SystemExit(f"{path}: not a readable predictions file ({type(err).__name__}: {err})") from None
    tasks = {k.rsplit(".", 1)[0] for k in arrays}
    out = {}
    for task in tasks:
        pred, target = arrays.get(f"{task}.pred"), arrays.get(f"{task}.target")
        if pred is None or target is None or pred.shape != target.shape or pred.ndim != 1:
            raise SystemExit(f"{path}: task {task!r} needs 1-D .pred and .target arrays of one length")
        out[task] = (pred, target)
    return out


def write_csv(rows: list[dict], path: str | os.PathLike) -> None:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_text(buf.getvalue(), path)


def format_summary(results: dict) -> str:
    """The table printed at the end of a run (any protocol): per-task accuracy and trainable parameters,
    the accuracy matrix R[i][j] when there is one, and the stream summary."""
    names = [t["name"] for t in results["tasks"]]
    p = results["params"]
    lines = [f"{results['strategy']} ({results['protocol']}) on {results['benchmark']} (seed {results['seed']})"]
    header = f"{'task':<24}{'classes':>8}{'top-1 %':>10}{'trainable':>12}"
    lines += [header, "-" * len(header)]
    for t in results["tasks"]:
        n = t["name"]
        acc = results["final_accuracy"].get(n)
        lines.append(f"{n:<24}{t['num_classes']:>8}{'' if acc is None else f'{100 * acc:.2f}':>10}"
                     f"{p['per_task'].get(n, 0):>12,}")
    lines.append("-" * len(header))
    if results.get("average_accuracy") is not None:
        lines.append(f"{'mean':<24}{'':>8}{100 * results['average_accuracy']:>10.2f}")
    protocol = get_protocol(results["protocol"])
    if protocol.has_matrix:
        width = max(8, max(len(n) for n in names) + 1)
        lines += ["", "accuracy matrix R[i][j] (%): row = after training, column = task evaluated",
                  f"{'after':<{width}}" + "".join(f"{n[:width - 1]:>{width}}" for n in names)]
        for label, row in zip(protocol.matrix_row_labels(names), results["accuracy_matrix"]):
            cells = "".join(f"{100 * a:>{width}.1f}" for a in row) if row else "  (not evaluated)"
            lines.append(f"{label[:width - 1]:<{width}}" + cells)
        lines.append("")
    per_task, adapters = list(p["per_task"].values()), list(p["per_task_excl_classifier"].values())
    if results.get("forgetting") is not None:
        lines += [f"forgetting         {100 * results['forgetting']:.2f}", f"BWT                {100 * results['bwt']:.2f}"]
    if per_task:
        lines.append(f"trainable params   per task {min(per_task):,}–{max(per_task):,} "
                     f"({min(adapters):,}–{max(adapters):,} without the classifier), shared {p['shared']:,}, "
                     f"total {p['total']:,} ({100 * p['total'] / p['backbone']:.2f}% of the backbone)")
    if results.get("task_id_accuracy") is not None:
        lines += [
            f"task-id accuracy   {100 * results['task_id_accuracy']:.2f}  (inferred from frozen [CLS] means)",
            f"accuracy, inferred task ids {100 * results['average_accuracy_inferred_task']:.2f}",
        ]
    lines += _class_incremental_lines(results)
    lines += _score_lines(results)
    return "\n".join(lines)


def _class_incremental_lines(results: dict) -> list[str]:
    cil = results.get("class_incremental")
    if not cil:
        return []
    stages = "  ".join("-" if a is None else f"{100 * a:.1f}" for a in cil["accuracy_per_stage"])
    rule = cil.get("infer_task")
    how = "one head over all classes" if rule == "head" else f"task inferred by {rule}"
    lines = ["", f"class-incremental (no task id, every class seen; {how})",
             f"accuracy per stage {stages}", f"last accuracy      {100 * cil['last_accuracy']:.2f}"]
    if cil["average_incremental_accuracy"] is not None:
        lines.append(f"average incremental accuracy {100 * cil['average_incremental_accuracy']:.2f}")
    if cil["forgetting"] is not None:
        lines.append(f"forgetting (class-incremental) {100 * cil['forgetting']:.2f}")
    return lines


def plot_class_incremental(results: dict, path: str | os.PathLike) -> None:
    """Accuracy over all classes seen after each stage (class-incremental), beside the task-incremental mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cil = results["class_incremental"]
    classes = [sum(t["num_classes"] for t in results["tasks"][: i + 1]) for i in range(len(cil["accuracy_per_stage"]))]
    points = [(c, 100 * a) for c, a in zip(classes, cil["accuracy_per_stage"]) if a is not None]
    til = [(c, 100 * sum(row) / len(row)) for c, row in zip(classes, results["accuracy_matrix"]) if row]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot(*zip(*points), marker="o", label="class-incremental (no task id)")
    if til:
        ax.plot(*zip(*til), marker="s", linestyle="--", label="task-incremental (task id given)")
    ax.set_xlabel("classes seen")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(0, 105)
    title = f"{results['strategy']} on {results['benchmark']}: last {100 * cil['last_accuracy']:.1f}%"
    if cil["average_incremental_accuracy"] is not None:
        title += f", avg {100 * cil['average_incremental_accuracy']:.1f}%"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def _score_lines(results: dict) -> list[str]:
    if "decathlon_score" not in results:
        return []
    splits = "/".join(results["decathlon_eval_splits"])
    return [f"decathlon score    {results['decathlon_score']['total']:.1f}  (evaluated on {splits})"]


def plot_task_accuracies(results: dict, path: str | os.PathLike) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["final_accuracy"])
    accs = [100 * a for a in results["final_accuracy"].values()]
    fig, ax = plt.subplots(figsize=(max(4, 0.7 * len(names) + 2), 3.2))
    bars = ax.bar(names, accs, color="tab:blue")
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{results['strategy']} ({results['protocol']}) on {results['benchmark']}")
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def plot_accuracy_matrix(results: dict, path: str | os.PathLike) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [t["name"] for t in results["tasks"]]
    matrix = results["accuracy_matrix"]
    grid = np.full((len(matrix), len(names)), np.nan)
    for i, row in enumerate(matrix):
        grid[i, : len(row)] = 100 * np.asarray(row)
    fig, ax = plt.subplots(figsize=(0.6 * len(names) + 3, 0.5 * len(matrix) + 2))
    im = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis")
    for (i, j), v in np.ndenumerate(grid):
        if not np.isnan(v):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="white" if v < 60 else "black")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    rows = get_protocol(results["protocol"]).matrix_row_labels(names)[: len(matrix)]
    ax.set_yticks(range(len(matrix)), rows, fontsize=8)
    ax.set_xlabel("evaluated task")
    ax.set_ylabel("after training")
    avg = results["average_accuracy"]
    ax.set_title(f"{results['strategy']} on {results['benchmark']}" + ("" if avg is None else f": avg {100 * avg:.1f}%"))
    fig.colorbar(im, ax=ax, label="top-1 %")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
