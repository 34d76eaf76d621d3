import os

# Before anything imports huggingface_hub: a hub miss would otherwise cost ~60 s of retries.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("GIFT_CL_CACHE", os.path.join(os.path.dirname(__file__), "..", ".cache", "gift_cl"))

import torch

# one thread per pytest-xdist worker (`make test` runs one worker per core, up to 4), two in a plain `pytest` run
torch.set_num_threads(int(os.environ.get("GIFT_CL_TEST_THREADS", "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2")))

from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
