"""gift_cl.former_names: what earlier versions wrote reads as today's names, and nothing else changes."""
import torch

from gift_cl.former_names import current_target, installed_target_names, read_former_addon_keys


def test_targets_read_under_their_current_names():
    assert current_target("strategies.plugins.EWC") == "gift_cl.strategies.plugins.EWC"
    assert current_target("orchestration.loop.run") == "gift_cl.orchestration.loop.run"
    assert current_target("gift_cl.artihippo.ArtiHippo") == "gift_cl.methods.ArtiHippo"
    assert current_target("strategies.artihippo.ArtiHippoSearch") == "gift_cl.methods.artihippo.ArtiHippoSearch"
    for name in ("gift_cl.methods.ArtiHippo", "gift_cl.methods.LoraMethod", "my_package.Method", "avalanche.training.plugins.EWCPlugin"):
        assert current_target(name) == name


def test_former_arguments_are_renamed_for_gift_cl_constructors_only():
    saved = {"method": {"_target_": "gift_cl.methods.LoraMethod", "rank": 4, "plugins": {"gist": {"x": 1}}},
             "mine": {"_target_": "my_package.Method", "plugins": [1]},
             "both": {"_target_": "gift_cl.methods.BitFit", "plugins": {}, "addons": {"a": 1}},
             "list": [{"_target_": "strategies.plugins.Replay"}, 3]}
    read = installed_target_names(saved)
    assert read["method"] == {"_target_": "gift_cl.methods.LoraMethod", "rank": 4, "addons": {"gist": {"x": 1}}}
    assert read["mine"] == saved["mine"]  # a user's constructor keeps its own arguments
    assert read["both"] == saved["both"]  # the current name wins; nothing is overwritten
    assert read["list"] == [{"_target_": "gift_cl.strategies.plugins.Replay"}, 3]
    assert saved["method"]["plugins"] == {"gist": {"x": 1}}  # the input is not modified


def test_former_addon_keys_are_renamed_in_place_under_a_prefix():
    tensor = torch.ones(2)
    state = {"model_plugins.gist.w": tensor, "backbone.w": tensor, "sub.model_plugins.coeff.b": tensor}
    read_former_addon_keys(state)
    assert sorted(state) == ["backbone.w", "model_addons.gist.w", "sub.model_plugins.coeff.b"]
    read_former_addon_keys(state, "sub.")
    assert sorted(state) == ["backbone.w", "model_addons.gist.w", "sub.model_addons.coeff.b"]
    assert state["model_addons.gist.w"] is tensor
