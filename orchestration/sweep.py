"""Long sweeps that survive a stop: ``python -m gift_cl.orchestration.sweep PLAN [PLAN ...] --out DIR [--jobs N]``.

The one sweep runner: ``python run.py -m ...`` runs its grid through it too (the default launcher,
``hydra_plugins/gift_cl_sweep``), so a run lands in the same directory either way.

A plan is a text file with one run per line, written as ``run.py`` overrides; Hydra's sweep syntax expands
within a line (``optim.lr=3e-3,1e-2 seed=0,1,2`` is six runs); ``#`` starts a comment. Every run gets a
directory named after its overrides under ``--out``, so a second call with the same plan

- skips the runs that finished (``results.json`` with ``finished: true``),
- resumes the ones a stop interrupted from their last checkpoint (exactly, as ``resume=<dir>``),
- starts the rest.

The plan is printed at once: how many runs are finished, started and pending, and every unfinished run with
its state and directory; ``--status`` and ``--list`` (and a call on a finished sweep) answer without importing
torch. A run's directory is named after the overrides that vary across the plan (``seed`` always, where the
plan sets it), shortened only where a name would be too long, plus a hash of all
of its overrides that identifies it (a directory with the same hash is the run's, whatever its readable
part); ``index.tsv`` in ``--out`` lists every run's directory with its full overrides.

``--jobs N`` runs N worker processes that take runs from the plan in order (a claim lock per run, so two
calls on one folder never run a run twice); each run gets ``threads = cores // N`` unless its line sets
``threads``. Runs execute in-process (one interpreter per worker: no import cost per run), each with its own
``gift_cl.log``. Every unfinished run's configuration is composed and validated before any run starts: a plan
with a bad line (an unknown option, a typo, a value out of range) is refused as a whole, naming every bad run,
and nothing runs. A run that fails while running is reported with its directory and the sweep exits non-zero;
the others go on.
``--launcher local|slurm`` runs every run as a submitit job instead (``configs/hydra/launcher/``, parameters
with ``--launcher-opt KEY=VALUE``); a job that submitit requeues continues its run from the last checkpoint.
Collect the results with ``analysis/compare.py DIR`` or ``analysis/summarize.py DIR``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Optional

from .rundir import RunLock, run_finished  # torch-free: planning and --status answer without torch
from .runfiles import (
    CLAIM_FILE,
    CONFIG_FILE,
    INDEX_FILE,
    LOG_FILE,
    RESULTS_FILE,
    SWEEP_ERROR_FILE,
    SWEEP_OVERRIDES_FILE,
)

log = logging.getLogger("gift_cl.sweep")


MAX_NAME = 150  # characters of a directory name's readable part

# options every sweep run gets unless its line sets them: a bar in a log file is noise
DEFAULTS = ("progress=false",)


# ------------------------------------------------------------------------------------------- plans
def expand(line: str) -> list[list[str]]:
    """One plan line -> the runs it names (Hydra's sweep syntax, expanded as ``run.py -m`` would)."""
    import shlex

    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    words = shlex.split(line, comments=True)
    if not words:
        return []
    parsed = OverridesParser.create().parse_overrides(words)
    batches = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return [list(run) for batch in batches for run in batch]


def read_plans(paths: list[str]) -> list[list[str]]:
    runs: list[list[str]] = []
    for path in paths:
        text = Path(path).read_text()
        for number, line in enumerate(text.splitlines(), 1):
            try:
                runs += expand(line)
            except Exception as exc:  # noqa: BLE001 (the parser's own message, with the place)
                raise SystemExit(f"{path}:{number}: cannot read this plan line ({exc}): {line.strip()}") from None
    seen, unique = set(), []
    for run in runs:
        if tuple(run) not in seen:
            seen.add(tuple(run))
            unique.append(run)
    return unique


def _key(override: str) -> str:
    return override.split("=", 1)[0]


def varying_keys(runs: list[list[str]]) -> set[str]:
    """The override keys whose value differs between the runs (or that some runs lack), plus ``seed``."""
    values: dict[str, set] = {}
    for run in runs:
        for o in run:
            values.setdefault(_key(o), set()).add(o)
    return {k for k, v in values.items() if len(v) > 1 or any(not any(_key(o) == k for o in r) for r in runs)} | {"seed"}


def run_hash(overrides: list[str]) -> str:
    """What identifies a run's directory: a hash of all its overrides, in order."""
    return hashlib.sha1(",".join(overrides).encode()).hexdigest()[:8]


def run_name(overrides: list[str], varying: Optional[set] = None) -> str:
    """A readable, unique directory name for a run: the overrides in ``varying`` (all of them by default, or
    when none varies), shortened only if the name would pass :data:`MAX_NAME` characters (keys to their
    last part, ``optim.lr`` -> ``lr``, then every item cut to an equal share, so none is lost), plus
    :func:`run_hash`."""
    shown = [o for o in overrides if varying is None or _key(o) in varying] or list(overrides)
    items = [re.sub(r"[^A-Za-z0-9_.=+,-]", "_", o) for o in shown]
    if len(",".join(items)) > MAX_NAME:
        items = [i.split("=", 1)[0].rsplit(".", 1)[-1] + ("=" + i.split("=", 1)[1] if "=" in i else "") for i in items]
    if len(",".join(items)) > MAX_NAME:
        share = max(8, MAX_NAME // len(items) - 1)
        items = [i[:share] for i in items]
    return f"{','.join(items)}__{run_hash(overrides)}"


def run_dirs(runs: list[list[str]], out: Path) -> list[Path]:
    """Each run's directory under ``out``: the one already there with the run's hash (named by an earlier
    plan, or by the naming of earlier versions), else a new name from the overrides that vary in ``runs``."""
    existing: dict[str, Path] = {}
    if out.is_dir():
        for d in out.iterdir():
            if "__" in d.name and d.is_dir():
                existing.setdefault(d.name.rsplit("__", 1)[1], d)
    varying = varying_keys(runs)
    return [existing.get(run_hash(r)) or out / run_name(r, varying) for r in runs]


def write_index(runs: list[list[str]], dirs: list[Path], out: Path) -> None:
    """``out/index.tsv``: every run's directory name and full overrides (those of earlier plans kept)."""
    path = out / INDEX_FILE
    rows = {}
    if path.is_file():
        for line in path.read_text().splitlines()[1:]:
            name, _, overrides = line.partition("\t")
            rows[name] = overrides
    rows.update({d.name: " ".join(r) for r, d in zip(runs, dirs)})
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # two sweeps on one folder never share a temporary file
    tmp.write_text("directory\toverrides\n" + "".join(f"{n}\t{o}\n" for n, o in sorted(rows.items())))
    os.replace(tmp, path)


def average_accuracy(run_dir: Path) -> Optional[float]:
    """A finished run's average accuracy (``results.json``), else ``None``."""
    try:
        return json.loads((run_dir / RESULTS_FILE).read_text()).get("average_accuracy")
    except (OSError, ValueError, AttributeError):
        return None


def state(run_dir: Path) -> str:
    return "finished" if run_finished(run_dir) else "started" if (run_dir / CONFIG_FILE).is_file() else "pending"


# ------------------------------------------------------------------------------------------- one run
def compose(overrides: list[str]):
    """The configuration ``python run.py <overrides>`` would build (Hydra's compose API, the shipped configs)."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from gift_cl.config import register_resolvers

    from .cli import config_dir

    register_resolvers()

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = hydra_compose("config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # ${hydra:runtime.choices.*} resolves as in run.py
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def run_one(overrides: list[str], run_dir: Path, composer=compose) -> dict:
    """One run in ``run_dir``, in this process: ``composer(overrides)`` is its configuration (default: the shipped
    configs, as ``run.py`` composes them); a directory that holds a started run is continued from its last
    checkpoint (``resume=<run_dir>``, with the usual check that the configuration is the same)."""
    from .cli import run

    cfg = composer(overrides)
    if (run_dir / CONFIG_FILE).is_file():  # started before: continue it (set here, a path is no override)
        cfg.resume = str(run_dir)
    handler = logging.FileHandler(run_dir / LOG_FILE)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        return run(cfg, run_dir, tuple(overrides))
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


def run_in_dir(overrides: list[str], run_dir: Path, composer=compose, threads: Optional[int] = None) -> Optional[dict]:
    """A sweep's run in its directory, whoever calls it (a worker, a submitit job, a requeued job): skipped
    (``None``) when it has finished or another process has claimed it, continued from its last checkpoint when
    it was started, else started. A failure is written to ``sweep_error.txt`` (with its traceback) and raised."""
    if run_finished(run_dir):
        return None
    claim = RunLock(run_dir, CLAIM_FILE)
    if not claim.try_acquire():
        return None  # another worker has it
    try:
        if run_finished(run_dir):
            return None
        (run_dir / SWEEP_OVERRIDES_FILE).write_text(" ".join(overrides) + "\n")
        start = time.time()
        log.info("start %s", run_dir.name)
        try:
            results = run_one(full_overrides(overrides, threads), run_dir, composer)
        except BaseException:
            if not isinstance(sys.exc_info()[1], KeyboardInterrupt):
                (run_dir / SWEEP_ERROR_FILE).write_text(traceback.format_exc())
            raise
        log.info("done  %s: average accuracy %.2f in %.0f s", run_dir.name, 100 * results["average_accuracy"],
                 time.time() - start)
        return results
    finally:
        claim.release()


def full_overrides(overrides: list[str], threads: Optional[int] = None) -> list[str]:
    """A plan line's overrides plus the sweep's defaults and thread count (if given), where the line does not
    set them."""
    full = [*overrides, *(d for d in DEFAULTS if not any(o.startswith(d.split("=")[0] + "=") for o in overrides))]
    if threads is not None and not any(o.startswith("threads=") for o in overrides):
        full.append(f"threads={threads}")
    return full


def check_configs(runs: list[list[str]], dirs: list[Path], threads: Optional[int], composer=compose) -> list[str]:
    """Compose and validate every unfinished run's configuration before any run starts (~0.1 s a run), so a typo
    on line 40 of a plan stops the sweep now, not hours later; returns one line per bad run."""
    todo = [o for o, d in zip(runs, dirs) if not run_finished(d)]
    if not todo:
        return []
    log.info("checking the configuration of %d runs", len(todo))
    from .validation import validate

    bad = []
    for overrides in todo:
        try:
            validate(composer(full_overrides(overrides, threads)), command_line=True)  # the user's plan
        except Exception as exc:  # noqa: BLE001 (Hydra's and our config errors; all of them are reported)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            bad.append(f"{' '.join(overrides)}: {type(exc).__name__}: {first}")
    return bad


def work(runs: list[list[str]], dirs: list[Path], threads: Optional[int], composer=compose) -> list[str]:
    """Take unclaimed, unfinished runs in plan order and run them; returns the failed runs' directories."""
    failed = []
    for overrides, run_dir in zip(runs, dirs):
        try:
            run_in_dir(overrides, run_dir, composer, threads)
        except Exception as exc:  # noqa: BLE001 (reported, the sweep goes on; Ctrl-C stops it)
            failed.append(str(run_dir))
            log.error("FAILED %s: %s: %s (traceback in sweep_error.txt)", run_dir, type(exc).__name__, exc)
    return failed


# ------------------------------------------------------------------------------------------- submitit
# the parameters every submitit executor takes; the others are the cluster's own (slurm_partition, ...)
GENERIC_PARAMS = frozenset({"timeout_min", "mem_gb", "nodes", "tasks_per_node", "cpus_per_task", "gpus_per_node",
                            "name", "stderr_to_stdout"})


class SweepJob:
    """What a submitit job runs: one run of a sweep in its directory (:func:`run_in_dir`). A job that submitit
    requeues (signalled before its time limit, or pre-empted) is submitted again with the same arguments
    (:meth:`checkpoint`) and continues its run from the last checkpoint. ``composer`` makes a run's
    configuration from its overrides (picklable: it travels to the job)."""

    def __init__(self, composer=compose, threads: Optional[int] = None):
        self.composer, self.threads = composer, threads

    def __call__(self, overrides: list[str], run_dir: str) -> Optional[float]:
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
        results = run_in_dir(list(overrides), Path(run_dir), self.composer, self.threads)
        return None if results is None else results["average_accuracy"]

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def submitit_executor(cluster: str, params: dict):
    """A submitit executor for ``cluster`` (``local`` or ``slurm``) from a launcher configuration's parameters
    (``configs/hydra/launcher/``): ``submitit_folder``, the generic resources, ``max_num_timeout`` and the
    cluster's own parameters by their plain names (``partition``, ``signal_delay_s``, ...). ``None`` values
    are left to submitit."""
    import submitit

    params = {k: v for k, v in params.items() if v is not None}
    folder = params.pop("submitit_folder")
    init = {f"{cluster}_max_num_timeout": params.pop("max_num_timeout")} if "max_num_timeout" in params else {}
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster, **init)
    executor.update_parameters(**{k if k in GENERIC_PARAMS else f"{cluster}_{k}": v for k, v in params.items()})
    return executor


def submit(runs: list[list[str]], dirs: list[Path], job: SweepJob, executor) -> list[str]:
    """Every unfinished run as one submitit job (a job array), then wait for them; returns the failed runs'
    directories. A job's output is in its submitit folder (``<out>/.submitit/<job id>/``)."""
    todo = [(o, d) for o, d in zip(runs, dirs) if not run_finished(d)]
    if not todo:
        return []
    jobs = executor.map_array(job, [o for o, _ in todo], [str(d) for _, d in todo])
    log.info("submitted %d jobs: %s", len(jobs), " ".join(str(j.job_id) for j in jobs))
    failed = []
    for j, (_, run_dir) in zip(jobs, todo):
        try:
            j.result()
        except Exception as exc:  # noqa: BLE001 (every job is waited for; the failures are listed)
            failed.append(str(run_dir))
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            log.error("FAILED %s (job %s): %s", run_dir, j.job_id, first)
    return failed


def launcher_params(name: str, options: list[str], out: Path) -> dict:
    """The parameters of the launcher ``configs/hydra/launcher/<name>.yaml`` with ``options`` (``KEY=VALUE``,
    as ``hydra.launcher.KEY=VALUE`` on a ``run.py -m`` command line), for a sweep in ``out``."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from omegaconf import OmegaConf

    from .cli import config_dir

    overrides = [f"hydra/launcher={name}", f"hydra.sweep.dir={out}", *(f"hydra.launcher.{o}" for o in options)]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = hydra_compose("config", overrides=overrides, return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert isinstance(params, dict)  # hydra.launcher is a mapping
    params.pop("_target_", None)
    return params


def status(dirs: list[Path]) -> dict[str, int]:
    counts = {"finished": 0, "started": 0, "pending": 0}
    for run_dir in dirs:
        counts[state(run_dir)] += 1
    return counts


def plan_lines(runs: list[list[str]], dirs: list[Path]) -> list[str]:
    """The plan as printed when a sweep starts: the counts, then every run not finished (state, directory)."""
    counts = status(dirs)
    lines = [f"plan: {len(runs)} runs, " + ", ".join(f"{n} {k}" for k, n in counts.items())]
    lines += [f"  {state(d):8s} {d.name}" for d in dirs if not run_finished(d)]
    return lines


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gift_cl.orchestration.sweep", description=__doc__.split("\n\n")[0])
    ap.add_argument("plans", nargs="+", help="plan files: one run per line (run.py overrides, Hydra sweep syntax)")
    ap.add_argument("--out", required=True, help="the sweep folder (one directory per run below it)")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads per run (default: cores // jobs); a run's own threads= wins")
    ap.add_argument("--status", action="store_true", help="print how many runs are finished/started/pending")
    ap.add_argument("--list", action="store_true", help="print the runs and their directories, run nothing")
    ap.add_argument("--launcher", default=None, metavar="NAME",
                    help="run every run as a submitit job: configs/hydra/launcher/NAME.yaml (local, slurm)")
    ap.add_argument("--launcher-opt", action="append", default=[], metavar="KEY=VALUE",
                    help="a parameter of the launcher (partition=gpu, timeout_min=240, ...); repeatable")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    runs, out = read_plans(args.plans), Path(args.out)
    if args.jobs < 1:
        raise SystemExit(f"--jobs must be at least 1, got {args.jobs}")
    dirs = run_dirs(runs, out)
    if args.list:
        for overrides, run_dir in zip(runs, dirs):
            print(f"{state(run_dir)}\t{run_dir}\t{' '.join(overrides)}")
        return 0
    if args.status:
        print(json.dumps(status(dirs)))
        return 0
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    if args.worker:  # one of --jobs workers: its own failures only (the others may still be running)
        return 1 if work(runs, dirs, threads) else 0
    log.info("%s", "\n".join(plan_lines(runs, dirs)))
    bad = check_configs(runs, dirs, threads)
    if bad:
        log.error("%d of %d runs have a configuration run.py would refuse; nothing was started:%s", len(bad),
                  len(runs), "".join(f"\n  {b}" for b in bad))
        return 2
    out.mkdir(parents=True, exist_ok=True)
    write_index(runs, dirs, out)
    params = launcher_params(args.launcher, args.launcher_opt, out) if args.launcher else {"executor": "inprocess"}
    cluster = params.pop("executor")
    if cluster != "inprocess":  # each run a submitit job: its own process, its threads from its cpus
        failed = submit(runs, dirs, SweepJob(threads=args.threads), submitit_executor(cluster, params))
    elif args.jobs == 1:
        failed = work(runs, dirs, threads)
    else:
        cmd = [sys.executable, "-m", "gift_cl.orchestration.sweep", *args.plans, "--out", str(out), "--worker",
               "--threads", str(threads)]
        procs = [subprocess.Popen(cmd) for _ in range(args.jobs)]
        codes = [p.wait() for p in procs]
        failed = [str(out)] if any(codes) else []
    return report(runs, dirs, out, failed)


def report(runs: list[list[str]], dirs: list[Path], out: Path, failed: list[str]) -> int:
    """Log how the sweep ended; the exit status: 0 when every run finished, else 1."""
    counts = status(dirs)
    log.info("sweep %s: %s", out, counts)
    if failed or counts["finished"] != len(runs):
        log.error("%d of %d runs did not finish%s", len(runs) - counts["finished"], len(runs),
                  "".join(f"\n  {f}" for f in failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
