"""The ``logger`` group: Avalanche's loggers beside the run's own JSON/CSV/plots."""
import pytest

from runs import PROCEDURAL, TINY, compose_cfg, run_in_process, run_py


def tiny(*overrides):
    return compose_cfg("strategy=linear_multitask", "benchmark.domains=[digits,pedestrians]", "benchmark.n_train=32",
                       "benchmark.n_test=16", "optim.epochs=1", "optim.batch_size=16", *overrides)


def test_tensorboard_event_files_hold_the_accuracy_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    res = run_in_process(tiny("logger=tensorboard"), tmp_path)
    events = list((tmp_path / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    assert events, list((tmp_path / "logs").rglob("*"))
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tag = "Top1_Acc_Exp/eval_phase/test_stream/Task001/Exp001"
    assert tag in acc.Tags()["scalars"], acc.Tags()["scalars"][:10]
    assert acc.Scalars(tag)[-1].value == pytest.approx(res["accuracy_matrix"][1][1])
    assert (tmp_path / "logs" / "training_results.csv").is_file()  # CSV stays on
    assert (tmp_path / "results.json").is_file()


def test_wandb_logs_offline(tmp_path):
    run_py(*TINY, *PROCEDURAL, "strategy=linear_multitask", "benchmark.domains=[digits,pedestrians]",
           "optim.epochs=1", "logger=wandb", f"hydra.run.dir={tmp_path}")
    runs = list((tmp_path / "logs" / "wandb").glob("offline-run-*"))
    assert runs and any(p.suffix == ".wandb" for p in runs[0].iterdir())
    log = next(p for p in runs[0].iterdir() if p.suffix == ".wandb")  # the offline run's record, synced later
    assert b"Top1_Acc_Exp/eval_phase/test_stream/Task001/Exp001" in log.read_bytes()


def test_upstream_wandb_logger_needs_an_id_with_this_wandb(tmp_path, monkeypatch):
    """Avalanche 0.6's WandBLogger generates a run id with wandb.util.generate_id, which wandb 0.31 removed;
    ours passes the id (when this starts passing upstream, the workaround can go)."""
    import wandb
    from avalanche.logging import WandBLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    assert not hasattr(wandb.util, "generate_id") and not hasattr(wandb, "viz")
    with pytest.raises(AttributeError, match="generate_id"):
        WandBLogger(project_name="x", dir=str(tmp_path))
    logger = WandBLogger(project_name="x", dir=str(tmp_path), params={"id": "abc"})
    with pytest.raises(AttributeError, match="viz"):
        logger.log_single_metric("acc", 0.5, 1)
    wandb.finish()


def test_unknown_logger_is_a_config_error():
    from gift_cl.config import ConfigError
    from gift_cl.orchestration.validation import validate

    cfg = tiny()
    cfg.logger = ["csv", "mlflow"]
    with pytest.raises(ConfigError, match="logger='mlflow': must be one of csv, tensorboard, wandb"):
        validate(cfg)
