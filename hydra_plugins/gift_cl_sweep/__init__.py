"""gift_cl's Hydra launcher: ``python run.py -m ...`` runs its grid through the sweep runner
(:mod:`gift_cl.orchestration.sweep`). Lives in Hydra's ``hydra_plugins`` namespace, where Hydra looks for launchers."""
