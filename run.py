"""Entry point: ``python run.py strategy=gift_multitask benchmark=vdd`` (Hydra; ``-m`` for sweeps).
The installed console script ``gift-cl`` is the same command."""
from gift_cl.orchestration.cli import main

if __name__ == "__main__":
    main()
