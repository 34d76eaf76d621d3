"""Resume in-process: a run stopped after an experience (or, independent protocol, after a task) ends with
the numbers of an uninterrupted one, for every protocol and for the baselines whose plugins carry state."""
import pytest

from gift_cl.orchestration.loop import CHECKPOINT, Run

from runs import compose_cfg


def make_run(run_dir, *overrides):
    cfg = compose_cfg(*overrides, "optim.epochs=1", "optim.batch_size=16",
                      "benchmark.domains=[digits,pedestrians,signs]", "benchmark.n_train=48", "benchmark.n_test=24",
                      "checkpoint_every=0")
    return Run(cfg, run_dir)


@pytest.mark.parametrize("overrides", [["strategy=ewc"], ["strategy=lwf"], ["strategy=gift_multitask"],
                                       ["strategy=gift"], ["strategy=lora", "strategy.protocol=joint"]],
                         ids=["ewc", "lwf", "gift_multitask", "gift-independent", "lora-joint"])
def test_stopped_after_an_experience_resumes_exactly(tmp_path, overrides):
    full = make_run(tmp_path / "full", *overrides)
    full.train_and_evaluate()
    expected = full.write_results(final=True)

    stopped = make_run(tmp_path / "stopped", *overrides)
    stopped.experiences = stopped.experiences[:1]  # the process dies after the first experience
    stopped.train_and_evaluate()
    resumed = make_run(tmp_path / "stopped", *overrides)
    resumed.restore(tmp_path / "stopped" / CHECKPOINT)
    assert resumed.progress["position"] == 1
    resumed.train_and_evaluate()
    got = resumed.write_results(final=True)
    for key in ("accuracy_matrix", "final_accuracy", "task_id_accuracy", "params", "forgetting"):
        assert got[key] == expected[key], key
