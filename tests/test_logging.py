"""What a run shows and logs (orchestration.cli's console output and ``progress`` option, the TensorBoard and
W&B loggers of strategies.evaluation): no progress bars where nobody can see them (a log file, a pipe), one
line per epoch and evaluated experience instead; TensorBoard with every update's loss and learning rate, the
run's configuration as hparams and its final numbers; W&B (offline) with the run config, project and group
from the config, and the final numbers as its summary. Everything is read back the way a user's tools read
it: TensorBoard's EventAccumulator, W&B's offline record file."""
import json
import re
import subprocess
import sys

import pytest

from runs import (
    PROCEDURAL,
    REPO,
    compose_cfg,
    env,
    results,
    run_in_process,
    run_py,
    tensorboard_accumulator,
    wandb_file,
    wandb_records,
)

# TINY without progress=false: the default (progress=auto) is what is tested
QUIET = ["model=vit_tiny_random", "threads=1", "optim.epochs=2", "optim.batch_size=16", *PROCEDURAL,
         "benchmark.domains=[digits,pedestrians]"]
TASKS = ("digits", "pedestrians")


@pytest.fixture(scope="module")
def piped_run(tmp_path_factory):
    """A sequential run with TensorBoard and W&B (Hydra's multiple choice: logger=[tensorboard,wandb]), its
    stdout and stderr pipes, as `make run > log` would give them."""
    run_dir = tmp_path_factory.mktemp("ux") / "run"
    proc = run_py(*QUIET, "strategy=gift_multitask", "logger=[tensorboard,wandb]", "logger.wandb.project=gift_cl_test",
                  "logger.wandb.group=ux", f"hydra.run.dir={run_dir}")
    return run_dir, proc


# ----------------------------------------------------------------------------- console and progress
def test_piped_output_has_no_progress_bars_and_one_line_per_epoch(piped_run):
    run_dir, proc = piped_run
    assert "\r" not in proc.stdout and "\r" not in proc.stderr  # no tqdm redraws in a pipe (progress=auto)
    for task in TASKS:
        for epoch in (1, 2):
            assert re.search(rf"\[INFO\] - train {task} epoch {epoch}/2: loss \d+\.\d{{4}}, lr \S+( -> \S+)?, "
                             rf"\d+\.\d s\n", proc.stdout), proc.stdout[-3000:]
    # after each experience every task seen so far is evaluated, named as in the stream
    assert len(re.findall(r"\[INFO\] - eval digits: accuracy \d+\.\d\d % of 24 images, \d+\.\d s", proc.stdout)) == 2
    assert len(re.findall(r"\[INFO\] - eval pedestrians: accuracy", proc.stdout)) == 1
    log = (run_dir / "gift_cl.log").read_text()  # the same lines in the run's own log
    assert "train pedestrians epoch 2/2: loss" in log and "eval pedestrians: accuracy" in log
    assert "progress: false" in (run_dir / "config_resolved.yaml").read_text()  # what auto decided


def test_progress_option_auto_true_false_and_nothing_else(monkeypatch):
    import io

    from gift_cl.config import ConfigError
    from gift_cl.orchestration.cli import progress_bars

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert progress_bars("auto") is False and progress_bars(True) is True
    monkeypatch.setattr("sys.stderr", Terminal())
    assert progress_bars("auto") is True and progress_bars(False) is False
    for bad in ("yes", 1, None):
        with pytest.raises(ConfigError, match="must be one of auto, true, false"):
            progress_bars(bad)


def test_a_bad_progress_value_is_one_line_before_any_work(tmp_path):
    """A value error: one line on stderr, nothing on stdout, and no run directory left behind (not even the
    empty folders Hydra's output path would have created)."""
    proc = run_py(*QUIET, "progress=sometimes", f"hydra.run.dir={tmp_path / 'a' / 'b' / 'run'}", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == ["error: ConfigError: progress='sometimes': must be one of auto, true, false"]
    assert "ConfigError" not in proc.stdout  # printed once
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- fast, single config errors
def test_a_mistyped_key_is_reported_once_before_torch_is_imported(tmp_path):
    """Hydra's own errors (a key that does not exist, a config group option that does not) come from composing
    the configuration: the command reports them without importing torch, timm or Avalanche."""
    code = ("import atexit, sys; atexit.register(lambda: print('heavy imports:', sorted({'torch', 'timm', "
            "'avalanche'} & set(sys.modules)))); from gift_cl.orchestration.cli import main; sys.argv[1:] = sys.argv[2:]; "
            "main()")
    for typo, message in (("optim.lrr=1", "Key 'lrr' is not in struct"),
                          ("strategy=gift_multitsk", "Could not find 'strategy/gift_multitsk'")):
        proc = subprocess.run([sys.executable, "-c", code, "run.py", typo, f"hydra.run.dir={tmp_path / 'run'}"],
                              cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1 and proc.stderr.count(message) == 1, proc.stderr
        assert "heavy imports: []" in proc.stdout and message not in proc.stdout
    assert not (tmp_path / "run").exists()


def test_a_bad_logger_option_stops_the_run_before_anything_is_written(tmp_path):
    from gift_cl.config import ConfigError
    from gift_cl.orchestration.cli import run

    cfg = compose_cfg(*QUIET, "logger=wandb", "logger.wandb.mode=onlin")
    with pytest.raises(ConfigError, match="logger.wandb.mode='onlin'"):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- TensorBoard
def hparams_of(acc) -> tuple[dict, list]:
    """The session's hparams ({name: value}) and the metric tags of the experiment, as the HParams tab reads them."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    values = {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    return values, [m.name.tag for m in experiment.metric_infos]


def test_tensorboard_holds_updates_hparams_and_final_numbers(piped_run):
    run_dir, _ = piped_run
    res = results(run_dir)
    tb_dir = run_dir / "logs" / "tensorboard"
    assert len(list(tb_dir.glob("events.out.tfevents.*"))) == 1
    acc = tensorboard_accumulator(tb_dir)
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    updates = 2 * 2 * 3  # tasks x epochs x ceil(48 / 16) updates
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, updates + 1))
    assert [s for s, _ in scalars["train/lr"]] == list(range(1, updates + 1))
    rows = (tb_dir / "steps.csv").read_text().splitlines()
    assert rows[0] == "step,loss,lr" and len(rows) == updates + 1
    assert [pytest.approx(float(r.split(",")[1]), rel=1e-6) for r in rows[1:]] == [v for _, v in scalars["train/loss"]]
    # the last update of each epoch is the epoch's step in Avalanche's own series
    epoch_steps = [s for s, _ in scalars["Loss_Epoch/train_phase/train_stream/Task001"]]
    assert epoch_steps == [9, 12]
    final = {tag: series[-1][1] for tag, series in scalars.items() if tag.startswith("final/")}
    assert final["final/average_accuracy"] == pytest.approx(res["average_accuracy"])
    assert final["final/forgetting"] == pytest.approx(res["forgetting"]) and final["final/bwt"] == pytest.approx(res["bwt"])
    assert final["final/task_id_accuracy"] == pytest.approx(res["task_id_accuracy"])
    assert final["final/accuracy/pedestrians"] == pytest.approx(res["final_accuracy"]["pedestrians"])
    values, metric_tags = hparams_of(acc)
    assert set(metric_tags) == set(final)
    assert values["optim.lr"] == pytest.approx(0.01) and values["strategy.name"] == "gift_multitask"
    assert values["strategy.protocol"] == "sequential" and values["seed"] == 0
    assert values["benchmark.domains"] == json.dumps(list(TASKS))


def test_independent_tasks_each_get_hparams_and_their_accuracy(tmp_path):
    """In the independent protocol every task has its own model and its own log directory: each gets the
    configuration as hparams (with its task) and its own final accuracy."""
    res = run_in_process(compose_cfg(*QUIET, "strategy=linear", "optim.epochs=1", "logger=tensorboard"), tmp_path)
    for task in TASKS:
        acc = tensorboard_accumulator(tmp_path / "logs" / task / "tensorboard")
        assert acc.Scalars("final/accuracy")[-1].value == pytest.approx(res["final_accuracy"][task])
        values, metric_tags = hparams_of(acc)
        assert values["task"] == task and metric_tags == ["final/accuracy"]
        assert len(acc.Scalars("train/loss")) == 3


# ----------------------------------------------------------------------------- W&B
def test_wandb_gets_project_group_run_config_and_final_summary(piped_run):
    run_dir, _ = piped_run
    res = results(run_dir)
    records = wandb_records(wandb_file(run_dir / "logs"))
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.project == "gift_cl_test" and run.run_group == "ux"
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["optim"]["lr"] == pytest.approx(0.01) and config["strategy"]["name"] == "gift_multitask"
    assert config["logger"]["wandb"]["mode"] == "offline"
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in r.summary.update})
    assert summary["final/average_accuracy"] == pytest.approx(res["average_accuracy"])
    assert summary["final/forgetting"] == pytest.approx(res["forgetting"])
    assert summary["final/task_id_accuracy"] == pytest.approx(res["task_id_accuracy"])
    # every update's loss and learning rate, at the update's number (as in TensorBoard's train/loss)
    history = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    updates = [(h["_step"], h["train/loss"], h["train/lr"]) for h in history if "train/loss" in h]
    assert [s for s, _, _ in updates] == list(range(1, 13))
    steps = (run_dir / "logs" / "tensorboard" / "steps.csv").read_text().splitlines()[1:]
    assert [loss for _, loss, _ in updates] == [pytest.approx(float(r.split(",")[1])) for r in steps]
    assert all(lr == pytest.approx(float(r.split(",")[2])) for (_, _, lr), r in zip(updates, steps))


def test_wandb_options_are_checked():
    from gift_cl.config import ConfigError
    from gift_cl.strategies.evaluation import logger_options

    assert logger_options(["csv", "wandb"])["wandb"] == {"project": "gift_cl", "entity": None, "group": None,
                                                         "mode": "offline"}
    with pytest.raises(ConfigError, match="logger.wandb.mode='onlin': must be one of offline, online, disabled"):
        logger_options({"wandb": {"mode": "onlin"}})
    with pytest.raises(ConfigError, match="logger.wandb.project=''"):
        logger_options({"wandb": {"project": ""}})
    with pytest.raises(ConfigError, match="logger='mlflow'"):
        logger_options({"mlflow": {}})
    cfg = compose_cfg("logger=wandb", "logger.wandb.mode=online", "logger.wandb.entity=team")
    assert logger_options(cfg.logger)["wandb"]["entity"] == "team"
