"""``python run.py -m <overrides>``: Hydra expands the grid, this launcher runs it as the sweep runner runs a plan
(:mod:`gift_cl.orchestration.sweep`), so both ways of running a grid name, skip, resume and check runs alike:

- every run's directory under ``hydra.sweep.dir`` is named after the overrides that vary across the grid (the
  seed always) plus a hash of all of them; ``index.tsv`` lists them (``hydra.sweep.subdir=...`` on the command
  line names them instead);
- the same command again skips finished runs, continues started ones from their last checkpoint and starts
  the rest;
- every run's configuration is composed and checked before any run starts (a bad run: nothing runs, exit 2);
- ``executor``: ``inprocess`` (default: one run after another in this process), ``local`` or ``slurm``
  (each run a submitit job; a requeued job continues its run), with the parameters of
  ``configs/hydra/launcher/{local,slurm}.yaml``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, setup_globals
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger("gift_cl.sweep")


class SweepConfigs:
    """A run's configuration from its overrides, composed as ``run.py -m`` composes it (the command line's
    Hydra settings and search path included). Picklable: it travels to submitit jobs with Hydra's state."""

    def __init__(self, hydra_context, config: DictConfig):
        self.hydra_context, self.config = hydra_context, config
        self.singletons = Singleton.get_state()

    def with_hydra(self, overrides: Sequence[str], job_num: int = 0) -> DictConfig:
        Singleton.set_state(self.singletons)
        setup_globals()
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg.hydra.job):
            cfg.hydra.job.num = job_num
        return cfg

    def __call__(self, overrides: Sequence[str]) -> DictConfig:
        from hydra.core.hydra_config import HydraConfig

        from gift_cl.config import register_resolvers

        register_resolvers()  # also in a submitit job, which composes its run here
        cfg = self.with_hydra(overrides)
        HydraConfig.instance().set_config(cfg)  # ${hydra:runtime.choices.*} resolves as in a single run
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg


class SweepLauncher(Launcher):
    def __init__(self, executor: str = "inprocess", **params: Any) -> None:
        if executor not in ("inprocess", "local", "slurm"):
            raise ValueError(f"hydra.launcher.executor={executor!r}: expected inprocess, local or slurm")
        self.executor = executor
        self.params = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                       for k, v in params.items()}
        self.config: Optional[DictConfig] = None
        self.hydra_context = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config

    @staticmethod
    def _dirs(config: DictConfig, runs: list[list[str]], configs: SweepConfigs, initial_job_idx: int) -> list[Path]:
        from gift_cl.orchestration import sweep

        out = Path(str(config.hydra.sweep.dir))
        hydra_overrides = OmegaConf.to_container(config.hydra.overrides.hydra, resolve=False)  # as written
        assert isinstance(hydra_overrides, list)
        if not any(str(o).startswith("hydra.sweep.subdir=") for o in hydra_overrides):
            return sweep.run_dirs(runs, out)
        # the command line names the directories (e.g. hydra.sweep.subdir=${hydra.job.num})
        return [out / str(configs.with_hydra(r, initial_job_idx + i).hydra.sweep.subdir) for i, r in enumerate(runs)]

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from hydra.core.utils import configure_log

        from gift_cl.orchestration import sweep

        assert self.config is not None
        configure_log(self.config.hydra.job_logging, self.config.hydra.verbose)  # the runs' format, as run_job sets it
        runs = [list(o) for o in job_overrides]
        out = Path(str(self.config.hydra.sweep.dir))
        configs = SweepConfigs(self.hydra_context, self.config)
        dirs = self._dirs(self.config, runs, configs, initial_job_idx)
        log.info("%s", "\n".join(sweep.plan_lines(runs, dirs)))
        bad = sweep.check_configs(runs, dirs, None, configs)
        if bad:
            log.error("%d of %d runs have a configuration run.py would refuse; nothing was started:%s", len(bad),
                      len(runs), "".join(f"\n  {b}" for b in bad))
            raise SystemExit(2)
        out.mkdir(parents=True, exist_ok=True)
        sweep.write_index(runs, dirs, out)
        if self.executor == "inprocess":
            failed = sweep.work(runs, dirs, None, configs)
        else:
            failed = sweep.submit(runs, dirs, sweep.SweepJob(configs), sweep.submitit_executor(self.executor, self.params))
        code = sweep.report(runs, dirs, out, failed)
        if code:
            raise SystemExit(code)
        return [JobReturn(overrides=r, working_dir=str(d), task_name=str(self.config.hydra.job.name),
                          status=JobStatus.COMPLETED, _return_value=sweep.average_accuracy(d))
                for r, d in zip(runs, dirs)]
