"""Every method we ship learns something real on offline data, not only runs.

The shipped backbone (pretrained on the procedural upstream domains) is fine-tuned for a few epochs
on held-out procedural domains; each method must beat chance by a wide margin, and GIFT must beat the
linear probe it starts from.
"""
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

import gift_cl.config  # noqa: F401  (the ${asset:...} resolver)
from gift_cl.backbones import create_backbone
from gift_cl.continual import ContinualRun
from gift_cl.data.stream import build_stream
from gift_cl.optim import OptimConfig
from gift_cl.runner import seed_everything

from conftest import REPO

DOMAIN = "textures"  # 20 classes: chance is 5 %


def compose_cfg(*overrides):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=["progress=false", "benchmark.n_train=400", "benchmark.n_test=400",
                                           *overrides])
    OmegaConf.set_struct(cfg, False)
    cfg.benchmark_name = "procedural"
    return cfg


def single_task_accuracy(strategy: str, *overrides) -> float:
    cfg = compose_cfg(f"strategy={strategy}", f"benchmark.domains=[{DOMAIN}]", *overrides)
    task = instantiate(cfg.benchmark)[0]
    stream = build_stream([task])
    seed_everything(0)
    backbone = create_backbone(num_classes=task.num_classes, **OmegaConf.to_container(cfg.model, resolve=True))
    model = instantiate(cfg.strategy.method, backbone)
    optim = OptimConfig(**OmegaConf.to_container(cfg.optim, resolve=True))
    trainer = instantiate(cfg.strategy.trainer, model=model, optim=optim, progress=False)
    trainer.train(stream.train_stream[0])
    metrics = trainer.eval([stream.test_stream[0]])
    return metrics["Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp000"]


@pytest.fixture(scope="module")
def linear_probe():
    return single_task_accuracy("linear", "optim.epochs=6")


@pytest.mark.parametrize("strategy,overrides", [
    ("gift", ["generator=paca"]),
    ("gift", ["generator=linear"]),
    ("lora", []),
    ("finetune", []),
])
def test_single_task_methods_learn(strategy, overrides, linear_probe):
    acc = single_task_accuracy(strategy, "optim.epochs=6", *overrides)
    assert acc > 0.25, f"{strategy} {overrides}: {acc:.3f}"  # 5x chance
    if overrides == ["generator=paca"]:
        assert acc > linear_probe + 0.03, f"GIFT {acc:.3f} vs linear probe {linear_probe:.3f}"


def test_linear_probe_learns(linear_probe):
    assert linear_probe > 0.2  # 4x chance


@pytest.mark.parametrize("strategy", ["gift_multitask", "lora_multitask", "linear_multitask", "finetune_multitask",
                                      "naive", "ewc", "lwf"])
def test_continual_methods_learn_every_task(tmp_path, strategy):
    cfg = compose_cfg(f"strategy={strategy}", "benchmark.domains=[textures,pedestrians]", "optim.epochs=3",
                      "benchmark.n_train=300", "benchmark.n_test=200", "checkpoint_every=0")
    run = ContinualRun(cfg, tmp_path, OptimConfig(**OmegaConf.to_container(cfg.optim, resolve=True)))
    run.train_and_evaluate()
    res = run.write_results(final=True)
    textures_after_own, pedestrians_after_own = res["accuracy_matrix"][0][0], res["accuracy_matrix"][1][1]
    assert textures_after_own > 0.2, res["accuracy_matrix"]  # chance 5 %
    assert pedestrians_after_own > 0.6, res["accuracy_matrix"]  # chance 50 %
    assert res["task_id_accuracy"] > 0.9  # these two domains look nothing alike to the frozen backbone
