"""Analysis tools: result tables and paired comparisons (``compare``, ``summarize``), interpretability
(``cluster_maps``, ``concept_reuse``), evidence probes and benchmarks. Installed as ``gift_cl.analysis``: run one
as ``python -m gift_cl.analysis.compare ...`` or ``gift-cl compare ...``; in a checkout ``python analysis/compare.py``
works as well."""
if __name__ == "analysis":  # a checkout's short name: the installed package (gift_cl.short_names)
    from gift_cl.short_names import alias_package

    alias_package(__name__, "gift_cl.analysis")
