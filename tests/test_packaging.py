"""The package installs like a library: ``pip install .`` ships the code, the configs and the backbone, and the
``gift-cl`` console script is ``python run.py``."""
import subprocess
import sys

from runs import REPO


def test_installed_package_runs_the_console_script(tmp_path):
    site = tmp_path / "site"
    # dependencies come from the test environment; this checks what the wheel itself carries
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(REPO)],
                   check=True, timeout=900, capture_output=True)
    for shipped in ("gift_cl/configs/config.yaml", "gift_cl/configs/strategy/gift_multitask.yaml",
                    "gift_cl/configs/experiment/vtab_gift.yaml", "gift_cl/assets/vit_formula.safetensors",
                    "gift_cl/assets/vit_formula.json", "gift_cl/assets/vit_procedural.safetensors",
                    "gift_cl/orchestration/cli.py", "gift_cl/strategies/template.py", "gift_cl/analysis/compare.py"):
        assert (site / shipped).is_file(), shipped
    # nothing generic at the top of site-packages: only gift_cl and Hydra's plugin namespace
    assert {p.name for p in site.iterdir() if p.is_dir() and not p.name.endswith(".dist-info")} == \
        {"gift_cl", "hydra_plugins", "bin"}
    env = {"PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, str(site / "bin" / "gift-cl"), "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the help lists every shipped strategy config (read from the installed package, not a fixed list)
    listed = next(line for line in proc.stdout.splitlines() if line.startswith("strategy: "))
    shipped_strategies = sorted(p.stem for p in (site / "gift_cl/configs/strategy").glob("*.yaml"))
    assert listed.removeprefix("strategy: ").split(", ") == shipped_strategies
    assert {"gift_multitask", "artihippo", "lora_multitask"} <= set(shipped_strategies)
    # the installed copy, not the checkout, is what ran
    proc = subprocess.run([sys.executable, "-c", "import gift_cl.orchestration as o; print(o.__file__)"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.stdout.startswith(str(site)), proc.stdout
    # the analysis tools run from the wheel: as gift-cl subcommands and as modules
    proc = subprocess.run([sys.executable, str(site / "bin" / "gift-cl"), "compare", "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: gift-cl compare"), proc.stderr[-3000:]
    proc = subprocess.run([sys.executable, "-m", "gift_cl.analysis.summarize", "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr[-3000:]
