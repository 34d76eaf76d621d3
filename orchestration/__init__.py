"""Orchestration: the one run loop over every method and protocol (entry point → here → strategies → core)."""
if __name__ == "orchestration":  # a checkout's short name: the installed package (gift_cl.short_names)
    from gift_cl.short_names import alias_package

    alias_package(__name__, "gift_cl.orchestration")

