"""Extending gift_cl without forking it: a method (and an Avalanche plugin) in the user's own package, its
config in the user's own config directory on ``hydra.searchpath``. A configuration composed from the command
line may name the user's constructors; a configuration read from a run directory may still name only what the
shipped configs name (:mod:`gift_cl.config`). Also: a misspelt ``model.*`` key stops the run, and the
resolvers are registered explicitly, not as a side effect of an import."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gift_cl.config import ConfigError, load_saved_config

from runs import PROCEDURAL, REPO, compose_cfg, env

METHOD = '''
"""A method outside gift_cl: a per-task scale and shift of the frozen backbone's features."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from avalanche.core import SupervisedPlugin
from torch import nn

from gift_cl.methods.base import FrozenBackboneModel


class ScaleShift(FrozenBackboneModel):
    def __init__(self, backbone: nn.Module, init_scale: float = 1.0, addons: Optional[dict] = None):
        super().__init__(backbone)
        self.init_scale = init_scale
        self.scales, self.shifts = nn.ParameterDict(), nn.ParameterDict()

    def add_task_parts(self, task: int) -> None:
        self.scales[str(task)] = nn.Parameter(torch.full((self.feature_dim,), float(self.init_scale)))
        self.shifts[str(task)] = nn.Parameter(torch.zeros(self.feature_dim))

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        return super().task_parameters(task) + [self.scales[str(task)], self.shifts[str(task)]]

    def features(self, x: torch.Tensor, task: int) -> torch.Tensor:
        return self.backbone(x) * self.scales[str(task)] + self.shifts[str(task)]

    def frozen_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)


class ExperienceLog(SupervisedPlugin):
    """An Avalanche plugin: appends each trained experience's index to ``path``."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def after_training_exp(self, strategy, **kwargs):
        with open(self.path, "a") as f:
            f.write(f"{strategy.experience.current_experience}\\n")
'''

CONFIG = """\
# @package _global_
strategy:
  name: my_method
  protocol: independent
  task_inference: true
  method:
    _target_: my_methods.ScaleShift
    init_scale: 1.0
  plugins:
    - _target_: my_methods.ExperienceLog
      path: {log}
optim:
  lr: 1.0e-2
"""

METHOD_CONFIG = """\
# @package _global_
strategy:
  name: ${strategy_name:my_method,independent}
  method:
    _target_: my_methods.ScaleShift
    init_scale: 1.0
optim:
  lr: 1.0e-2
"""

# two small domains, one epoch: a few seconds
QUICK = ["model=vit_tiny_random", "threads=1", "progress=false", "optim.epochs=1", "optim.batch_size=16",
         *PROCEDURAL, "benchmark.domains=[digits,signs]"]


@pytest.fixture
def user_package(tmp_path) -> tuple[Path, Path, Path]:
    """``<tmp>/src/my_methods`` (the code), ``<tmp>/my_configs/strategy/my_method.yaml`` (its config) and the
    file its add-on writes."""
    src, configs, log = tmp_path / "src", tmp_path / "my_configs", tmp_path / "experiences.txt"
    (src / "my_methods").mkdir(parents=True)
    (src / "my_methods" / "__init__.py").write_text(METHOD)
    (configs / "strategy").mkdir(parents=True)
    (configs / "strategy" / "my_method.yaml").write_text(CONFIG.format(log=log))
    (configs / "method").mkdir()
    (configs / "method" / "my_method.yaml").write_text(METHOD_CONFIG)
    return src, configs, log


def user_run(src: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    environment = env()
    environment["PYTHONPATH"] = f"{src}:{environment['PYTHONPATH']}"
    proc = subprocess.run([sys.executable, str(REPO / "run.py"), *args], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_a_method_in_the_users_package_runs_resumes_and_its_saved_config_stays_refused(tmp_path, user_package):
    src, configs, log = user_package
    run_dir = tmp_path / "run"
    command = [*QUICK, f"hydra.searchpath=[file://{configs}]", "strategy=my_method"]
    proc = user_run(src, *command, f"hydra.run.dir={run_dir}")
    results = json.loads((run_dir / "results.json").read_text())
    assert results["finished"] and [t["name"] for t in results["tasks"]] == ["digits", "signs"]
    assert len(results["accuracy_matrix"]) == 2
    assert log.read_text().split() == ["0", "1"]  # the user's add-on ran after each experience
    assert "my_methods.ScaleShift is not one of gift_cl's methods" in proc.stdout + proc.stderr
    assert not (run_dir / "model").exists()  # from_pretrained could not rebuild it: not written
    # resume composes from the command line again and builds from that (the saved file is only compared)
    user_run(src, *command, f"resume={run_dir}")
    assert json.loads((run_dir / "results.json").read_text())["finished"]
    # the saved configuration names the user's target: a tool loading it refuses, naming the target
    with pytest.raises(ConfigError, match=r"strategy.method._target_='my_methods.ScaleShift': not a constructor"):
        load_saved_config(run_dir / "config_resolved.yaml")
    from gift_cl.orchestration.export import export_run

    with pytest.raises(ConfigError, match="my_methods.ScaleShift"):
        export_run(run_dir, tmp_path / "exported")


def test_resume_without_the_users_configs_is_refused(tmp_path, user_package):
    """The saved run names the user's method: a resume whose command line does not compose it differs from it."""
    src, configs, _ = user_package
    run_dir = tmp_path / "run"
    (run_dir).mkdir()
    # a saved run of the user's method, as its start writes it (no training needed for the comparison)
    cfg = compose_cfg(*QUICK[1:], f"hydra.searchpath=[file://{configs}]", "strategy=my_method")
    from omegaconf import OmegaConf

    (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    proc = user_run(src, *QUICK, "strategy=linear", f"resume={run_dir}", check=False)
    assert proc.returncode == 1 and "the configuration differs from the saved run's" in proc.stderr
    assert "strategy.method._target_: 'my_methods.ScaleShift' -> 'gift_cl.methods.LinearProbe'" in proc.stderr


def test_command_line_configs_may_name_the_users_constructors_saved_ones_may_not(user_package, tmp_path):
    from gift_cl.orchestration.validation import validate

    src, configs, _ = user_package
    sys.path.insert(0, str(src))
    try:
        cfg = compose_cfg(*PROCEDURAL, f"hydra.searchpath=[file://{configs}]", "strategy=my_method")
        validate(cfg, command_line=True)
        with pytest.raises(ConfigError, match=r"strategy.method._target_='my_methods.ScaleShift': not a constructor "
                                              r"a configuration may name here"):
            validate(cfg)  # the default: a configuration from elsewhere
        # the user's constructors get the usual argument checks; known ones keep their ranges
        for override, needle in (
                ("+strategy.method.init_scal=2", r"strategy.method.init_scal: not an argument of my_methods.ScaleShift"),
                ("strategy.method.init_scale=abc", r"strategy.method.init_scale='abc': must be a number"),
                ("strategy.method._target_=my_methods.Nope", r"'my_methods.Nope': no such class or function")):
            bad = compose_cfg(*PROCEDURAL, f"hydra.searchpath=[file://{configs}]", "strategy=my_method", override)
            with pytest.raises(ConfigError, match=needle):
                validate(bad, command_line=True)
        with pytest.raises(ConfigError, match=r"generator.num_clusters=0: must be an integer in \[1, 4096\]"):
            validate(compose_cfg(*PROCEDURAL, "strategy=gift", "generator.num_clusters=0"), command_line=True)
        with pytest.raises(ConfigError, match=r"strategy.method.rank=0: must be an integer in \[1, 4096\]"):
            validate(compose_cfg(*PROCEDURAL, "strategy=lora", "strategy.method._target_=gift_cl.methods.lora.LoraMethod",
                                 "strategy.method.rank=0"), command_line=True)  # another name, the same ranges
    finally:
        sys.path.remove(str(src))
        sys.modules.pop("my_methods", None)


def test_a_saved_config_naming_an_importable_user_target_runs_none_of_its_code(tmp_path):
    """Refused before the module is imported: nothing read from disk runs code the command line did not name."""
    marker = tmp_path / "imported"
    (tmp_path / "evil_methods.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass M:\n    pass\n")
    cfg = compose_cfg(*PROCEDURAL, "strategy=linear")
    from omegaconf import OmegaConf

    tree = OmegaConf.to_container(cfg, resolve=True)
    tree["strategy"]["method"] = {"_target_": "evil_methods.M"}
    (tmp_path / "config_resolved.yaml").write_text(OmegaConf.to_yaml(tree))
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(ConfigError, match=r"strategy.method._target_='evil_methods.M': not a constructor"):
            load_saved_config(tmp_path / "config_resolved.yaml")
    finally:
        sys.path.remove(str(tmp_path))
    assert not marker.exists()


# ----------------------------------------------------------------------------- model keys
def test_a_misspelt_model_key_stops_the_run_with_one_line(tmp_path):
    run_dir = tmp_path / "run"
    for override, needle in (
            ("model.chekpoint=x", "Key 'chekpoint' is not in struct"),  # Hydra: the key does not exist
            ("+model.chekpoint=x", "error: BackboneError: model.chekpoint: unknown key (did you mean "
                                   "model.checkpoint?); a model config has only name, pretrained, checkpoint, "
                                   "kwargs, image_size, mean, std")):
        proc = user_run(REPO, *QUICK, "strategy=linear", override, f"hydra.run.dir={run_dir}", check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.count(needle) == 1, proc.stderr
        assert not run_dir.exists()


# ----------------------------------------------------------------------------- resolvers
def test_resolvers_are_registered_explicitly_and_saved_configs_register_their_own(tmp_path):
    from omegaconf import OmegaConf

    from gift_cl.config import PROJECT_RESOLVERS, RESOLVERS
    from gift_cl.orchestration.cli import RESOLVER_NAMES

    assert RESOLVER_NAMES == tuple(RESOLVERS) == PROJECT_RESOLVERS  # cli's torch-free stand-ins: the same names
    tree = OmegaConf.to_container(compose_cfg(*PROCEDURAL, "strategy=linear"), resolve=True)
    tree["model"]["checkpoint"] = "${asset:vit_formula.safetensors}"
    (tmp_path / "config_resolved.yaml").write_text(OmegaConf.to_yaml(tree))
    code = textwrap.dedent(f"""
        from omegaconf import OmegaConf
        import gift_cl.config
        assert not any(OmegaConf.has_resolver(n) for n in ("asset", "backbone_data")), "registered on import"
        cfg = gift_cl.config.load_saved_config({str(tmp_path / "config_resolved.yaml")!r})
        print(cfg.model.checkpoint)
        gift_cl.config.register_resolvers(); gift_cl.config.register_resolvers()  # idempotent
        print(OmegaConf.create({{"a": "${{asset:x}}"}}).a)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split()
    assert lines[0].endswith("gift_cl/assets/vit_formula.safetensors") and lines[1].endswith("gift_cl/assets/x")


def test_a_users_method_file_joins_the_matrix(tmp_path, user_package):
    """``my_configs/method/my_method.yaml`` on the search path: the user's method in any protocol, with the
    shipped cl plugins, named as the shipped methods are."""
    import sys as _sys

    from gift_cl.orchestration.validation import validate

    src, configs, _ = user_package
    _sys.path.insert(0, str(src))
    try:
        cfg = compose_cfg(f"hydra.searchpath=[file://{configs}]", "method=my_method", "protocol=sequential", "cl=ewc")
        validate(cfg, command_line=True)
    finally:
        _sys.path.remove(str(src))
        _sys.modules.pop("my_methods", None)
    assert cfg.strategy.method._target_ == "my_methods.ScaleShift"
    assert cfg.strategy.name == "my_method_multitask_ewc"
    assert list(cfg.strategy.plugins) == ["ewc"]
