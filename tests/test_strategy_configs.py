"""Every shipped strategy config composes, validates, and runs the protocol its name promises; the joint preset
keeps its own learning rate and an explicit choice on the command line still wins."""
from pathlib import Path

import pytest

from orchestration.validation import validate

from runs import REPO, compose_cfg

STRATEGIES = sorted(p.stem for p in (REPO / "configs" / "strategy").glob("*.yaml"))


@pytest.mark.parametrize("name", STRATEGIES)
def test_strategy_config_composes_and_validates(name):
    cfg = compose_cfg(f"strategy={name}")
    validate(cfg)
    assert cfg.strategy.name == name
    expected = ("joint" if name.endswith("_joint") else
                "sequential" if name.endswith("_multitask") or name in ("naive", "ewc", "lwf", "replay")
                or name.startswith("artihippo") else "independent")
    assert cfg.strategy.protocol == expected


def test_joint_preset_has_its_own_learning_rate_and_the_command_line_wins():
    assert compose_cfg("strategy=gift_multitask").optim.lr == pytest.approx(1e-2)
    assert compose_cfg("strategy=gift_joint").optim.lr == pytest.approx(3e-3)
    assert compose_cfg("strategy=gift_joint", "optim.lr=1e-3").optim.lr == pytest.approx(1e-3)
    assert compose_cfg("strategy=gift_joint", "optim=paper").optim.lr == pytest.approx(1e-4)
    assert Path(REPO / "gift_cl" / "configs" / "strategy" / "gift_joint.yaml").is_file()  # shipped with the package


@pytest.mark.parametrize("name", STRATEGIES)
def test_only_gift_configs_carry_a_generator(name):
    """The generator group belongs to GIFT: a run of another method has no ``generator`` key (nothing to tell
    runs apart by, nothing to compare on resume), and ``generator=...`` with it is refused by name."""
    from hydra.errors import ConfigCompositionException

    cfg = compose_cfg(f"strategy={name}")
    gift = str(cfg.strategy.method._target_) == "gift_cl.methods.GiftMethod"
    assert ("generator" in cfg) == gift
    if gift:
        assert compose_cfg(f"strategy={name}", "generator=linear").strategy.method.config.rank == 16
    else:
        with pytest.raises(ConfigCompositionException, match="generator"):
            compose_cfg(f"strategy={name}", "generator=linear")
