"""What a run shows and logs: no progress bars where nobody can see them (a log file, a pipe), one line per
epoch and evaluated experience instead; TensorBoard with every update's loss and learning rate, the run's
configuration as hparams and its final numbers; W&B (offline) with the run config, project and group from
the config, and the final numbers as its summary. Everything is read back the way a user's tools read it:
TensorBoard's EventAccumulator, W&B's offline record file."""
import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from runs import PROCEDURAL, REPO, compose_cfg, env, results, run_in_process, run_py

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


# ----------------------------------------------------------------------------- item 1: logs worth reading
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
    from orchestration.cli import progress_bars

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
            "'avalanche'} & set(sys.modules)))); from orchestration.cli import main; sys.argv[1:] = sys.argv[2:]; "
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
    from orchestration.cli import run

    cfg = compose_cfg(*QUIET, "logger=wandb", "logger.wandb.mode=onlin")
    with pytest.raises(ConfigError, match="logger.wandb.mode='onlin'"):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- item 2: TensorBoard
def accumulator(tb_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return acc


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
    acc = accumulator(tb_dir)
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
        acc = accumulator(tmp_path / "logs" / task / "tensorboard")
        assert acc.Scalars("final/accuracy")[-1].value == pytest.approx(res["final_accuracy"][task])
        values, metric_tags = hparams_of(acc)
        assert values["task"] == task and metric_tags == ["final/accuracy"]
        assert len(acc.Scalars("train/loss")) == 3


# ----------------------------------------------------------------------------- item 2: W&B
def wandb_records(run_dir: Path) -> list:
    """Every record of the offline run's ``.wandb`` file (W&B's record log: a 7-byte header, then records of
    crc32, length, type and a protobuf ``Record``, in 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2

    path = next((run_dir / "logs" / "wandb" / "latest-run").resolve().glob("*.wandb"))
    data, pos, chunk, records = path.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        chunk, pos = chunk + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def test_wandb_gets_project_group_run_config_and_final_summary(piped_run):
    run_dir, _ = piped_run
    res = results(run_dir)
    records = wandb_records(run_dir)
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
    from strategies.evaluation import logger_options

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


def test_a_run_that_fails_before_training_leaves_no_half_made_directory(tmp_path):
    """Data that cannot be built is found after the run has taken its directory: what the start wrote there
    goes again, so no directory looks like a run that resume=true or the tools would pick up."""
    from gift_cl.errors import library_user_errors
    from orchestration.cli import run, user_error

    cfg = compose_cfg(*PROCEDURAL, "threads=1", "benchmark.domains=[digits,no_such_domain]")
    with pytest.raises(Exception) as err:
        run(cfg, tmp_path / "run")
    assert isinstance(user_error(err.value), library_user_errors()) and "no_such_domain" in str(err.value)
    assert list((tmp_path / "run").iterdir()) == []


# ----------------------------------------------------------------------------- the sweep runner
def test_sweep_directory_names_keep_every_varying_key_and_the_seed():
    from orchestration import sweep

    recipe = ["model=vit_tiny_random", "benchmark=procedural", "benchmark.domains=[digits,pedestrians,signs,textures]",
              "benchmark.n_train=2000", "benchmark.n_test=1000", "optim.batch_size=64", "optim.epochs=30"]
    runs = [[f"strategy={s}", *recipe, f"optim.lr={lr}", f"seed={seed}"]
            for s in ("gift_multitask", "lora_multitask") for lr in (0.003, 0.01) for seed in (0, 1, 2)]
    assert len(",".join(runs[0])) > 150  # the old names cut this at 120 characters: the seed was lost
    assert sweep.varying_keys(runs) == {"strategy", "optim.lr", "seed"}
    names = [d.name for d in sweep.run_dirs(runs, Path("/nonexistent"))]
    assert len(set(names)) == len(runs)
    assert names[0] == f"strategy=gift_multitask,optim.lr=0.003,seed=0__{sweep.run_hash(runs[0])}"
    # too many varying keys for the budget: keys shortened, then every item cut equally, none dropped
    wide = [[f"strategy.method.config.block{i}=value_number_{i}_{j}" for i in range(12)] + [f"seed={j}"] for j in range(2)]
    for run in wide:
        name = sweep.run_name(run, sweep.varying_keys(wide))
        assert len(name) <= sweep.MAX_NAME + 10 and name.count(",") == 12 and f"seed={run[-1][-1]}" in name


def test_sweep_plan_and_status_answer_without_torch_and_find_runs_by_hash(tmp_path):
    """A finished sweep called again prints its plan and ends without importing torch; --status likewise; a
    run directory named by the old naming (same hash) is found and counted as the run's."""
    from orchestration import sweep

    plan = tmp_path / "plan.txt"
    plan.write_text("strategy=gift_multitask model=vit_tiny_random seed=0,1\n")
    runs = sweep.read_plans([str(plan)])
    out = tmp_path / "out"
    for run in runs:  # named as before: every override, no varying keys
        (out / sweep.run_name(run)).mkdir(parents=True)
        (out / sweep.run_name(run) / "results.json").write_text(json.dumps({"finished": True}))
    assert sweep.run_dirs(runs, out) == [out / sweep.run_name(r) for r in runs]
    code = ("import atexit, sys; atexit.register(lambda: print('heavy imports:', sorted({'torch', 'timm', "
            "'avalanche'} & set(sys.modules)))); from orchestration.sweep import main; sys.exit(main(sys.argv[1:]))")
    for args, expected in ((["--status"], '{"finished": 2, "started": 0, "pending": 0}'), ([], "plan: 2 runs, 2 finished")):
        proc = subprocess.run([sys.executable, "-c", code, str(plan), "--out", str(out), *args], cwd=REPO, env=env(),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and expected in proc.stdout + proc.stderr, proc.stderr
        assert "heavy imports: []" in proc.stdout
    index = (out / sweep.INDEX_FILE).read_text().splitlines()
    assert index[0] == "directory\toverrides" and len(index) == 3
    assert f"{sweep.run_name(runs[1])}\tstrategy=gift_multitask model=vit_tiny_random seed=1" in index
