"""Avalanche strategies and plugins: the one template every method and protocol trains with."""
if __name__ == "strategies":  # a checkout's short name: the installed package (gift_cl.short_names)
    from gift_cl.short_names import alias_package

    alias_package(__name__, "gift_cl.strategies")

from .template import DivergenceError, TaskAwareStrategy

__all__ = ["DivergenceError", "TaskAwareStrategy"]
