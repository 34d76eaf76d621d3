"""gift_cl.methods: every method we ship learns something real on offline data, not only runs.

The shipped backbone (pretrained on the procedural upstream domains) is fine-tuned for a few epochs
on held-out procedural domains; each method must beat chance by a wide margin, and GIFT must beat the
linear probe it starts from.
"""
import pytest

from runs import compose_cfg, run_in_process

DOMAIN = "textures"  # 20 classes: chance is 5 %


def single_task_accuracy(tmp_path, strategy: str, *overrides) -> float:
    cfg = compose_cfg(f"strategy={strategy}", f"benchmark.domains=[{DOMAIN}]", "benchmark.n_train=400",
                      "benchmark.n_test=400", "checkpoint_every=0", *overrides, model="vit_procedural")
    return run_in_process(cfg, tmp_path)["average_accuracy"]


@pytest.fixture(scope="module")
def linear_probe(tmp_path_factory):
    return single_task_accuracy(tmp_path_factory.mktemp("linear"), "linear", "optim.epochs=6")


@pytest.mark.parametrize("strategy,overrides", [
    ("gift", ["generator=paca"]),
    ("gift", ["generator=linear"]),
    ("lora", []),
    ("finetune", []),
    ("bitfit", []),
    ("vpt", []),
    ("adapter", []),
    ("lora_qkv", []),
    ("gift", ["generator=paca", "+addon=gist"]),
    ("lora", ["+addon=coeff"]),
])
def test_single_task_methods_learn(tmp_path, strategy, overrides, linear_probe):
    acc = single_task_accuracy(tmp_path, strategy, "optim.epochs=6", *overrides)
    assert acc > 0.25, f"{strategy} {overrides}: {acc:.3f}"  # 5x chance
    if overrides == ["generator=paca"]:
        assert acc > linear_probe + 0.03, f"GIFT {acc:.3f} vs linear probe {linear_probe:.3f}"


def test_linear_probe_learns(linear_probe):
    assert linear_probe > 0.2  # 4x chance


@pytest.mark.parametrize("strategy", ["gift_multitask", "lora_multitask", "linear_multitask", "finetune_multitask",
                                      "naive", "ewc", "lwf", "bitfit strategy.protocol=sequential",
                                      "bitfit strategy.protocol=joint", "replay"])
def test_continual_methods_learn_every_task(tmp_path, strategy):
    cfg = compose_cfg(*f"strategy={strategy}".split(), "benchmark.domains=[textures,pedestrians]", "optim.epochs=3",
                      "benchmark.n_train=300", "benchmark.n_test=200", "checkpoint_every=0", model="vit_procedural")
    res = run_in_process(cfg, tmp_path)
    if res["protocol"] == "joint":  # one experience with both tasks
        textures_after_own, pedestrians_after_own = res["final_accuracy"].values()
    else:
        textures_after_own, pedestrians_after_own = res["accuracy_matrix"][0][0], res["accuracy_matrix"][1][1]
    assert textures_after_own > 0.2, res["accuracy_matrix"]  # chance 5 %
    assert pedestrians_after_own > 0.6, res["accuracy_matrix"]  # chance 50 %
    assert res["task_id_accuracy"] > 0.9  # these two domains look nothing alike to the frozen backbone
