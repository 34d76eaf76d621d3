"""The class-incremental evaluation: no task identity at test, one label space that grows.

After stage ``i`` (experience ``i`` of the stream) the model predicts, for every test image of the tasks seen so
far, one of all the classes seen so far (:meth:`~gift_cl.methods.base.TaskAwareModel.class_incremental_logits`).
Task ``t``'s label ``y`` is the global class ``offset_t + y`` (the classes of the tasks before it come first, in
the benchmark's class order). The metrics are those of the pretrained-ViT continual-learning literature
(LAMDA-PILOT, Mammoth):

* ``A_i``: accuracy over all test images of the seen classes after stage ``i`` (every image counts once);
* ``A_last`` = ``A_T``; ``A_avg`` = the mean of ``A_1..A_T`` (average incremental accuracy);
* the class-incremental accuracy matrix ``R[i][j]``: accuracy on task ``j``'s test images after stage ``i``, and
  its forgetting: the mean over old tasks of (best earlier − final) accuracy.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch.utils.data import DataLoader

from ..data.base import DataError


def check_disjoint_classes(tasks: Sequence) -> None:
    """The class-incremental protocol needs tasks with classes of their own (each new task adds classes). Tasks
    that record their classes (``info["classes"]``, e.g. the class-split benchmarks) must not share one; tasks
    of different domains (no record) are disjoint by construction."""
    seen: dict = {}
    for task in tasks:
        for c in (task.info or {}).get("classes") or ():
            if c in seen:
                raise DataError(f"class-incremental protocol: class {c!r} belongs to task {seen[c]!r} and to "
                                f"{task.name!r}; every task must bring new classes (a new-instances stream such "
                                "as CORe50 NI runs in protocol=sequential)")
            seen[c] = task.name


@torch.no_grad()
def evaluate_class_incremental(model, test_exps: Sequence, batch_size: int, device, infer_task: str = "auto",
                               autocast=None) -> dict:
    """Evaluate ``model`` without task ids on ``test_exps`` (the tasks seen so far): ``{"per_task": [accuracy of
    each experience's images], "accuracy": A over all images, "task_id_accuracy": how often the predicted class
    belongs to the image's task, "n": images}``. ``autocast``: a context-manager factory for the forward pass
    (the run's precision)."""
    model.eval()
    offsets = model.class_offsets()
    lookup = torch.zeros(max(offsets) + 1, dtype=torch.long)
    for t, off in offsets.items():
        lookup[t] = off
    starts = torch.as_tensor(sorted(offsets.values()))
    per_task, correct_all, task_all, n_all = [], 0, 0, 0
    for exp in test_exps:
        correct = n = 0
        for x, y, t in DataLoader(exp.dataset.eval(), batch_size=batch_size, shuffle=False):
            x = x.to(device)
            if autocast is not None:
                with autocast():
                    logits = model.class_incremental_logits(x, infer_task)
            else:
                logits = model.class_incremental_logits(x, infer_task)
            pred = logits.argmax(-1).cpu()
            target = lookup[t] + y
            correct += int((pred == target).sum())
            # the task whose class range holds the prediction
            owner = torch.searchsorted(starts, pred, right=True) - 1
            task_all += int((owner == torch.searchsorted(starts, lookup[t], right=True) - 1).sum())
            n += len(y)
        per_task.append(correct / n)
        correct_all, n_all = correct_all + correct, n_all + n
    return {"per_task": per_task, "accuracy": correct_all / n_all, "task_id_accuracy": task_all / n_all, "n": n_all}


def class_incremental_summary(matrix: list[list[float]], accuracies: list[Optional[float]],
                              names: list[str]) -> Optional[dict]:
    """``results.json``'s ``class_incremental`` block from the stages evaluated so far."""
    from ..metrics import forgetting

    if not accuracies:
        return None
    done = [a for a in accuracies if a is not None]
    complete = all(a is not None for a in accuracies) and all(len(r) == i + 1 for i, r in enumerate(matrix))
    result: dict = {
        "accuracy_per_stage": accuracies,
        "last_accuracy": accuracies[-1],
        "average_incremental_accuracy": sum(done) / len(done) if complete and done else None,
        "accuracy_matrix": matrix,
        "forgetting": None,
        "forgetting_per_task": None,
    }
    if complete and len(matrix) > 1:
        f = forgetting(matrix)
        result["forgetting"] = f["mean"]
        result["forgetting_per_task"] = {names[j]: v for j, v in f["per_task"].items()}
    return result
