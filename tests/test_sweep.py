"""``python -m orchestration.sweep``: plans expand like ``run.py -m``, finished runs are skipped, a killed sweep
resumes its runs exactly, bad configurations stop the sweep before anything runs, failures while running are
reported with a non-zero exit while the other runs go on."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gift_cl.orchestration import sweep

from runs import REPO, env, run_py

RUN = ("strategy=gift_multitask model=vit_tiny_random optim.epochs=2 optim.batch_size=16 "
       "benchmark.domains=[digits,signs] benchmark.n_train=48 benchmark.n_test=24")


def _sweep(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "orchestration.sweep", *map(str, args)], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _results(out: Path) -> dict:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(out.glob("*/results.json"))}


def test_plan_lines_expand_like_hydra_multirun(tmp_path):
    plan = tmp_path / "plan.txt"
    plan.write_text("# comment\n\nstrategy=gift,lora optim.lr=1e-3,1e-2  # two by two\nstrategy=gift optim.lr=1e-3\n")
    runs = sweep.read_plans([str(plan)])
    # values are written as Hydra writes them (1e-3 -> 0.001), so a line and its sweep name the same run once
    assert runs == [["strategy=gift", "optim.lr=0.001"], ["strategy=gift", "optim.lr=0.01"],
                    ["strategy=lora", "optim.lr=0.001"], ["strategy=lora", "optim.lr=0.01"]]
    names = {sweep.run_name(r) for r in runs}
    assert len(names) == 4 and all("/" not in n for n in names)
    plan.write_text("strategy=gift optim.lr=[1e-3\n")
    proc = _sweep(plan, "--out", tmp_path / "out", check=False)
    assert proc.returncode != 0 and f"{plan}:1: cannot read this plan line" in proc.stderr


def test_sweep_skips_finished_runs_resumes_killed_ones_and_reports_failures(tmp_path):
    plan = tmp_path / "plan.txt"
    plan.write_text(f"{RUN} seed=0,1\n")
    reference = tmp_path / "reference"
    _sweep(plan, "--out", reference, "--jobs", 2)
    done = _results(reference)
    assert len(done) == 2 and all(r["finished"] for r in done.values())
    assert {r["seed"] for r in done.values()} == {0, 1}
    assert all("threads=1" in r["overrides"] for r in done.values())  # 2 jobs share the cores

    # a second call finds everything finished and runs nothing
    stamps = {p: p.stat().st_mtime_ns for p in reference.glob("*/results.json")}
    assert "'finished': 2" in _sweep(plan, "--out", reference).stderr
    assert stamps == {p: p.stat().st_mtime_ns for p in reference.glob("*/results.json")}

    # kill -9 the sweep once a checkpoint exists, call it again: the numbers equal the uninterrupted ones
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "orchestration.sweep", str(plan), "--out", str(killed)], cwd=REPO,
                            env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not list(killed.glob("*/checkpoints/last.pt")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(killed.glob("*/checkpoints/last.pt"))
    assert json.loads(_sweep(plan, "--out", killed, "--status").stdout)["finished"] < 2
    _sweep(plan, "--out", killed)
    again = _results(killed)
    assert sorted(again) == sorted(done)
    for name in done:
        for key in ("accuracy_matrix", "average_accuracy", "forgetting", "params"):
            assert again[name][key] == done[name][key], (name, key)

    # a run that fails while running (a domain its data cannot build) is named, the others finish, exit non-zero
    plan.write_text(RUN.replace("[digits,signs]", "[digits,no_such_domain]") + f"\n{RUN} seed=2\n")
    proc = _sweep(plan, "--out", tmp_path / "failing", check=False)
    assert proc.returncode == 1 and "FAILED" in proc.stderr and "no_such_domain" in proc.stderr
    assert "1 of 2 runs did not finish" in proc.stderr
    assert len([r for r in _results(tmp_path / "failing").values() if r["finished"]]) == 1


def test_bad_configurations_stop_the_sweep_before_any_run_starts(tmp_path):
    plan = tmp_path / "plan.txt"
    plan.write_text(f"{RUN} seed=0\n{RUN} optim.lr=-1\nstrategy=gift_multitsk\n")
    out = tmp_path / "out"
    proc = _sweep(plan, "--out", out, "--jobs", 2, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "2 of 3 runs have a configuration run.py would refuse; nothing was started" in proc.stderr
    assert "optim.lr=-1: ConfigError: optim.lr" in proc.stderr
    assert "strategy=gift_multitsk: MissingConfigException" in proc.stderr and "gift_multitsk" in proc.stderr
    assert not out.exists()  # the good run did not start either


# ------------------------------------------------------------------ run.py -m: the same runner
def test_multirun_is_the_sweep_runner_same_names_skips_finished_and_checks_first(tmp_path):
    """``run.py -m`` and a plan file are one system: the same directory for the same run, ``index.tsv``, a second
    call skips what finished, a bad run in the grid stops it before anything starts."""
    grid = [*RUN.split(), "seed=0,1"]
    multirun = tmp_path / "multirun"
    run_py("-m", *grid, f"hydra.sweep.dir={multirun}", timeout=600)
    plan = tmp_path / "plan.txt"
    plan.write_text(" ".join(grid) + "\n")
    planned = tmp_path / "planned"
    _sweep(plan, "--out", planned, "--list")  # names only, nothing runs
    names = [Path(line.split("\t")[1]).name for line in _sweep(plan, "--out", planned, "--list").stdout.splitlines()]
    assert sorted(names) == sorted(p.parent.name for p in multirun.glob("*/results.json")), names
    assert all(n.startswith("seed=") for n in names)  # the only override that varies, then the hash
    index = (multirun / "index.tsv").read_text()
    assert all(n in index for n in names) and "benchmark.domains=[digits,signs]" in index

    stamps = {p: p.stat().st_mtime_ns for p in multirun.glob("*/results.json")}
    again = run_py("-m", *grid, f"hydra.sweep.dir={multirun}")
    assert "plan: 2 runs, 2 finished" in again.stderr + again.stdout
    assert stamps == {p: p.stat().st_mtime_ns for p in multirun.glob("*/results.json")}

    bad = run_py("-m", *grid, "optim.lr=-1,0.01", f"hydra.sweep.dir={tmp_path / 'bad'}", check=False)
    assert bad.returncode == 2 and "2 of 4 runs have a configuration run.py would refuse" in bad.stderr + bad.stdout
    assert not list((tmp_path / "bad").glob("*/config_resolved.yaml"))


# ------------------------------------------------------------------ SLURM / submitit
def test_slurm_launcher_parameters_reach_submitit(tmp_path, monkeypatch):
    from submitit.slurm.slurm import SlurmExecutor

    monkeypatch.setattr(SlurmExecutor, "affinity", staticmethod(lambda: 1))  # as if `srun` were there
    params = sweep.launcher_params("slurm", ["partition=gpu", "timeout_min=240"], tmp_path)
    assert params.pop("executor") == "slurm" and params["partition"] == "gpu" and params["timeout_min"] == 240
    assert params["gpus_per_node"] == 1 and params["mem_gb"] > 0 and params["cpus_per_task"] > 0
    # a timed-out or pre-empted job goes back to the queue (and continues its run: the local test below)
    assert params["max_num_timeout"] >= 1 and params["additional_parameters"]["requeue"] is True
    assert 0 < params["signal_delay_s"] < 60 * params["timeout_min"]
    assert params["submitit_folder"] == f"{tmp_path}/.submitit/%j"
    executor = sweep.submitit_executor("slurm", params)._executor
    assert executor.parameters["partition"] == "gpu" and executor.parameters["time"] == 240
    assert executor.parameters["additional_parameters"] == {"requeue": True}
    assert executor.parameters["signal_delay_s"] == params["signal_delay_s"] and executor.max_num_timeout >= 1


def test_plan_through_submitit_local_executor(tmp_path):
    plan = tmp_path / "plan.txt"
    plan.write_text(f"{RUN} optim.epochs=1 strategy=linear,lora\n")
    out = tmp_path / "out"
    _sweep(plan, "--out", out, "--launcher", "local")
    done = _results(out)
    assert sorted(r["strategy"] for r in done.values()) == ["linear", "lora"] and all(r["finished"] for r in done.values())
    assert list((out / ".submitit").iterdir())  # the runs went through submitit


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.is_file() else []


def test_submitit_job_preempted_is_requeued_and_continues_its_run(tmp_path):
    """A submitit job signalled with USR2 (what SLURM sends before a time limit, and on pre-emption where the
    cluster is set up so) after its first checkpoint: submitit calls the job's checkpoint(), which resubmits it
    unchanged, and requeues it; the job, started again, continues the run from that checkpoint (not started
    afresh) and the sweep ends with exit status 0. Through submitit's local executor, which requeues as SLURM
    does, launched as ``run.py -m hydra/launcher=local``."""
    from gift_cl.orchestration.loop import CHECKPOINT

    out = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, str(REPO / "run.py"), "-m", "hydra/launcher=local", *RUN.split(),
                             "strategy=linear_multitask", "optim.epochs=4", "checkpoint_every=1", "seed=0",
                             f"hydra.sweep.dir={out}"],
                            cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 1200
        while not list(out.glob(f"*/{CHECKPOINT}")) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None and list(out.glob(f"*/{CHECKPOINT}")), "the job ended before its first checkpoint"
        run_dir = next(out.glob(f"*/{CHECKPOINT}")).parent.parent
        # the local job id is its controller's pid (submitit also leaves a folder named after its "%j" pattern)
        controller = int(next(p for p in (out / ".submitit").iterdir() if p.name.isdigit()).name)
        tasks = _children(controller)  # the job's process (the controller restarts it when it is requeued)
        assert len(tasks) == 1, tasks
        assert not (run_dir / "results.json").is_file()
        os.kill(tasks[0], signal.SIGUSR2)
        stdout, stderr = proc.communicate(timeout=1800)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert json.loads((run_dir / "results.json").read_text())["finished"]
    job_logs = "".join(p.read_text() for p in sorted((out / ".submitit").rglob("*_log.*")))  # .out: INFO, .err: WARNING
    assert "this job is preempted" in job_logs and "Requeued job" in job_logs, job_logs[-3000:]
    log = (run_dir / "gift_cl.log").read_text()
    assert f"resumed from {run_dir / CHECKPOINT} at experience" in log, log[-3000:]


# ------------------------------------------------------------------ names, status without torch
def test_sweep_directory_names_keep_every_varying_key_and_the_seed():
    recipe = ["model=vit_tiny_random", "benchmark=procedural", "benchmark.domains=[digits,pedestrians,signs,textures]",
              "benchmark.n_train=2000", "benchmark.n_test=1000", "optim.batch_size=64", "optim.epochs=30"]
    runs = [[f"strategy={s}", *recipe, f"optim.lr={lr}", f"seed={seed}"]
            for s in ("gift_multitask", "lora_multitask") for lr in (0.003, 0.01) for seed in (0, 1, 2)]
    assert len(",".join(runs[0])) > 150  # a name cut at a fixed length would lose the seed
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
    run directory named otherwise (every override, same hash) is found and counted as the run's."""
    plan = tmp_path / "plan.txt"
    plan.write_text("strategy=gift_multitask model=vit_tiny_random seed=0,1\n")
    runs = sweep.read_plans([str(plan)])
    out = tmp_path / "out"
    for run in runs:  # named by every override, not only the varying ones
        (out / sweep.run_name(run)).mkdir(parents=True)
        (out / sweep.run_name(run) / "results.json").write_text(json.dumps({"finished": True}))
    assert sweep.run_dirs(runs, out) == [out / sweep.run_name(r) for r in runs]
    code = ("import atexit, sys; atexit.register(lambda: print('heavy imports:', sorted({'torch', 'timm', "
            "'avalanche'} & set(sys.modules)))); from gift_cl.orchestration.sweep import main; sys.exit(main(sys.argv[1:]))")
    for args, expected in ((["--status"], '{"finished": 2, "started": 0, "pending": 0}'), ([], "plan: 2 runs, 2 finished")):
        proc = subprocess.run([sys.executable, "-c", code, str(plan), "--out", str(out), *args], cwd=REPO, env=env(),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and expected in proc.stdout + proc.stderr, proc.stderr
        assert "heavy imports: []" in proc.stdout
    index = (out / sweep.INDEX_FILE).read_text().splitlines()
    assert index[0] == "directory\toverrides" and len(index) == 3
    assert f"{sweep.run_name(runs[1])}\tstrategy=gift_multitask model=vit_tiny_random seed=1" in index


def test_shipped_plans_compose_and_validate():
    """Every plan in analysis/sweeps/ reads, and its runs compose and pass the run-time validation (one run per
    distinct value of every swept key), so a shipped plan never stops on a typo after hours of runs."""
    from gift_cl.orchestration.validation import validate

    plans = sorted((REPO / "analysis" / "sweeps").glob("*.txt"))
    assert len(plans) >= 10
    checked = 0
    for plan in plans:
        runs = sweep.read_plans([str(plan)])
        assert runs, f"{plan.name}: no runs"
        covered: set[str] = set()
        for overrides in runs:
            if set(overrides) <= covered:
                continue
            covered |= set(overrides)
            try:
                validate(sweep.compose(sweep.full_overrides(overrides)), command_line=True)
            except Exception as exc:  # name the plan and the run
                raise AssertionError(f"{plan.name}: {' '.join(overrides)}: {exc}") from exc
            checked += 1
    assert checked >= len(plans)
