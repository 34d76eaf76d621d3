"""Where a run writes, and whether it may: new runs, resumed runs, locks.

- ``resume=false``: Hydra's new directory; one that already holds a run is refused (no silent reuse).
- ``resume=<dir>``: that run; its saved configuration must equal this one (keys that cannot change
  results, :data:`gift_cl.orchestration.runfiles.RESULT_NEUTRAL_KEYS`, may differ; ``allow_config_change=true``
  accepts other differences). A directory whose run was killed in start-up, before it saved its
  configuration, holds nothing of it but start-up debris (:data:`gift_cl.orchestration.runfiles.START_UP_DEBRIS`):
  the run starts afresh there, so a requeue loop (``hydra.run.dir=D resume=D``) recovers. A directory
  holding anything else is refused.
- ``resume=true``: the newest unfinished run of the same configuration beside Hydra's new directory.
- A directory is locked (``fcntl`` on ``.lock``) while a run uses it: a second run there stops at once,
  having written nothing there; a directory that cannot be written gets one :class:`RunDirError`.

Imports neither torch nor ``gift_cl``: the sweep runner plans and claims runs with it.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from .runfiles import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    LOCK_FILE,
    RESULTS_FILE,
    START_UP_DEBRIS,
    result_neutral,
)

log = logging.getLogger("gift_cl")


class RunDirError(RuntimeError):
    """A run directory cannot be used as asked: says why and what to do instead."""


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def config_differences(saved: dict, current: dict) -> list[str]:
    """``key: saved -> current`` for every result-relevant key that differs."""
    a, b = _flatten(saved), _flatten(current)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if result_neutral(key):
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            diffs.append(f"{key}: {a.get(key, '<absent>')!r} -> {b.get(key, '<absent>')!r}")
    return diffs


def resolved(cfg: DictConfig) -> dict:
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)  # a DictConfig converts to a dict
    return container


def saved_config(run_dir: Path) -> dict:
    """The run's saved configuration; constructors named by a checkout's short package names read as their
    installed names (a run saved as ``strategies.plugins.EWC`` resumes as ``gift_cl.strategies.plugins.EWC``)."""
    from gift_cl.former_names import installed_target_names

    return installed_target_names(OmegaConf.to_container(OmegaConf.load(run_dir / CONFIG_FILE), resolve=False))


def holds_a_run(run_dir: Path) -> bool:
    """Whether a run has started in ``run_dir`` (saved its configuration) or left results there."""
    return any((run_dir / name).exists() for name in (CONFIG_FILE, RESULTS_FILE, CHECKPOINTS_DIR))


def aborted_start(run_dir: Path) -> bool:
    """Whether ``run_dir`` is a directory in which a run was started and stopped before it saved its
    configuration: it holds nothing but :data:`START_UP_DEBRIS` (or nothing at all)."""
    return run_dir.is_dir() and all(p.name in START_UP_DEBRIS for p in run_dir.iterdir())


def run_finished(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a finished run (``results.json`` with ``finished: true``); an unreadable or
    half-written file counts as not finished, so the run is resumed rather than trusted."""
    try:
        doc = json.loads((Path(run_dir) / RESULTS_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and bool(doc.get("finished"))


def resolve_run_dir(cfg: DictConfig, hydra_dir: Path) -> tuple[Path, bool]:
    """The directory this run writes into, and whether it continues a run there."""
    if not cfg.resume:
        if holds_a_run(hydra_dir):
            raise RunDirError(f"{hydra_dir} already holds a run; continue it with resume={hydra_dir}, or choose "
                              f"another hydra.run.dir")
        return hydra_dir, False
    current = resolved(cfg)
    if cfg.resume is not True:
        path = Path(str(cfg.resume)).expanduser()
        if not (path / CONFIG_FILE).is_file():
            if aborted_start(path):
                log.warning("resume=%s: the run there stopped before it saved its configuration: starting it "
                            "afresh", path)
                return path, False
            raise RunDirError(f"resume={path}: not a run directory (no {CONFIG_FILE} in it"
                              + (", and files other than start-up debris" if path.is_dir() else "") + ")")
        diffs = config_differences(saved_config(path), current)
        if diffs and not cfg.get("allow_config_change", False):
            raise RunDirError(f"resume={path}: the configuration differs from the saved run's, which would mix "
                              f"two set-ups in one result: " + "; ".join(diffs[:12])
                              + ". Resume with the same options, or pass allow_config_change=true.")
        if diffs:
            log.warning("resuming %s with a changed configuration (allow_config_change=true): %s", path, diffs)
        return path, True
    parent = hydra_dir.parent
    unfinished = [d for d in (parent.iterdir() if parent.is_dir() else []) if d != hydra_dir
                  and (d / CONFIG_FILE).is_file() and not run_finished(d)]
    same = [d for d in unfinished if not config_differences(saved_config(d), current)]
    if not same:
        other = f" ({len(unfinished)} unfinished run(s) there have another configuration)" if unfinished else ""
        raise RunDirError(f"resume=true: no unfinished run of this configuration under {parent}{other}; "
                          f"pass resume=<run dir> to pick one")
    chosen = max(same, key=lambda d: d.stat().st_mtime)
    log.info("resume=true: continuing %s", chosen)
    return chosen, True


# keyed by OSError.errno (typed int | None)
_WRITE_HINT: dict[int | None, str] = {errno.EROFS: "choose a hydra.run.dir on a writable file system",
                                      errno.EACCES: "make it writable, or choose another hydra.run.dir",
                                      errno.EPERM: "make it writable, or choose another hydra.run.dir",
                                      errno.ENOSPC: "free disk space, or choose another hydra.run.dir"}


class RunLock:
    """An exclusive lock on a run directory (released when the process dies). ``.lock`` is held for the lifetime of
    a run (a second run there is refused); the sweep's workers claim a run with ``.claim`` before starting it."""

    def __init__(self, run_dir: Path, name: str = LOCK_FILE):
        self.path = Path(run_dir) / name
        self.fd: Optional[int] = None
        self.holder = ""

    def try_acquire(self) -> bool:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise RunDirError(f"cannot use {self.path.parent}: cannot create {self.path}: {err.strerror or err}; "
                              f"{_WRITE_HINT.get(err.errno, 'choose another hydra.run.dir')}") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        if not self.try_acquire():
            raise RunDirError(f"{self.path.parent} is in use by a running run (pid {self.holder}); wait for it or "
                              f"choose another hydra.run.dir")
        return self

    def __exit__(self, *exc):
        self.release()
