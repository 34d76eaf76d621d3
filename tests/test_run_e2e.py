"""``python run.py ...`` end to end, as a researcher runs it: run directory contents, every benchmark on
its fixture, sweeps, and a continual run that is killed and resumed."""
import json
import subprocess
import sys

import pytest

from fixtures import write_fgvc, write_five_datasets, write_vdd, write_vtab
from runs import PROCEDURAL, REPO, TINY, env, kill_and_resume, results, run_py


def test_single_task_run_directory(tmp_path):
    out = run_py(*TINY, *PROCEDURAL, "strategy=gift", "benchmark.domains=[digits,pedestrians]",
                 f"hydra.run.dir={tmp_path}").stdout
    assert "top-1 %" in out and "digits" in out
    res = results(tmp_path)
    assert res["finished"] and res["protocol"] == "independent" and res["schema_version"] == 2
    assert [t["name"] for t in res["tasks"]] == ["digits", "pedestrians"]
    assert res["accuracy_matrix"] == [[res["final_accuracy"]["digits"]], [res["final_accuracy"]["pedestrians"]]]
    assert res["forgetting"] is None and res["task_id_accuracy"] is None
    for name in ("digits", "pedestrians"):
        assert 0 <= res["final_accuracy"][name] <= 1 and res["params"]["per_task"][name] > 0
        ckpt = tmp_path / "checkpoints" / f"{name}.safetensors"
        assert ckpt.is_file() and ckpt.stat().st_size < 2_000_000  # trainable state only
    for name in ("config_resolved.yaml", "results.csv", "accuracy.png", "summary.txt"):
        assert (tmp_path / name).is_file(), name
    assert list((tmp_path / "logs" / "digits").glob("*.csv"))


def test_continual_run_outputs_and_zero_forgetting(tmp_path):
    out = run_py(*TINY, *PROCEDURAL, "strategy=gift_multitask", "benchmark.domains=[digits,pedestrians,signs]",
                 f"hydra.run.dir={tmp_path}").stdout
    assert "accuracy matrix" in out and "task-id accuracy" in out
    res = results(tmp_path)
    matrix = res["accuracy_matrix"]
    assert [len(r) for r in matrix] == [1, 2, 3]
    assert res["forgetting"] == 0.0 and res["bwt"] == 0.0  # frozen trunk: old tasks reproduce exactly
    assert matrix[2][0] == matrix[0][0] and matrix[2][1] == matrix[1][1]
    assert 0 <= res["task_id_accuracy"] <= 1 and set(res["task_inference"]) == {"digits", "pedestrians", "signs"}
    for name in ("accuracy_matrix.csv", "accuracy_matrix.png", "checkpoints/last.pt", "summary.txt"):
        assert (tmp_path / name).is_file(), name
    # the interpretability CLI reads the finished run back
    proc = subprocess.run([sys.executable, str(REPO / "analysis" / "cluster_maps.py"), str(tmp_path), "--images", "2",
                           "--clusters", "3"], cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    interpret = tmp_path / "interpret"
    assert len(list(interpret.glob("maps_*.png"))) == 3 and list(interpret.glob("concept_reuse_*.png"))
    reuse = json.loads((interpret / "concept_reuse.json").read_text())
    assert len(reuse["reuse"]) == 3 and all(abs(reuse["reuse"][i][i] - 1) < 1e-5 for i in range(3))


def test_joint_mode_trains_all_tasks_at_once(tmp_path):
    run_py(*TINY, *PROCEDURAL, "strategy=gift_multitask", "strategy.protocol=joint",
           "benchmark.domains=[digits,signs]", f"hydra.run.dir={tmp_path}")
    res = results(tmp_path)
    assert res["protocol"] == "joint" and len(res["accuracy_matrix"]) == 1 and len(res["accuracy_matrix"][0]) == 2


@pytest.mark.parametrize("protocol,checkpoint_every", [("sequential", 1), ("sequential", 0), ("independent", 1),
                                                       ("joint", 1)],
                         ids=["sequential-mid-experience", "sequential-experience-boundary",
                              "independent-mid-experience", "joint-mid-experience"])
def test_killed_run_resumes_to_identical_results(tmp_path, protocol, checkpoint_every):
    args = [*TINY, *PROCEDURAL, "strategy=gift_multitask", f"strategy.protocol={protocol}",
            "strategy.method.trunk=free", "optim.epochs=3", f"checkpoint_every={checkpoint_every}",
            "benchmark.domains=[digits,pedestrians,signs]", "benchmark.n_train=96"]
    _, _, reference, killed = kill_and_resume(args, tmp_path)
    # the CSV logs written before the kill are kept: the resumed run appended to them
    for name in ("training_results.csv", "eval_results.csv"):
        kept = {p.relative_to(killed) for p in killed.rglob(name)}
        assert kept == {p.relative_to(reference) for p in reference.rglob(name)}
        for rel in kept:
            assert len((killed / rel).read_text().splitlines()) >= len((reference / rel).read_text().splitlines())


def test_sweep_with_multirun(tmp_path):
    run_py("-m", *TINY, *PROCEDURAL, "benchmark.domains=[pedestrians]", "strategy=linear,lora",
           f"hydra.sweep.dir={tmp_path}", "hydra.sweep.subdir=${hydra.job.num}")
    assert results(tmp_path / "0")["strategy"] == "linear" and results(tmp_path / "1")["strategy"] == "lora"


@pytest.mark.parametrize("benchmark", ["vdd", "vtab/dtd", "fgvc/cub", "five_datasets"])
def test_every_real_benchmark_runs_on_its_fixture(tmp_path, benchmark):
    root = tmp_path / "data"
    extra = []
    if benchmark == "vdd":
        write_vdd(str(root), domains={"dtd": 3, "gtsrb": 2})
        extra = ["benchmark.domains=[dtd,gtsrb]", "strategy=gift_multitask"]
    elif benchmark == "vtab/dtd":
        write_vtab(str(root), task="dtd", num_classes=3)
    elif benchmark == "fgvc/cub":
        write_fgvc(str(root), dataset="cub", num_classes=3)
    else:
        write_five_datasets(str(root))
        extra = ["strategy=linear_multitask", "benchmark.order=[mnist,notmnist]"]
    run_dir = tmp_path / "run"
    run_py(*TINY, f"benchmark={benchmark}", f"benchmark.root={root}", *extra, f"hydra.run.dir={run_dir}")
    res = results(run_dir)
    assert res["finished"]
    if benchmark == "vdd":
        assert set(res["decathlon_score"]["per_domain"]) == {"dtd", "gtsrb"}
        assert res["decathlon_eval_splits"] == ["val"]


def test_bad_input_is_one_clear_message(tmp_path):
    proc = run_py(*TINY, "benchmark=vdd", f"benchmark.root={tmp_path / 'nowhere'}", f"hydra.run.dir={tmp_path / 'run'}",
                  check=False, timeout=120)
    assert proc.returncode != 0
    assert "nowhere" in proc.stderr and "DataError" in proc.stderr and "Traceback" not in proc.stderr


def test_evaluating_after_the_last_experience_only_gives_its_row_exactly(tmp_path):
    """Evaluation never changes what trains (the RNG it draws from is put back): ``evaluate=last_experience``
    reproduces the final row of the full accuracy matrix bit for bit, leaves the other rows empty, has no
    forgetting, and still writes every task's per-image predictions."""
    from gift_cl.reporting import read_predictions

    from runs import compose_cfg, run_in_process

    common = [*TINY[1:], *PROCEDURAL, "strategy=lora_multitask", "benchmark.domains=[digits,pedestrians,signs]"]
    every = run_in_process(compose_cfg(*common), tmp_path / "every")
    last = run_in_process(compose_cfg(*common, "evaluate=last_experience"), tmp_path / "last")
    assert last["accuracy_matrix"] == [[], [], every["accuracy_matrix"][-1]]
    assert last["final_accuracy"] == every["final_accuracy"] and last["task_inference"] == every["task_inference"]
    assert every["forgetting"] == 0.0 and last["forgetting"] is None and last["bwt"] is None
    preds = read_predictions(tmp_path / "last")
    assert set(preds) == {"digits", "pedestrians", "signs"}
    for name, (pred, target) in preds.items():
        assert len(pred) == 24 and float((pred == target).mean()) == last["final_accuracy"][name]
    assert "(not evaluated)" in (tmp_path / "last" / "summary.txt").read_text()


def test_cfg_job_resolve_prints_the_resolved_configuration():
    """``run.py --cfg job --resolve``: the backbone's normalisation (lists from a resolver) resolves in place."""
    import yaml

    proc = run_py("--cfg", "job", "--resolve", "model=vit_formula")
    cfg = yaml.safe_load(proc.stdout)
    assert len(cfg["model"]["mean"]) == 3 and len(cfg["model"]["std"]) == 3 and cfg["model"]["image_size"] > 0
    assert "${" not in proc.stdout


@pytest.mark.parametrize("args", [
    ("strategy=lora", "--cfg", "job", "--resolve"),   # overrides before the flags, as Hydra allows
    ("--cfg", "job", "--resolve", "strategy=lora"),
], ids=["overrides-first", "flags-first"])
def test_overrides_and_flags_in_either_order(args):
    import yaml

    assert yaml.safe_load(run_py(*args).stdout)["strategy"]["name"] == "lora"


def test_the_deferred_outputs_join_the_users_overrides():
    from gift_cl.orchestration.cli import with_deferred_outputs

    for args in (["a=1", "--cfg", "job"], ["--cfg", "job", "a=1", "b=2"], ["-m", "a=1,2"]):
        got = with_deferred_outputs(args)
        flags = [i for i, a in enumerate(got) if a.startswith("-") and "=" not in a]
        overrides = [i for i, a in enumerate(got) if ("=" in a or a.startswith("~")) and not a.startswith("-")]
        assert overrides == list(range(overrides[0], overrides[0] + len(overrides))), got  # one run
        assert [got[i] for i in flags] == [a for a in args if a.startswith("-")]
    assert with_deferred_outputs(["--cfg", "job"])[-2:] == ["--cfg", "job"]  # no override: the flag's value stays its own
