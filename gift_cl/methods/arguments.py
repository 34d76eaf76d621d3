"""Remembering what a method or add-on was built with, so that a saved model can be rebuilt.

``save_pretrained`` writes a model's constructor call as a configuration node (``{"_target_": ..., arg: value}``)
and ``from_pretrained`` instantiates that node through the same allowlist a saved run's configuration goes
through (:mod:`gift_cl.config`). A model built from Python (``GiftMethod(vit, GiftConfig.paca())``) has no
configuration to copy, so every :class:`TaskAwareModel` and :class:`ModelAddon` records the arguments of its
outermost constructor call here: the values it was really built with, defaults included, whoever called it
(Hydra or a user). The backbone (a plain ``nn.Module`` argument) is left out: it is the model's input, not its
configuration. Nothing is copied: the record holds the very objects passed (a ``GiftConfig``, the add-ons),
so ``copy.deepcopy`` of a model keeps its record consistent.
"""
from __future__ import annotations

import functools
import inspect

from torch import nn

_RECORD = "_gift_cl_constructor_arguments"
_DEPTH = "_gift_cl_constructor_depth"


class RecordsArguments:
    """Mixin: ``constructor_arguments()`` returns ``{parameter: value}`` of the outermost ``__init__`` call."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _recording(cls.__dict__["__init__"])

    def after_init(self, arguments: dict) -> None:
        """Called once the outermost constructor has returned, with its arguments: what every subclass must do
        after building itself (a base class's hook, so no subclass has to remember it)."""

    def constructor_arguments(self) -> dict:
        """The arguments this object was constructed with (``self`` and the backbone left out), in signature
        order."""
        return dict(self.__dict__.get(_RECORD, {}))


def _recording(init):
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        # written straight into __dict__: nn.Module.__init__ has not run yet on the outermost call
        depth = self.__dict__.get(_DEPTH, 0)
        self.__dict__[_DEPTH] = depth + 1
        try:
            init(self, *args, **kwargs)
        finally:
            self.__dict__[_DEPTH] = depth
        if depth == 0:  # the outermost constructor: what the caller asked for
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            arguments.pop(next(iter(signature.parameters)))  # self
            self.__dict__[_RECORD] = {k: v for k, v in arguments.items()
                                      if not (isinstance(v, nn.Module) and not isinstance(v, RecordsArguments))}
            del self.__dict__[_DEPTH]
            self.after_init(arguments)

    return __init__


__all__ = ["RecordsArguments"]
