"""orchestration.results: ``results.csv`` has every task's train time in every protocol."""
import csv
from types import SimpleNamespace

import pytest

from runs import compose_cfg


@pytest.mark.parametrize("protocol, seconds, expected", [
    ("sequential", [3.5, 4.25], [3.5, 4.25]),  # experience i trains task i
    ("independent", [3.5, 4.25], [3.5, 4.25]),  # each task's own model
    ("joint", [9.0], [9.0, 9.0]),  # one experience trains every task: its time on every row
    ("sequential", [3.5], [3.5, None]),  # unfinished: the second task is not trained yet
])
def test_train_time_per_task_in_every_protocol(tmp_path, protocol, seconds, expected):
    from gift_cl.orchestration.results import write_results
    from gift_cl.protocols import get_protocol

    assert get_protocol(protocol).experience_times(seconds, 2) == expected
    strategy = {"sequential": "gift_multitask", "independent": "gift", "joint": "gift_joint"}[protocol]
    cfg = compose_cfg(f"strategy={strategy}")
    tasks = [SimpleNamespace(name=n, num_classes=k, train=[0] * 4, test=[0] * 2, info={})
             for n, k in (("digits", 10), ("signs", 43))]
    rows = {"sequential": [[0.5], [0.4, 0.6]][:len(seconds)], "independent": [[0.5], [0.6]][:len(seconds)],
            "joint": [[0.5, 0.6]]}[protocol]
    params = {"per_task": 100, "per_task_excl_classifier": 90, "backbone": 1000}
    progress = {"position": len(seconds), "matrix": rows, "time_s": seconds, "params": [params] * len(seconds)}
    counts = {"per_task": {0: 100, 1: 120}, "per_task_excl_classifier": {0: 90, 1: 90}, "shared": 50, "total": 270,
              "backbone": 1000}
    write_results(cfg, tmp_path, tasks, progress, None if protocol == "independent" else counts, None, final=False)
    with open(tmp_path / "results.csv") as f:
        times = [r["train_time_s"] for r in csv.DictReader(f)]
    assert times == ["" if t is None else str(t) for t in expected]
