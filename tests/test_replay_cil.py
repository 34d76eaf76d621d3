"""The replay-based class-incremental references (strategies/replay_cil.py): ER-ACE and DER++ as plugins of our
strategy. They run in ``protocol=class_incremental``, resume exactly (between experiences and killed in the middle
of one), their loss is Avalanche's (``ACECriterion``; ``DER.training_epoch``'s formula) on the same batches, and
(slow) they learn."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from avalanche.training.regularization import ACECriterion
from torch import nn

from gift_cl.methods import SharedBackbone
from gift_cl.orchestration.loop import CHECKPOINT, Run
from gift_cl.strategies.replay_cil import DERPP, ERACE

from runs import PROCEDURAL, TINY, compose_cfg, run_in_process, stop_then_restore, tiny_vit

CIL = [*TINY, *PROCEDURAL, "benchmark.domains=[digits,signs,pedestrians]", "checkpoint_every=0"]
# a buffer smaller than the data (48 images a task), so reservoir sampling and the class balance are exercised
STRATEGIES = {"er_ace": ["strategy=er_ace", "strategy.plugins.er_ace.mem_size=60"],
              "derpp": ["strategy=derpp", "strategy.plugins.derpp.mem_size=60"]}
KEYS = ("class_incremental", "accuracy_matrix", "final_accuracy", "forgetting")


def _plugin(run: Run, cls):
    return next(p for p in run.strategy.plugins if isinstance(p, cls))


def test_named_combinations():
    for name, cls in (("er_ace", "ERACE"), ("derpp", "DERPP")):
        cfg = compose_cfg(f"strategy={name}")
        assert cfg.strategy.name == name and cfg.strategy.protocol == "class_incremental"
        assert cfg.strategy.method._target_ == "gift_cl.methods.SharedBackbone"
        assert cfg.strategy.plugins[name]._target_ == f"gift_cl.strategies.replay_cil.{cls}"
        # the parts, another method: named by the resolver
        assert compose_cfg("method=linear", "protocol=class_incremental", f"cl={name}").strategy.name == \
            f"linear_cil_{name}"


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_runs_class_incrementally_and_resumes_exactly_between_experiences(tmp_path, name):
    def make(d):
        return Run(compose_cfg(*CIL, *STRATEGIES[name]), d)

    full = make(tmp_path / "full")
    full.train_and_evaluate()
    expected = full.write_results(final=True)
    assert expected["strategy"] == name and expected["finished"]
    assert [len(r) for r in expected["class_incremental"]["accuracy_matrix"]] == [1, 2, 3]

    # the buffer: 60 slots over the 55 classes seen, class-balanced, each slot its global class
    plugin = _plugin(full, ERACE if name == "er_ace" else DERPP)
    policy = plugin.storage_policy
    assert len(policy) == 60 and sorted(policy.seen_classes) == list(range(55))
    assert {c: len(g.refs) for c, g in policy.buffer_groups.items()} == {c: 2 if c < 5 else 1 for c in range(55)}
    offsets = full.model.class_offsets()
    refs, labels, logits = policy.flat()
    stream = full.stream.train_stream
    for (e, i), c in zip(refs.tolist(), labels.tolist()):
        _, y, t = stream[e].dataset[i]
        assert offsets[int(t)] + int(y) == c
    if name == "derpp":  # logits over the classes seen when the sample went in (digits 10, signs 43, pedestrians 2)
        width = {0: 10, 1: 53, 2: 55}
        stored = (~torch.isnan(logits)).sum(1)
        assert [int(n) for n in stored] == [width[int(e)] for e, _ in refs.tolist()]

    _, resumed = stop_then_restore(make, tmp_path / "stopped")  # the process dies after the first stage
    checkpoint = torch.load(tmp_path / "stopped" / CHECKPOINT, weights_only=True)  # tensors and plain containers
    assert ("ERACE" if name == "er_ace" else "DERPP") in checkpoint["plugins"]
    resumed.train_and_evaluate()
    got = resumed.write_results(final=True)
    for key in KEYS:
        assert got[key] == expected[key], key


class _Killed(Exception):
    pass


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_killed_mid_experience_resumes_exactly(tmp_path, name):
    """Killed after the first epoch of the second experience (replay in use, half a pass over the buffer drawn):
    the resumed run ends with the uninterrupted numbers."""
    def make(d):
        return Run(compose_cfg(*CIL, *STRATEGIES[name], "optim.epochs=2", "checkpoint_every=1"), d)

    full = make(tmp_path / "full")
    full.train_and_evaluate()
    expected = full.write_results(final=True)

    stopped = make(tmp_path / "stopped")
    saver = next(p for p in stopped.strategy.plugins if type(p).__name__ == "EpochCheckpointPlugin")
    save = saver.save
    plugin = _plugin(stopped, ERACE if name == "er_ace" else DERPP)
    seen = {}

    def save_then_die(strategy, epochs_done):
        save(strategy, epochs_done=epochs_done)
        if stopped.progress["position"] == 1:
            seen.update(active=plugin.active, pos=plugin.pos)
            raise _Killed

    saver.save = save_then_die
    with pytest.raises(_Killed):
        stopped.train_and_evaluate()
    assert seen["active"] and seen["pos"] > 0
    resumed = make(tmp_path / "stopped")
    resumed.restore(tmp_path / "stopped" / CHECKPOINT)
    assert resumed.progress["position"] == 1
    resumed.train_and_evaluate()
    got = resumed.write_results(final=True)
    for key in KEYS:
        assert got[key] == expected[key], key


# ----------------------------------------------------------------------------- the loss is Avalanche's
def _step(plugin, buffer_logits=None):
    """One step of task 1 (4 classes) after task 0 (3 classes) on a shared backbone: the strategy's forward and
    per-task CE, then the plugin's ``before_backward`` with a given buffer batch. Returns the strategy, the buffer
    batch and the total loss."""
    torch.manual_seed(0)
    model = SharedBackbone(tiny_vit(seed=1, training=True))
    model.add_task(0, 3)
    model.add_task(1, 4)
    model.begin_task([1])
    x, y = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 1, 3, 0, 1])  # class 2 of the task absent
    xb, yb = torch.randn(5, 3, 32, 32), torch.tensor([0, 2, 4, 6, 1])   # global labels, both tasks
    strategy = SimpleNamespace(model=model, mb_x=x, mb_y=y, mb_task_id=torch.ones(6, dtype=torch.long),
                               experience=SimpleNamespace(task_labels=[1], current_experience=1),
                               _criterion=nn.CrossEntropyLoss(), device="cpu", train_mb_size=6)
    if isinstance(plugin, DERPP):
        DERPP._prepare(plugin, strategy, 1)  # the feature hook of the current head
    plugin.before_forward(strategy)
    strategy.mb_output = model(x, 1)
    plugin.after_forward(strategy)
    strategy.loss = strategy._criterion(strategy.mb_output, y)
    plugin.active = True
    plugin.draw = lambda s: (xb, yb, buffer_logits)
    plugin.before_backward(strategy)
    return strategy, (x, y, xb, yb)


def _grads(model, loss):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params, retain_graph=True)


def _one_head(model, x):
    """Avalanche's model: one head over every class seen (the heads side by side)."""
    return torch.cat([model.classifiers[str(t)](model.backbone(x)) for t in (0, 1)], dim=1)


def test_er_ace_loss_is_avalanches_ace_criterion():
    strategy, (x, y, xb, yb) = _step(ERACE())
    model = strategy.model
    # ER_ACE.training_epoch: loss = ACECriterion()(mb_output, mb_y, mb_buffer_out, mb_buffer_y), one head, global ids
    expected = ACECriterion()(_one_head(model, x), y + 3, _one_head(model, xb), yb)
    assert strategy.loss.item() == pytest.approx(expected.item(), rel=1e-6, abs=1e-6)
    for a, b in zip(_grads(model, strategy.loss), _grads(model, expected)):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("current_ce", ["seen", "task"])
def test_derpp_loss_is_avalanches_der_formula(current_ce):
    stored = torch.randn(5, 3)  # logits of task 0's 3 classes, stored when task 0 ended
    plugin = DERPP(alpha=0.3, beta=0.7, current_ce=current_ce)
    strategy, (x, y, xb, yb) = _step(plugin, stored)
    model = strategy.model
    out, out_buf = _one_head(model, x), _one_head(model, xb)
    # DER.training_epoch: CE(current) + alpha * MSE(buffer output, stored logits) + beta * CE(buffer)
    current = F.cross_entropy(out, y + 3) if current_ce == "seen" else F.cross_entropy(out[:, 3:], y)
    expected = current + 0.3 * F.mse_loss(out_buf[:, :3], stored) + 0.7 * F.cross_entropy(out_buf, yb)
    assert strategy.loss.item() == pytest.approx(expected.item(), rel=1e-6, abs=1e-6)
    for a, b in zip(_grads(model, strategy.loss), _grads(model, expected)):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_derpp_mse_averages_over_the_stored_columns():
    """Samples stored at different stages have logits of different widths (NaN-padded): the MSE is over the stored
    entries, Avalanche's ``F.mse_loss`` when the widths agree."""
    stored = torch.randn(5, 7)
    stored[:2, 3:] = float("nan")  # two samples from the first stage (3 classes), three from the second (7)
    plugin = DERPP(alpha=1.0, beta=0.0, current_ce="task")
    strategy, (x, y, xb, yb) = _step(plugin, stored)
    out_buf = _one_head(strategy.model, xb)
    mask = ~torch.isnan(stored)
    mse = ((out_buf - stored.nan_to_num()) ** 2)[mask].sum() / mask.sum()
    expected = F.cross_entropy(strategy.mb_output, y) + mse
    assert strategy.loss.item() == pytest.approx(expected.item(), rel=1e-6, abs=1e-6)


def test_buffer_batches_cycle_like_avalanches_loader():
    """``cycle(DataLoader(buffer, shuffle=True, drop_last=True))``: consecutive slices of a permutation, a new
    permutation when fewer than a batch remain; every slot once per pass."""
    plugin = ERACE(mem_size=10, batch_size_mem=3)
    plugin.storage_policy.add_experience(0, [0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1], plugin.generator)
    assert len(plugin.storage_policy) == 10
    plugin._stream = [SimpleNamespace(dataset=[(torch.full((1,), float(i)), 0, 0) for i in range(12)])]
    strategy = SimpleNamespace(device="cpu", train_mb_size=3)
    refs = plugin.storage_policy.flat()[0][:, 1]
    batches = [plugin.draw(strategy)[0].flatten().long() for _ in range(6)]
    first, second = torch.cat(batches[:3]), torch.cat(batches[3:])
    assert len(set(first.tolist())) == 9 and set(first.tolist()) <= set(refs.tolist())  # one slot left out
    assert len(set(second.tolist())) == 9
    assert plugin.pos == 9


# ----------------------------------------------------------------------------- learning (slow)
@pytest.mark.slow  # ~11 min on 2 shared cores (three runs): pytest -m slow
def test_replay_references_learn_class_incrementally(tmp_path):
    """textures (20 classes) then pedestrians (2): 22 classes, chance 4.5 %; naive (the shared backbone trains), its
    lr 1e-3, 3 epochs, buffer 200 (Avalanche's defaults otherwise). Measured (CPU): class-incremental accuracy per
    stage naive [0.28, 0.3125], er_ace [0.28, 0.50], derpp [0.28, 0.4775]; task-id accuracy of the last stage 0.70,
    0.955, 0.96 (without replay the pedestrians head outbids the textures head). Stage 1 is the same for all three:
    neither replays on the first task and their draws do not touch the run's RNG."""
    common = ["protocol=class_incremental", "benchmark.domains=[textures,pedestrians]", "optim.epochs=3",
              "optim.lr=1e-3", "benchmark.n_train=300", "benchmark.n_test=200", "checkpoint_every=0"]
    runs = {}
    for name, extra in (("naive", ["method=naive"]), ("er_ace", ["strategy=er_ace"]), ("derpp", ["strategy=derpp"])):
        cfg = compose_cfg(*extra, *common, model="vit_procedural")
        runs[name] = run_in_process(cfg, tmp_path / name)["class_incremental"]
    report = {n: (c["accuracy_per_stage"], c["forgetting"]) for n, c in runs.items()}
    for name in ("er_ace", "derpp"):
        assert runs[name]["accuracy_per_stage"][0] > 0.2, report
    assert runs["er_ace"]["last_accuracy"] > runs["naive"]["last_accuracy"] + 0.05, report
    assert runs["derpp"]["last_accuracy"] > runs["naive"]["last_accuracy"] + 0.05, report
