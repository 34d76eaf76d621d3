"""Avalanche strategies and plugins: the one template every method and protocol trains with."""
from .template import DivergenceError, TaskAwareStrategy

__all__ = ["DivergenceError", "TaskAwareStrategy"]
