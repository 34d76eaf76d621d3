"""Each Avalanche 0.6 bug we work around (avalanche-0.6-notes.md): the bug is still there upstream
(so an upstream fix shows up here and the workaround can go), and our code path is right."""
import numpy as np
import pytest
import torch
from avalanche.models import MultiHeadClassifier, MultiTaskModule
from torch import nn
from torchvision.transforms import ToTensor

from gift_cl.data.base import ArrayDataset, TaskData
from gift_cl.data.stream import build_stream
from gift_cl.methods import PAD_LOGIT, LinearProbe
from gift_cl.optim import OptimConfig
from gift_cl.strategies import TaskAwareStrategy

from runs import tiny_vit


def toy_tasks(classes=(2, 5), n=24):
    rng = np.random.default_rng(0)
    out = []
    for i, c in enumerate(classes):
        def make(m, c=c):
            return ArrayDataset(rng.integers(0, 255, (m, 32, 32, 3), dtype=np.uint8), [j % c for j in range(m)],
                                transform=ToTensor())

        out.append(TaskData(f"t{i}", make(n), make(n // 2), c))
    return out


def test_padding_upstream_pads_with_zero_ours_with_large_negative():
    class Upstream(MultiTaskModule):
        def __init__(self):
            super().__init__()
            self.heads = nn.ModuleDict({"0": nn.Linear(4, 2), "1": nn.Linear(4, 5)})

        def forward_single_task(self, x, task_label):
            return self.heads[str(task_label)](x) - 100.0  # all real logits very negative

    x, labels = torch.randn(4, 4), torch.tensor([0, 0, 1, 1])
    model = Upstream()
    model.max_class_label = 5  # what adaptation() would have set after both tasks
    upstream = model(x, labels)
    assert bool((upstream[:2, 2:] == 0).all())
    assert upstream[:2].argmax(-1).ge(2).all()  # the bug: a phantom class wins
    ours = LinearProbe(tiny_vit(embed_dim=32, depth=1, training=True))
    ours.add_task(0, 2)
    ours.add_task(1, 5)
    out = ours(torch.randn(4, 3, 32, 32), labels)
    assert bool((out[:2, 2:] == PAD_LOGIT).all()) and bool(out[:2].argmax(-1).lt(2).all())


def test_classes_timeline_upstream_is_a_set_ours_a_list_that_masking_accepts():
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
    from avalanche.benchmarks.scenarios.task_aware import with_task_labels

    from gift_cl.data.stream import as_task_dataset

    tasks = toy_tasks()
    upstream = with_classes_timeline(with_task_labels(benchmark_from_datasets(
        train=[as_task_dataset(t.train, i) for i, t in enumerate(tasks)],
        test=[as_task_dataset(t.test, i) for i, t in enumerate(tasks)])))
    exp = upstream.train_stream[1]
    assert isinstance(exp.classes_in_this_experience, set)
    with pytest.raises(IndexError):
        MultiHeadClassifier(8, masking=True).adaptation(exp)
    ours = build_stream(tasks).train_stream[1]
    assert ours.classes_in_this_experience == [0, 1, 2, 3, 4]
    head = MultiHeadClassifier(8, masking=True)
    head.adaptation(ours)
    assert head.classifiers["1"].classifier.out_features == 5


def test_optimizer_upstream_registers_frozen_params_ours_only_trainable():
    from avalanche.training import Naive

    class FrozenBackboneMultiHead(MultiTaskModule):
        def __init__(self):
            super().__init__()
            self.backbone = tiny_vit(embed_dim=32, depth=1, training=True).requires_grad_(False)
            self.heads = MultiHeadClassifier(32)

        def forward_single_task(self, x, task_label):
            return self.heads(self.backbone(x), task_label)

    stream = build_stream(toy_tasks())
    upstream_model = FrozenBackboneMultiHead()
    naive = Naive(model=upstream_model, optimizer=torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1),
                  train_mb_size=8, train_epochs=1, device="cpu", evaluator=None)
    naive.train(stream.train_stream[0])
    registered = {id(p) for g in naive.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in registered for p in upstream_model.backbone.parameters())  # frozen weights registered

    model = LinearProbe(tiny_vit(embed_dim=32, depth=1, training=True))
    ours = TaskAwareStrategy(model=model, optim=OptimConfig(epochs=1, batch_size=8), progress=False)
    for exp in stream.train_stream:
        ours.train(exp)
        registered = {id(p) for g in ours.optimizer.param_groups for p in g["params"]}
        task = exp.task_label
        assert registered == {id(p) for p in model.classifiers[str(task)].parameters()}
        assert [g["weight_decay"] for g in ours.optimizer.param_groups] == [0.0, 1e-4]


def test_upstream_dill_checkpoint_fails_on_this_torch(tmp_path):
    from avalanche.checkpointing import save_checkpoint
    from avalanche.training import Naive

    model = nn.Linear(4, 2)
    naive = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), device="cpu", evaluator=None)
    with pytest.raises(Exception, match="(?i)pickl"):
        save_checkpoint(naive, str(tmp_path / "ckpt.pkl"))
