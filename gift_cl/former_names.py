"""The names files written by earlier versions of gift_cl use, read as today's: saved configurations
(constructor paths and arguments) and saved states (state-dict keys). Every reader of a run directory, a
checkpoint or a saved model goes through here, so a renamed class or key never strands a finished run.

A leaf module: it imports nothing from gift_cl, so any module may use it.
"""
from __future__ import annotations

from typing import Any

# the names a checkout's short package names gave constructors in configurations saved before they were
# installed as gift_cl's subpackages (gift_cl.short_names): read as the installed names
SHORT_TARGET_PREFIXES = {"strategies.": "gift_cl.strategies.", "orchestration.": "gift_cl.orchestration."}
# constructors that moved: ArtiHippo's model and search plugin into the method's package, gift_cl.methods.artihippo
FORMER_TARGETS = {"gift_cl.artihippo.ArtiHippo": "gift_cl.methods.ArtiHippo",
                  "gift_cl.artihippo.ArtiHippoSearch": "gift_cl.methods.artihippo.ArtiHippoSearch",
                  "gift_cl.strategies.artihippo.ArtiHippoSearch": "gift_cl.methods.artihippo.ArtiHippoSearch"}
# arguments of this project's constructors saved under a former name: read under the current one
FORMER_ARGUMENTS = {"plugins": "addons"}  # a method's model add-ons (GIST, Coeff-Tuning)
# the model add-ons' state-dict prefix (``model_addons.``) in checkpoints and saved models written before
FORMER_ADDON_PREFIX = "model_plugins."


def current_target(target: str) -> str:
    """A saved ``_target_`` under the name it has now."""
    for short, full in SHORT_TARGET_PREFIXES.items():
        if target.startswith(short):
            target = full + target[len(short):]
    return FORMER_TARGETS.get(target, target)


def installed_target_names(node: Any) -> Any:
    """``node`` (a plain configuration tree) in the names the installed package uses: every ``_target_`` under
    its current name (:func:`current_target`), and a ``gift_cl`` constructor's arguments saved under a former
    name (:data:`FORMER_ARGUMENTS`) under the current one."""
    if isinstance(node, dict):
        renamed = {key: installed_target_names(value) for key, value in node.items()}
        target = renamed.get("_target_")
        if isinstance(target, str):
            renamed["_target_"] = current_target(target)
            if renamed["_target_"].startswith("gift_cl."):
                for former, current in FORMER_ARGUMENTS.items():
                    if former in renamed and current not in renamed:
                        renamed[current] = renamed.pop(former)
        return renamed
    if isinstance(node, list):
        return [installed_target_names(value) for value in node]
    return node


def read_former_addon_keys(state_dict, prefix: str = "", *_ignored) -> None:
    """Rename, in place, a state's add-on keys saved under their former prefix to ``model_addons.`` (run
    checkpoints resume, saved models load; the tensors are the same). Also a load_state_dict pre-hook."""
    former = prefix + FORMER_ADDON_PREFIX
    for key in [k for k in state_dict if k.startswith(former)]:
        state_dict[prefix + "model_addons." + key[len(former):]] = state_dict.pop(key)
