"""Every shipped strategy config composes, validates, and runs the protocol its name promises; the joint preset
keeps its own learning rate and an explicit choice on the command line still wins."""
from pathlib import Path

import pytest

from gift_cl.orchestration.validation import validate

from runs import REPO, compose_cfg

STRATEGIES = sorted(p.stem for p in (REPO / "configs" / "strategy").glob("*.yaml"))
# methods whose home protocol is class_incremental
CLASS_INCREMENTAL = ("simplecil", "ranpac", "gift_aper", "l2p", "dualprompt", "coda_prompt", "inflora", "er_ace", "derpp")
GIFT_TARGETS = ("gift_cl.methods.GiftMethod", "gift_cl.methods.GiftAper")


@pytest.mark.parametrize("name", STRATEGIES)
def test_strategy_config_composes_and_validates(name):
    cfg = compose_cfg(f"strategy={name}")
    validate(cfg)
    assert cfg.strategy.name == name
    expected = ("joint" if name.endswith("_joint") else
                "sequential" if name.endswith("_multitask") or name in ("naive", "ewc", "lwf", "replay")
                or name.startswith("artihippo") else
                "class_incremental" if name.endswith("_cil") or name in CLASS_INCREMENTAL else "independent")
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
    gift = str(cfg.strategy.method._target_) in GIFT_TARGETS
    assert ("generator" in cfg) == gift
    if gift:
        assert compose_cfg(f"strategy={name}", "generator=linear").strategy.method.config.rank == 16
    else:
        with pytest.raises(ConfigCompositionException, match="generator"):
            compose_cfg(f"strategy={name}", "generator=linear")


METHODS = sorted(p.stem for p in (REPO / "configs" / "method").glob("*.yaml"))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("protocol", ["independent", "sequential", "joint", "class_incremental"])
def test_every_method_composes_in_every_protocol_and_is_named_by_both(method, protocol):
    cfg = compose_cfg(f"method={method}", f"protocol={protocol}")
    validate(cfg)
    assert cfg.strategy.protocol == protocol
    home = ("sequential" if method == "naive" or method.startswith("artihippo") else
            "class_incremental" if method in CLASS_INCREMENTAL else "independent")
    suffix = {"independent": "_independent", "sequential": "_multitask", "joint": "_joint",
              "class_incremental": "_cil"}[protocol]
    assert cfg.strategy.name == (method if protocol == home else method + suffix)


def test_a_named_combination_is_its_parts():
    """``strategy=<name>`` is a method, a protocol and cl plugins: the same configuration as the parts."""
    from omegaconf import OmegaConf

    def same(a, b):
        return OmegaConf.to_container(a, resolve=True) == OmegaConf.to_container(b, resolve=True)

    assert same(compose_cfg("strategy=lora_multitask"), compose_cfg("method=lora", "protocol=sequential"))
    assert same(compose_cfg("strategy=ewc"), compose_cfg("method=naive", "protocol=sequential", "cl=ewc"))
    assert same(compose_cfg(), compose_cfg("method=gift", "protocol=sequential"))  # the default run


def test_cl_plugins_are_named_combine_and_name_the_run():
    cfg = compose_cfg("method=lora", "protocol=sequential", "cl=[ewc,replay]")
    validate(cfg)
    assert list(cfg.strategy.plugins) == ["ewc", "replay"]
    assert cfg.strategy.plugins.replay._target_ == "gift_cl.strategies.plugins.Replay"
    assert cfg.strategy.name == "lora_multitask_ewc_replay"
    assert compose_cfg("strategy=replay", "cl=lwf").strategy.name == "lwf"  # the command line's choice wins
    assert "plugins" not in compose_cfg("strategy=lora").strategy  # cl=none: no Avalanche plugin
    artihippo = compose_cfg("strategy=artihippo", "cl=ewc")
    assert list(artihippo.strategy.plugins) == ["ewc", "artihippo_search"]
    assert artihippo.strategy.name == "artihippo_ewc"  # the method's own plugin does not name the run


def test_the_accelerator_group_sets_device_and_precision_and_keys_still_win():
    assert (compose_cfg().device, compose_cfg().precision, compose_cfg().compile) == ("auto", "fp32", False)
    cfg = compose_cfg("accelerator=gpu_bf16")
    assert (cfg.device, cfg.precision, cfg.compile, cfg.tf32) == ("cuda", "bf16", True, True)
    assert compose_cfg("accelerator=gpu", "device=cuda:1").device == "cuda:1"
    assert compose_cfg("device=cpu").device == "cpu"


def test_method_files_hold_one_target_and_no_protocol():
    """A method file says what the model is, never which protocol it runs in or which cl plugins it takes."""
    import yaml

    for name in METHODS:
        node = yaml.safe_load((REPO / "configs" / "method" / f"{name}.yaml").read_text())
        strategy = node.get("strategy", {})
        assert "protocol" not in strategy and "task_inference" not in strategy, name
        assert set(strategy.get("plugins") or {}) <= {"artihippo_search"}, name
