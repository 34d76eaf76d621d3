"""gift_cl.short_names: in a checkout, ``strategies``, ``orchestration`` and ``analysis`` are the installed
``gift_cl.strategies`` / ``gift_cl.orchestration`` / ``gift_cl.analysis`` under a second name (the very same
module objects, in either import order); configurations saved with the short names load and resume; the
analysis tools are ``gift-cl`` subcommands."""
import subprocess
import sys

import pytest
import yaml
from omegaconf import OmegaConf

from runs import REPO, compose_cfg, env

SAME_OBJECTS = """
import importlib, sys
names = {names!r}
first = [importlib.import_module(n) for n in names]
second = [importlib.import_module(n.removeprefix("gift_cl.") if n.startswith("gift_cl.") else "gift_cl." + n)
          for n in names]
assert all(a is b for a, b in zip(first, second)), [(a, b) for a, b in zip(first, second) if a is not b]
# no module was executed twice: every short-name entry is an installed module
short = [n for n in sys.modules if n.split(".")[0] in ("strategies", "orchestration", "analysis")]
assert short and all(sys.modules[n] is sys.modules["gift_cl." + n] for n in short), short
assert all(m.__spec__.name.startswith("gift_cl.") for m in first + second)  # their own specs, not the alias's
from strategies.template import TaskAwareStrategy
from gift_cl.strategies import TaskAwareStrategy as Installed
assert TaskAwareStrategy is Installed
print("ok")
"""


@pytest.mark.parametrize("names", [
    ("strategies.plugins", "orchestration.loop", "analysis.compare", "orchestration"),  # short names first
    ("gift_cl.orchestration.rundir", "gift_cl.strategies.replay_cil", "gift_cl.analysis.summarize"),  # installed first
])
def test_short_names_are_the_installed_modules(names):
    proc = subprocess.run([sys.executable, "-c", SAME_OBJECTS.format(names=names)], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


@pytest.mark.parametrize("module", ["orchestration.sweep", "analysis.summarize"])  # the installed names: test_packaging
def test_python_m_runs_a_tool_by_either_name(module):
    proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, env=env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.startswith("usage:"), proc.stderr[-3000:]
    assert "RuntimeWarning" not in proc.stderr  # runpy: the module was not imported before it ran


def test_gift_cl_subcommands_are_the_tools(monkeypatch, capsys):
    from gift_cl.orchestration.cli import TOOLS, main

    for name in TOOLS:
        monkeypatch.setattr(sys, "argv", ["gift-cl", name, "--help"])
        with pytest.raises(SystemExit) as stop:
            main()
        assert stop.value.code == 0, name
        assert capsys.readouterr().out.startswith("usage:"), name


def test_a_config_saved_with_short_names_loads_and_resumes_as_installed(tmp_path):
    """A run saved when its plugins were named ``strategies.plugins.Replay`` reads back as the installed names,
    so loading it (the analysis tools, export) and resuming it (the config comparison) both accept it."""
    from gift_cl.config import load_saved_config
    from gift_cl.orchestration.rundir import config_differences, saved_config

    cfg = compose_cfg("benchmark=procedural", "benchmark.n_train=8", "benchmark.n_test=8",
                      "benchmark.domains=[digits,pedestrians]", "strategy=replay")
    current = OmegaConf.to_container(cfg, resolve=True)
    assert current["strategy"]["plugins"]["replay"]["_target_"] == "gift_cl.strategies.plugins.Replay"
    old = yaml.safe_load(OmegaConf.to_yaml(cfg, resolve=True))
    old["strategy"]["plugins"]["replay"]["_target_"] = "strategies.plugins.Replay"
    (tmp_path / "config_resolved.yaml").write_text(yaml.safe_dump(old))

    loaded = load_saved_config(tmp_path / "config_resolved.yaml")
    assert loaded.strategy.plugins.replay._target_ == "gift_cl.strategies.plugins.Replay"
    assert config_differences(saved_config(tmp_path), current) == []
