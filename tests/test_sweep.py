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

from orchestration import sweep
from runs import REPO, env

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
