"""Resume of the regularised baselines: EWC's importances and LwF's previous model survive a checkpoint,
so a run stopped after an experience ends with the numbers of an uninterrupted one."""
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import gift_cl.config  # noqa: F401
from conftest import REPO
from gift_cl.continual import CHECKPOINT, ContinualRun
from gift_cl.optim import OptimConfig


def make_run(strategy, run_dir):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=[
            f"strategy={strategy}", "model=vit_tiny_random", "progress=false", "optim.epochs=1", "optim.batch_size=16",
            "benchmark.domains=[digits,pedestrians,signs]", "benchmark.n_train=48", "benchmark.n_test=24",
            "checkpoint_every=0"])
    OmegaConf.set_struct(cfg, False)
    cfg.benchmark_name = "procedural"
    return ContinualRun(cfg, run_dir, OptimConfig(**OmegaConf.to_container(cfg.optim, resolve=True)))


@pytest.mark.parametrize("strategy", ["ewc", "lwf", "gift_multitask"])
def test_stopped_after_an_experience_resumes_exactly(tmp_path, strategy):
    full = make_run(strategy, tmp_path / "full")
    full.train_and_evaluate()
    expected = full.write_results(final=True)

    stopped = make_run(strategy, tmp_path / "stopped")
    stopped.experiences = stopped.experiences[:1]  # the process dies after the first experience
    stopped.train_and_evaluate()
    resumed = make_run(strategy, tmp_path / "stopped")
    resumed.restore(tmp_path / "stopped" / CHECKPOINT)
    assert resumed.progress["position"] == 1
    resumed.train_and_evaluate()
    got = resumed.write_results(final=True)
    assert got["accuracy_matrix"] == expected["accuracy_matrix"]
    assert got["task_id_accuracy"] == expected["task_id_accuracy"]
