"""Orchestration: the one run loop over every method and protocol (entry point → here → strategies → core)."""
