"""Entry point: ``python run.py strategy=gift benchmark=procedural_single`` (Hydra; ``-m`` for sweeps)."""
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import gift_cl.config  # noqa: F401  (registers the ${asset:...} resolver)


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> float:
    from gift_cl.runner import run

    results = run(cfg, Path(HydraConfig.get().runtime.output_dir))
    return results["average_accuracy"]  # the value a sweeper optimises


if __name__ == "__main__":
    main()
