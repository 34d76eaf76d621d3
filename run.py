"""Entry point: ``python run.py strategy=gift_multitask benchmark=vdd`` (Hydra; ``-m`` for sweeps)."""
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import gift_cl.config  # noqa: F401  (registers the ${asset:...} resolver)


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> float:
    from orchestration.cli import run, user_error

    try:
        results = run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except Exception as exc:
        err = user_error(exc)
        if err is None:
            raise
        # one clear line, no traceback: the message names what is wrong and what was expected
        logging.getLogger("gift_cl").error("%s: %s", type(err).__name__, err)
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        sys.exit(1)
    return results["average_accuracy"]  # the value a sweeper optimises


if __name__ == "__main__":
    main()
