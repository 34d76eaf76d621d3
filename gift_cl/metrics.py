"""Continual-learning metrics from the accuracy matrix R[i][j] (accuracy on task j after training task i)."""
from __future__ import annotations

from typing import Sequence


def average_accuracy(matrix: Sequence[Sequence[float]]) -> float:
    """Mean accuracy over all tasks seen, after the last training step."""
    last = matrix[-1]
    return sum(last) / len(last)


def forgetting(matrix: Sequence[Sequence[float]]) -> dict:
    """Per task j (except the last): max over earlier rows i ≥ j of R[i][j], minus R[T-1][j]; and the mean."""
    T = len(matrix)
    per_task = {}
    for j in range(T - 1):
        best = max(matrix[i][j] for i in range(j, T - 1))
        per_task[j] = best - matrix[T - 1][j]
    mean = sum(per_task.values()) / len(per_task) if per_task else 0.0
    return {"mean": mean, "per_task": per_task}


def backward_transfer(matrix: Sequence[Sequence[float]]) -> float:
    """BWT = mean over j < T-1 of R[T-1][j] - R[j][j] (negative = forgetting)."""
    T = len(matrix)
    if T < 2:
        return 0.0
    return sum(matrix[T - 1][j] - matrix[j][j] for j in range(T - 1)) / (T - 1)


def benchmark_scores(tasks, final_accuracy: dict) -> dict:
    """Benchmark-specific scores over the final per-task accuracies (fractions), keyed for results.json.

    VDD: the decathlon score. Domains evaluated on val (no test labels) make it a val score, which is
    labelled so, since it is not comparable with the official test-set number."""
    if tasks and all(t.info.get("benchmark") == "vdd" for t in tasks):
        from .data.vdd import decathlon_score

        splits = sorted({t.info.get("eval_split", "test") for t in tasks})
        return {"decathlon_score": decathlon_score(final_accuracy), "decathlon_eval_splits": splits}
    return {}
