"""The class-incremental protocol (gift_cl.classincremental): no task id at test, one growing label space.

Metrics as the field reports them (accuracy per stage, last, average incremental accuracy, forgetting), the
evaluation's bookkeeping on a model whose predictions are known, the GIFT variants and the training-free
baselines learning on offline data, exact resume, and the results it writes."""
from __future__ import annotations

import json

import pytest
import torch

from gift_cl.classincremental.evaluation import (
    check_disjoint_classes,
    class_incremental_summary,
    evaluate_class_incremental,
)
from gift_cl.data.base import DataError, TaskData
from gift_cl.orchestration.loop import Run
from gift_cl.reporting import read_results

from runs import PROCEDURAL, TINY, compose_cfg, run_in_process, run_py, stop_then_restore


# ----------------------------------------------------------------------------- metrics
def test_summary_is_last_average_and_forgetting_of_the_stages():
    matrix = [[0.9], [0.6, 0.8], [0.5, 0.7, 0.9]]
    acc = [0.9, 0.7, 0.7]
    s = class_incremental_summary(matrix, acc, ["a", "b", "c"])
    assert s["last_accuracy"] == 0.7
    assert s["average_incremental_accuracy"] == pytest.approx((0.9 + 0.7 + 0.7) / 3)
    assert s["forgetting"] == pytest.approx(((0.9 - 0.5) + (0.8 - 0.7)) / 2)
    assert s["forgetting_per_task"] == pytest.approx({"a": 0.4, "b": 0.1})
    # evaluate=last_experience: only the last stage is known, so no average and no forgetting
    s = class_incremental_summary([[], [], [0.5, 0.7, 0.9]], [None, None, 0.7], ["a", "b", "c"])
    assert (s["last_accuracy"], s["average_incremental_accuracy"], s["forgetting"]) == (0.7, None, None)
    assert class_incremental_summary([], [], []) is None


class _Exp:
    """A test experience: (x, y, t) batches; ``x`` carries the global class the fake model predicts."""

    def __init__(self, task, y, predicted):
        self.task_label = task
        self.dataset = self
        self.rows = [(torch.tensor([float(p)]), int(yy), task) for yy, p in zip(y, predicted)]

    def eval(self):
        return self

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


class _KnownModel(torch.nn.Module):
    """Two tasks of 3 and 2 classes (offsets 0 and 3); predicts the global class written in x."""

    def class_offsets(self):
        return {0: 0, 1: 3}

    def class_incremental_logits(self, x, infer_task="auto"):
        return torch.nn.functional.one_hot(x[:, 0].long(), 5).float()


def test_evaluation_counts_global_classes_and_the_task_of_the_prediction():
    exps = [_Exp(0, [0, 1, 2, 2], [0, 1, 4, 0]),  # right, right, wrong task, right task wrong class
            _Exp(1, [0, 1], [3, 3])]  # global 3, 4: right, wrong class of the right task
    out = evaluate_class_incremental(_KnownModel(), exps, batch_size=3, device="cpu")
    assert out["per_task"] == [0.5, 0.5]
    assert out["accuracy"] == pytest.approx(3 / 6)
    assert out["task_id_accuracy"] == pytest.approx(5 / 6)
    assert out["n"] == 6


def test_tasks_sharing_a_class_are_refused_before_any_work():
    def task(name, classes):
        data = [(torch.zeros(1), 0), (torch.zeros(1), 1)]

        class D(list):
            targets = [0, 1]
        return TaskData(name, D(data), D(data), 2, info={"classes": classes})

    check_disjoint_classes([task("a", [0, 1]), task("b", [2, 3])])
    with pytest.raises(DataError, match="class 1 belongs to task 'a' and to 'b'"):
        check_disjoint_classes([task("a", [0, 1]), task("b", [1, 3])])


# ----------------------------------------------------------------------------- runs
CIL = [*TINY, *PROCEDURAL, "benchmark.domains=[digits,signs,pedestrians]", "checkpoint_every=0"]


@pytest.mark.parametrize("overrides,rule", [
    (["strategy=gift_cil"], "nearest_class"),
    (["method=gift", "protocol=class_incremental", "strategy.infer_task=max_logit"], "max_logit"),
    (["method=lora", "protocol=class_incremental", "strategy.infer_task=nearest_task"], "nearest_task"),
    (["method=linear", "protocol=class_incremental"], "max_logit"),
    (["strategy=simplecil"], "head"),
    (["strategy=ranpac", "strategy.method.projection_dim=64"], "head"),
    (["strategy=gift_aper"], "head"),
])
def test_every_stage_is_evaluated_over_all_classes_seen(tmp_path, overrides, rule):
    res = run_in_process(compose_cfg(*CIL, *overrides), tmp_path)
    cil = res["class_incremental"]
    assert res["protocol"] == "class_incremental" and res["schema_version"] == 2
    assert len(cil["accuracy_per_stage"]) == 3 and all(0 <= a <= 1 for a in cil["accuracy_per_stage"])
    assert [len(r) for r in cil["accuracy_matrix"]] == [1, 2, 3]
    assert cil["last_accuracy"] == cil["accuracy_per_stage"][-1]
    assert cil["average_incremental_accuracy"] == pytest.approx(sum(cil["accuracy_per_stage"]) / 3)
    assert cil["infer_task"] == rule
    # stage 1: one task, so the class-incremental and task-incremental numbers agree for one-task methods
    assert cil["task_id_accuracy_per_stage"][0] == 1.0
    # the task-incremental accuracy matrix stays beside it
    assert [len(r) for r in res["accuracy_matrix"]] == [1, 2, 3]
    assert read_results(tmp_path)["class_incremental"]["last_accuracy"] == cil["last_accuracy"]
    rows = (tmp_path / "class_incremental.csv").read_text().splitlines()
    assert rows[0] == "stage,after,classes_seen,accuracy,task_id_accuracy" and len(rows) == 4
    assert rows[3].split(",")[2] == str(10 + 43 + 2)  # digits 10, signs 43, pedestrians 2 classes
    assert (tmp_path / "class_incremental.png").stat().st_size > 0
    assert "average incremental accuracy" in (tmp_path / "summary.txt").read_text()


def test_sequential_runs_have_no_class_incremental_block(tmp_path):
    res = run_in_process(compose_cfg(*CIL, "strategy=linear_multitask"), tmp_path)
    assert res["class_incremental"] is None and not (tmp_path / "class_incremental.csv").exists()


def test_training_free_methods_train_nothing_and_their_heads_are_the_class_means(tmp_path):
    cfg = compose_cfg(*CIL, "strategy=simplecil")
    run = Run(cfg, tmp_path)
    run.train_and_evaluate()
    model = run.model
    assert model.trainable_parameter_count()["total"] == 0
    x = torch.randn(4, 3, 32, 32)
    # with a task id: the cosine to that task's class means, i.e. its slice of the global head
    full = model.class_incremental_logits(x)
    assert full.shape == (4, 55)
    assert torch.equal(model(x, 1), full[:, 10:53].to(model(x, 1).dtype))


@pytest.mark.parametrize("overrides", [["strategy=gift_cil"], ["strategy=ranpac", "strategy.method.projection_dim=64"],
                                       ["strategy=gift_aper"]], ids=["gift_cil", "ranpac", "gift_aper"])
def test_a_stopped_run_resumes_to_the_same_class_incremental_numbers(tmp_path, overrides):
    def make(d):
        return Run(compose_cfg(*CIL, "checkpoint_every=1", *overrides), d)

    full = make(tmp_path / "full")
    full.train_and_evaluate()
    expected = full.write_results(final=True)
    _, resumed = stop_then_restore(make, tmp_path / "stopped")  # the process dies after the first stage
    resumed.train_and_evaluate()
    got = resumed.write_results(final=True)
    assert got["class_incremental"] == expected["class_incremental"]
    assert got["accuracy_matrix"] == expected["accuracy_matrix"]


def test_the_command_line_runs_it(tmp_path):
    proc = run_py(*CIL, "strategy=simplecil", f"hydra.run.dir={tmp_path / 'ok'}")
    assert "average incremental accuracy" in proc.stdout + proc.stderr
    results = json.loads((tmp_path / "ok" / "results.json").read_text())
    assert results["strategy"] == "simplecil" and results["finished"]


# ----------------------------------------------------------------------------- learning on offline data
@pytest.mark.parametrize("strategy", ["strategy=simplecil", "strategy=ranpac strategy.method.projection_dim=1000",
                                      "strategy=gift_aper", "strategy=gift_cil"])
def test_class_incremental_methods_learn(tmp_path, strategy):
    """textures (20 classes) then pedestrians (2): 22 classes, chance 4.5 %; the task of an image is easy to
    tell from the frozen backbone, so the class-incremental accuracy follows the per-task one."""
    cfg = compose_cfg(*strategy.split(), "benchmark.domains=[textures,pedestrians]", "optim.epochs=3",
                      "benchmark.n_train=300", "benchmark.n_test=200", "checkpoint_every=0", model="vit_procedural")
    cil = run_in_process(cfg, tmp_path)["class_incremental"]
    assert cil["accuracy_per_stage"][0] > 0.25, cil  # textures alone: 5x chance
    assert cil["last_accuracy"] > 0.4, cil
    assert cil["task_id_accuracy_per_stage"][-1] > 0.95, cil


@pytest.mark.real_data
def test_split_fashion_mnist_class_incremental(tmp_path):
    """The real Split-FMNIST (Debian's dataset-fashion-mnist) class-incrementally: 5 stages of 2 classes, SimpleCIL on
    the shipped backbone, 200 training / 100 test images per class: every stage above chance (1/classes seen)."""
    from fixtures import require_debian_fashion_mnist

    require_debian_fashion_mnist()
    cfg = compose_cfg("strategy=simplecil", "benchmark=avalanche/split_fmnist", "benchmark.train_per_class=200",
                      "benchmark.test_per_class=100", "checkpoint_every=0", "progress=false", model="vit_formula")
    res = run_in_process(cfg, tmp_path)
    cil = res["class_incremental"]
    assert [t["num_classes"] for t in res["tasks"]] == [2] * 5
    for stage, acc in enumerate(cil["accuracy_per_stage"]):
        assert acc > 1.5 / (2 * (stage + 1)), cil  # 1.5x chance over the classes seen
    assert cil["last_accuracy"] > 0.5, cil  # 5x chance (measured: 0.71)


def test_evaluating_the_last_stage_only_gives_the_full_runs_last_accuracy(tmp_path):
    """``evaluate=last_experience`` (selection sweeps): only the last stage is scored, with the number the run that
    scores every stage gets (evaluation never changes what trains)."""
    full = run_in_process(compose_cfg(*CIL, "strategy=gift_cil"), tmp_path / "full")["class_incremental"]
    last = run_in_process(compose_cfg(*CIL, "strategy=gift_cil", "evaluate=last_experience"),
                          tmp_path / "last")["class_incremental"]
    assert last["accuracy_per_stage"][:2] == [None, None]
    assert last["last_accuracy"] == full["last_accuracy"]
    assert last["average_incremental_accuracy"] is None and last["forgetting"] is None
