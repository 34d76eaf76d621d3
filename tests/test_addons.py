"""Add-ons end to end through the run loop: switched on by configuration (``+addon=gist``), in the
independent and sequential protocols, with resume; and the resumable Replay baseline."""
import pytest
import torch

from gift_cl.orchestration.loop import CHECKPOINT, Run

from runs import compose_cfg, run_in_process

TINY = ["optim.epochs=1", "optim.batch_size=16", "benchmark.n_train=48", "benchmark.n_test=24", "checkpoint_every=0"]


@pytest.mark.parametrize("strategy,addon,per_task", [
    ("gift", "gist", 64),           # one Gist token of width D
    ("lora", "coeff", 2 * 2 * 2),   # depth × heads × heads
], ids=["gist+gift", "coeff+lora"])
def test_addon_runs_in_the_independent_protocol(tmp_path, strategy, addon, per_task):
    base = compose_cfg(f"strategy={strategy}", "benchmark.domains=[digits,pedestrians]", *TINY)
    cfg = compose_cfg(f"strategy={strategy}", f"+addon={addon}", "benchmark.domains=[digits,pedestrians]", *TINY)
    assert addon in cfg.strategy.method.addons
    plain = run_in_process(base, tmp_path / "plain")
    res = run_in_process(cfg, tmp_path / "plugged")
    assert res["finished"] and res["protocol"] == "independent" and len(res["accuracy_matrix"]) == 2
    with_addon, without = res["params"]["per_task_excl_classifier"], plain["params"]["per_task_excl_classifier"]
    assert sorted(with_addon) == ["digits", "pedestrians"]
    for task in with_addon:
        assert with_addon[task] - without[task] == per_task
    assert (tmp_path / "plugged" / "checkpoints" / "digits.safetensors").is_file()


def test_two_addons_compose_from_one_config_group():
    cfg = compose_cfg("strategy=adapter", "+addon=[gist,coeff]")
    assert sorted(cfg.strategy.method.addons) == ["coeff", "gist"]
    assert cfg.strategy.method.addons.gist._target_ == "gift_cl.methods.Gist"


def _run(run_dir, *overrides):
    cfg = compose_cfg(*overrides, "optim.epochs=1", "optim.batch_size=16",
                      "benchmark.domains=[digits,pedestrians,signs]", "benchmark.n_train=48", "benchmark.n_test=24",
                      "checkpoint_every=0")
    return Run(cfg, run_dir)


def _stop_and_resume(tmp_path, overrides, stop_after: int) -> tuple[dict, dict, Run]:
    full = _run(tmp_path / "full", *overrides)
    full.train_and_evaluate()
    expected = full.write_results(final=True)
    stopped = _run(tmp_path / "stopped", *overrides)
    stopped.experiences = stopped.experiences[:stop_after]  # the process dies here
    stopped.train_and_evaluate()
    resumed = _run(tmp_path / "stopped", *overrides)
    resumed.restore(tmp_path / "stopped" / CHECKPOINT)
    assert resumed.progress["position"] == stop_after
    resumed.train_and_evaluate()
    return expected, resumed.write_results(final=True), full


@pytest.mark.parametrize("overrides", [
    ["strategy=gist_adapter", "strategy.protocol=sequential", "+addon=gist"],  # GIST's own pairing
    ["strategy=lora_qkv", "strategy.protocol=sequential", "+addon=coeff"],
    ["strategy=vpt", "strategy.protocol=sequential", "strategy.method.length=4", "+addon=[gist,coeff]"],
], ids=["gist+adapter", "coeff+lora_qkv", "gist+coeff+vpt"])
def test_addon_in_the_sequential_protocol_resumes_exactly(tmp_path, overrides):
    expected, got, full = _stop_and_resume(tmp_path, overrides, stop_after=1)
    for key in ("accuracy_matrix", "final_accuracy", "task_id_accuracy", "params", "forgetting"):
        assert got[key] == expected[key], key
    # per-task add-on parts: old tasks are not forgotten (frozen parts, own heads)
    assert expected["forgetting"] == 0.0


def test_replay_resumes_exactly_with_its_buffer(tmp_path):
    expected, got, full = _stop_and_resume(tmp_path, ["strategy=replay", "strategy.plugins.replay.mem_size=30"],
                                           stop_after=2)
    for key in ("accuracy_matrix", "final_accuracy", "task_id_accuracy", "params", "forgetting"):
        assert got[key] == expected[key], key
    replay = next(p for p in full.strategy.plugins if type(p).__name__ == "Replay")
    groups = replay.storage_policy.buffer_groups
    assert sorted(g.experience for g in groups.values()) == [0, 1, 2]
    assert sum(len(g.buffer) for g in groups.values()) == 30
    for g in groups.values():  # a group is the experience's samples at its indices
        assert len(g.indices) == len(g.buffer) == 10
        assert len(set(g.indices.tolist())) == 10


def test_replay_state_is_tensors_and_plain_containers(tmp_path):
    run = _run(tmp_path, "strategy=replay", "strategy.plugins.replay.mem_size=20")
    run.experiences = run.experiences[:2]
    run.train_and_evaluate()
    checkpoint = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    state = checkpoint["plugins"]["Replay"]  # plugin states are saved by their class name
    assert state["num_exps"] == 2 and [g["experience"] for g in state["groups"]] == [0, 1]
    assert [len(g["indices"]) for g in state["groups"]] == [10, 10]


class _Killed(Exception):
    pass


def test_replay_killed_mid_experience_resumes_exactly(tmp_path):
    """Killed after the first epoch of the second experience (the buffer is in use): the resumed run
    rebuilds the buffer from the checkpoint and ends with the uninterrupted numbers."""
    overrides = ["strategy=replay", "strategy.plugins.replay.mem_size=30", "optim.epochs=2", "checkpoint_every=1"]

    def run(run_dir):
        cfg = compose_cfg(*overrides, "optim.batch_size=16", "benchmark.domains=[digits,pedestrians,signs]",
                          "benchmark.n_train=48", "benchmark.n_test=24")
        return Run(cfg, run_dir)

    full = run(tmp_path / "full")
    full.train_and_evaluate()
    expected = full.write_results(final=True)

    stopped = run(tmp_path / "stopped")
    saver = next(p for p in stopped.strategy.plugins if type(p).__name__ == "EpochCheckpointPlugin")
    save = saver.save

    def save_then_die(strategy, epochs_done):
        save(strategy, epochs_done=epochs_done)
        if stopped.progress["position"] == 1:
            raise _Killed

    saver.save = save_then_die
    with pytest.raises(_Killed):
        stopped.train_and_evaluate()
    resumed = run(tmp_path / "stopped")
    resumed.restore(tmp_path / "stopped" / CHECKPOINT)
    assert resumed.progress["position"] == 1
    resumed.train_and_evaluate()
    got = resumed.write_results(final=True)
    for key in ("accuracy_matrix", "final_accuracy", "task_id_accuracy", "forgetting"):
        assert got[key] == expected[key], key


def test_addon_in_the_joint_protocol(tmp_path):
    cfg = compose_cfg("strategy=lora", "strategy.protocol=joint", "+addon=[gist,coeff]",
                      "benchmark.domains=[digits,pedestrians]", *TINY)
    res = run_in_process(cfg, tmp_path)
    assert res["finished"] and len(res["accuracy_matrix"]) == 1 and len(res["accuracy_matrix"][0]) == 2
    lora = 2 * (8 * 64 + 64 * 8)
    assert set(res["params"]["per_task_excl_classifier"].values()) == {lora + 64 + 2 * 2 * 2}


def test_a_run_saved_under_the_addons_former_names_reads_and_resumes(tmp_path):
    """A run directory written when the add-ons were ``strategy.method.plugins`` and their checkpointed tensors
    ``model_plugins.*``: its configuration reads as ``addons`` (the analysis tools; resume's comparison finds no
    difference) and its checkpoint loads into today's model."""
    import yaml
    from omegaconf import OmegaConf

    from gift_cl.config import load_saved_config
    from gift_cl.methods import Gist, LoraMethod
    from gift_cl.orchestration.rundir import config_differences, saved_config

    from runs import tiny_vit

    cfg = compose_cfg("strategy=lora", "+addon=gist", "benchmark.domains=[digits,pedestrians]", *TINY)
    current = OmegaConf.to_container(cfg, resolve=True)
    old = yaml.safe_load(OmegaConf.to_yaml(cfg, resolve=True))
    old["strategy"]["method"]["plugins"] = old["strategy"]["method"].pop("addons")
    (tmp_path / "config_resolved.yaml").write_text(yaml.safe_dump(old))
    assert load_saved_config(tmp_path / "config_resolved.yaml").strategy.method.addons.gist._target_ == \
        "gift_cl.methods.Gist"
    assert config_differences(saved_config(tmp_path), current) == []

    torch.manual_seed(0)
    model = LoraMethod(tiny_vit(), addons={"gist": Gist()})
    model.add_task(0, 3)
    state = {k.replace("model_addons.", "model_plugins.", 1): v.clone() if torch.is_tensor(v) else v
             for k, v in model.state_dict().items()}
    assert any(k.startswith("model_plugins.gist.") for k in state)
    again = LoraMethod(tiny_vit(), addons={"gist": Gist()})
    again.add_task(0, 3)
    torch.nn.init.zeros_(again.model_addons.gist.tokens["0"])  # differs from the saved token until loaded
    missing, unexpected = again.load_state_dict(state, strict=False)
    assert not unexpected and not set(missing) - again.frozen_state_keys()
    loaded = again.state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in model.state_dict().items() if torch.is_tensor(v))
