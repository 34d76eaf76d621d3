"""The analysis notebooks (analysis/notebooks/*.ipynb) run end to end on a small finished run, so they never
go stale: a tiny GIFT run (sequential, 4 procedural tasks, 1 epoch) and a linear-probe baseline are made
here, and every notebook is executed with nbclient against them, in a fresh kernel of this interpreter.
Without ``GIFT_CL_RUN`` a notebook reads the newest finished GIFT run under ``outputs/`` (from Jupyter's
working directory, the notebook's folder, or a folder above it); a run that is not there is one message.

nbclient, nbformat and ipykernel are the `notebooks` extra (`make install` installs it). Without them this
module FAILS at import: it never skips."""
import json
import os
import shutil
from pathlib import Path

import pytest

try:
    import nbformat
    from nbclient import NotebookClient
except ImportError as exc:  # a failure, not a skip: CI must run the notebooks
    raise ImportError(f"{exc}: the notebook tests need the `notebooks` extra; "
                      f"run `pip install -e '.[dev,notebooks]'` (what `make install` does)") from exc

from runs import PROCEDURAL, REPO, TINY, env, results, run_py

NOTEBOOKS = REPO / "analysis" / "notebooks"
NAMES = ["cluster_maps", "concept_reuse", "reuse_vs_similarity"]
TASKS = "benchmark.domains=[digits,signs,textures,flowers]"  # both decathlon groups are represented
SMALL = [*TINY, *PROCEDURAL, "optim.epochs=1", "benchmark.n_train=32", "benchmark.n_test=16", TASKS]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("notebook_runs")
    gift, linear = root / "gift", root / "linear"
    run_py(*SMALL, "strategy=gift_multitask", f"hydra.run.dir={gift}")
    run_py(*SMALL, "strategy=linear_multitask", f"hydra.run.dir={linear}")
    assert results(gift)["finished"] and results(linear)["finished"]
    return gift, linear


def execute(name: str, run_dir, baseline, cwd: Path = REPO, cells: int = None) -> nbformat.NotebookNode:
    """Run the notebook (its first ``cells`` cells) in a fresh kernel started in ``cwd``; ``run_dir`` /
    ``baseline`` None leave ``GIFT_CL_RUN`` / ``GIFT_CL_BASELINE`` unset."""
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nb.cells = nb.cells[:cells]
    threads = os.environ.get("GIFT_CL_TEST_THREADS", "2")
    kernel_env = {k: v for k, v in env().items() if k not in ("GIFT_CL_RUN", "GIFT_CL_BASELINE")}
    kernel_env.update({"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
                       "MPLBACKEND": "module://matplotlib_inline.backend_inline"})
    for key, value in (("GIFT_CL_RUN", run_dir), ("GIFT_CL_BASELINE", baseline)):
        if value is not None:
            kernel_env[key] = str(value)
    # kernel "python3" is ipykernel's: jupyter_client starts it with this interpreter (sys.executable), in ``cwd``
    # with PYTHONPATH=REPO, so the kernel imports this checkout's gift_cl
    client = NotebookClient(nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(cwd)}})
    client.execute(env=kernel_env)  # raises CellExecutionError on the first failing cell
    return nb


def outputs(nb, kind: str) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if kind in o.get("data", {}) or (kind == "stream" and o.get("output_type") == "stream")]


def text(nb) -> str:
    return "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "")
                   for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_on_a_fresh_run(name, runs):
    gift, linear = runs
    nb = execute(name, gift, linear)
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    figures = outputs(nb, "image/png")
    out = text(nb)
    if name == "cluster_maps":
        # last layer raw, centred and pre-delta, then one figure per target layer (the tiny ViT has 2)
        assert len(figures) == 3 + 2
        assert "std over tokens" in out
        assert "signs" in out and "(4, 64, 32, 32)" in out  # the parameter TASK, 4 images, 64 clusters
    elif name == "concept_reuse":
        # depth, reuse, untrained-heads reuse, dendrogram, t-SNE, global concepts, cross-layer
        assert len(figures) == 7
        assert "blocks.1.attn.proj" in out and "untrained" in out and "within" in out
    else:
        # task similarity, then relations for the first and the last layer (similarity and gain panels)
        assert len(figures) == 3
        assert "linear_multitask" in out and "flowers" in out and "rho(reuse, sim)" in out


@pytest.mark.parametrize("name", NAMES)
def test_stored_notebook_has_outputs_one_parameter_cell_and_stays_small(name):
    path = NOTEBOOKS / f"{name}.ipynb"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and 'os.environ.get("GIFT_CL_RUN"' in params[0].source
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "store the notebook executed (every code cell run)"
    assert outputs(nb, "image/png"), "store the notebook with its figures"
    assert not [o for c in code for o in c.outputs if o.get("output_type") == "error"]
    assert path.stat().st_size < 1_000_000
    assert nb.metadata.kernelspec.name == "python3"  # the stock ipykernel spec: this interpreter


SETUP = 4  # markdown, parameters note, parameter cell, the cell that finds and loads the run


def copy_run(src: Path, dst: Path, mtime: float, finished: bool = True) -> Path:
    shutil.copytree(src, dst)
    results_file = dst / "results.json"
    res = json.loads(results_file.read_text())
    res["finished"] = finished
    results_file.write_text(json.dumps(res))
    os.utime(results_file, (mtime, mtime))
    return dst


def test_without_gift_cl_run_the_newest_finished_gift_run_under_outputs_is_read(runs, tmp_path):
    """`make run` writes outputs/<strategy>/<benchmark>/<time>/; Jupyter starts the kernel in the notebook's
    folder. Unfinished runs and other methods are passed over; the baseline is the newest linear probe on the
    same tasks."""
    gift, linear = runs
    out = tmp_path / "outputs"
    copy_run(gift, out / "gift_multitask" / "procedural" / "older", 1_000_000)
    newest = copy_run(gift, out / "gift_multitask" / "procedural" / "newest", 2_000_000)
    copy_run(gift, out / "gift_multitask" / "procedural" / "unfinished", 3_000_000, finished=False)
    baseline = copy_run(linear, out / "linear_multitask" / "procedural" / "probe", 4_000_000)
    notebook_dir = tmp_path / "analysis" / "notebooks"
    notebook_dir.mkdir(parents=True)
    assert f"run {newest}\n" in text(execute("cluster_maps", None, None, cwd=notebook_dir, cells=SETUP))
    out_text = text(execute("reuse_vs_similarity", None, None, cwd=notebook_dir, cells=SETUP))
    assert f"run {newest}\n" in out_text and f"baseline: linear_multitask ({baseline})" in out_text


@pytest.mark.parametrize("given", [True, False])
def test_a_missing_run_is_one_message(tmp_path, given):
    from nbclient.exceptions import CellExecutionError

    (tmp_path / "outputs").mkdir()
    with pytest.raises(CellExecutionError) as err:
        execute("concept_reuse", tmp_path / "no_such_run" if given else None, None, cwd=tmp_path, cells=SETUP)
    expected = "is not a run directory" if given else f"no finished GIFT run under {tmp_path / 'outputs'}"
    assert err.value.ename == "RunNotFound" and expected in err.value.evalue, str(err.value)
    shown = str(err.value).split("------------------")[-1]  # what Jupyter shows below the cell: the message alone
    assert shown.strip() == f"RunNotFound: {err.value.evalue}", shown
