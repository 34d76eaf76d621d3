"""ArtiHippo (strategy=artihippo): the search space does what each operation says, the sampling follows task
similarity, old tasks never change (bitwise), runs resume exactly, and the method learns."""
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from gift_cl.backbones import create_backbone
from gift_cl.methods.artihippo import PRETRAINED, ArtiHippo
from gift_cl.methods.artihippo.sampling import HierarchicalSampler
from gift_cl.orchestration.loop import CHECKPOINT, Run
from gift_cl.strategies.plugins import EpochCheckpointPlugin

from runs import PROCEDURAL, REPO, TINY, compose_cfg, env, kill_and_resume, run_in_process


def make_model(**kwargs) -> ArtiHippo:
    torch.manual_seed(0)
    cfg = compose_cfg()
    backbone = create_backbone(num_classes=0, **OmegaConf.to_container(cfg.model, resolve=True))
    return ArtiHippo(backbone, **kwargs).eval()


def add(model: ArtiHippo, task: int, arch, perturb: bool = True) -> None:
    """Give ``task`` an architecture and a head; ``perturb`` moves its own parameters off their init, so that
    an operation that reads them shows it."""
    model.set_architecture(task, arch)
    model.add_task(task, 3)
    if perturb:
        with torch.no_grad():
            for p in model.task_parameters(task):
                p.add_(0.05 * torch.randn_like(p))


def block_input(model, x, block):
    """The input of ``block``'s attention sub-block on the frozen path, and the block's output there."""
    bb = model.backbone
    h = bb.norm_pre(bb.patch_drop(bb._pos_embed(bb.patch_embed(x))))
    for blk in bb.blocks[:block]:
        h = blk(h)
    return h


X = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------------------------------------- search space
@pytest.mark.parametrize("adapt", ["lora", "gift"])
def test_reuse_runs_the_old_expert_exactly_and_adapt_starts_at_reuse(adapt):
    model = make_model(adapt=adapt)
    add(model, 0, [("new", None), ("adapt", PRETRAINED)])
    add(model, 1, [("reuse", 0), ("reuse", 0)])  # reuses task 0's new expert and its adapted pretrained expert
    add(model, 2, [("adapt", 0), ("adapt", 0)], perturb=False)  # fresh adapters: exactly reuse
    add(model, 3, [("reuse", 1), ("adapt", 1)], perturb=False)  # a reuse of a reuse is task 0's expert
    with torch.no_grad():
        ref = model.features(X, 0)
        assert not torch.equal(ref, model.frozen_features(X))  # task 0's experts are not the pretrained ones
        for task in (1, 2, 3):
            assert torch.equal(model.features(X, task), ref), task
        # at the level of one layer: the pool's output for the reusing task is the old expert's output
        pool = model.pools[0]
        h = torch.randn(2, 5, pool.base.in_features)
        assert torch.equal(model._expert_out(pool, model.expert_id(0, 1), h), pool.experts["0"](h))
    assert model.architecture_report()["tasks"][3]["blocks"][0]["expert_owner"] == 0
    # once the adapter moves, adapt differs from reuse (it does something)
    with torch.no_grad():
        for p in model.task_parameters(2):
            p.add_(0.05 * torch.randn_like(p))
        assert not torch.equal(model.features(X, 2), ref)


def test_gift_adapt_reads_the_old_experts_weights():
    model = make_model(adapt="gift")
    add(model, 0, [("new", None), ("new", None)])
    add(model, 1, [("adapt", 0), ("adapt", PRETRAINED)])
    pool = model.pools[0]
    gen = model.generators["1"]
    with torch.no_grad():
        delta = model._delta(pool, "1", ("new", "0"))
        assert torch.allclose(delta, gen(pool.experts["0"].weight.unsqueeze(0))[0])
        assert not torch.allclose(delta, gen(pool.base.weight.unsqueeze(0))[0])
    assert len(model.generators) == 1  # one generator per adapting task, shared by its blocks


def test_new_from_pretrained_init_is_the_frozen_model_and_random_init_is_not():
    model = make_model(new_init="pretrained")
    add(model, 0, [("new", None)] * 2, perturb=False)
    with torch.no_grad():
        assert torch.equal(model.features(X, 0), model.frozen_features(X))
    model = make_model(new_init="random")
    add(model, 0, [("new", None)] * 2, perturb=False)
    with torch.no_grad():
        assert not torch.allclose(model.features(X, 0), model.frozen_features(X))
    d_out, d_in = model.proj_shape
    assert model.added_parameters(model.arch[0]) == 2 * (d_out * d_in + d_out)


def test_skip_is_the_block_without_its_attention_branch():
    model = make_model()
    add(model, 0, [("reuse", PRETRAINED), ("skip", None)])
    bb = model.backbone
    with torch.no_grad():
        h = block_input(model, X, 1)
        blk = bb.blocks[1]
        h = h + blk.mlp(blk.norm2(h))  # no attention, the MLP sub-block only
        expected = bb.forward_head(bb.norm(h), pre_logits=True)
        assert torch.allclose(model.features(X, 0), expected, atol=0, rtol=0)
        # reuse of the pretrained projection everywhere is the frozen model
        add(model, 1, [("reuse", PRETRAINED)] * 2, perturb=False)
        assert torch.equal(model.features(X, 1), model.frozen_features(X))
    assert model.added_flops(model.arch[0]) < 0 and model.added_parameters(model.arch[0]) == 0
    assert PRETRAINED in model.sources(1) and 0 not in model.sources(1)  # a skipped block has no expert of 0


def test_search_space_rejects_what_it_does_not_hold():
    model = make_model(ops=["reuse", "adapt", "new"])
    with pytest.raises(ValueError, match="skip"):
        model.set_architecture(0, [("skip", None), ("new", None)])
    with pytest.raises(ValueError, match="no expert"):
        model.set_architecture(0, [("reuse", 5), ("new", None)])
    with pytest.raises(RuntimeError, match="no architecture"):
        model.add_task(7, 3)
        model.begin_task([7])


# ---------------------------------------------------------------------------------------------- sampling
def test_similar_old_tasks_expert_is_sampled_more_often():
    model = make_model()
    model.pretrained_expert = False  # two old experts only: one similar, one dissimilar
    add(model, 0, [("new", None)] * 2)
    add(model, 1, [("new", None)] * 2)
    g = torch.Generator().manual_seed(0)
    base = F.normalize(torch.randn(64, generator=g), dim=0)
    other = F.normalize(torch.randn(64, generator=g), dim=0)
    other = F.normalize(other - (other @ base) * base, dim=0)  # orthogonal to base
    new_task = F.normalize(base + 0.3 * other, dim=0)
    model.prototypes = {0: base, 1: -base + 0.2 * other}  # 0 similar to the new task, 1 dissimilar
    sims = {t: float(F.cosine_similarity(new_task, p, dim=0)) for t, p in model.prototypes.items()}
    assert sims[0] > 0.9 and sims[1] < -0.5
    sampler = HierarchicalSampler(model, sims, temperature=0.2, generator=torch.Generator().manual_seed(123))
    n = 4000
    for eps in (0.3, 0.5):
        draws = [sampler.sample_block(0, eps) for _ in range(n)]
        count = {src: sum(1 for op, s in draws if s == src and op in ("reuse", "adapt")) for src in (0, 1)}
        # exact probabilities, and the empirical counts agree with them (5 sigma)
        dist = sampler.distribution(0, eps)
        assert abs(sum(dist.values()) - 1) < 1e-9
        for key, p in dist.items():
            got = sum(1 for d in draws if d == key)
            assert abs(got - n * p) < 5 * (n * p * (1 - p)) ** 0.5 + 1, (key, got, n * p)
        # the similar task's expert wins by a wide margin (binomial: far beyond chance at n=4000)
        assert count[0] > 2 * count[1] and count[0] > 0.5 * n, (eps, count)
        # the similar expert is reused more than adapted, the dissimilar one adapted more than reused
        assert dist[("reuse", 0)] > dist[("adapt", 0)] and dist[("adapt", 1)] > dist[("reuse", 1)]
    # more exploration flattens the distribution
    assert sampler.distribution(0, 0.5)[("reuse", 0)] < sampler.distribution(0, 0.3)[("reuse", 0)]
    uniform = sampler.level1(0, 1.0)
    assert all(abs(p - 1 / 3) < 1e-12 for _, p in uniform)


def test_candidates_dedupe_reused_experts():
    model = make_model()
    add(model, 0, [("new", None), ("skip", None)])
    add(model, 1, [("reuse", 0), ("reuse", PRETRAINED)])
    assert model.candidates(0) == {PRETRAINED: [], 0: [0, 1]}
    assert model.candidates(1) == {PRETRAINED: [1]}


# ---------------------------------------------------------------------------------------------- runs
def tiny_run(run_dir, *overrides, domains="[digits,pedestrians,signs]", epochs=2, checkpoint_every=0):
    cfg = compose_cfg("strategy=artihippo", f"optim.epochs={epochs}", "optim.batch_size=16",
                      f"benchmark.domains={domains}", "benchmark.n_train=48", "benchmark.n_test=24",
                      f"checkpoint_every={checkpoint_every}", "strategy.plugins.artihippo_search.population=4",
                      "strategy.plugins.artihippo_search.generations=2", *overrides)
    return Run(cfg, run_dir)


def test_old_tasks_never_change_bitwise(tmp_path):
    run = tiny_run(tmp_path, "strategy.method.adapt=gift", "strategy.method.new_init=pretrained",
                   "strategy.plugins.artihippo_search.tolerance=1.0", "strategy.method.ops=[reuse,adapt,new]")
    experiences = run.experiences
    run.experiences = experiences[:1]
    run.train_and_evaluate()
    model = run.model.eval()
    with torch.no_grad():
        before = model(X, 0).clone()
        state = {k: v.clone() for k, v in model.trainable_state_dict().items() if torch.is_tensor(v)}
    run.experiences = experiences
    run.train_and_evaluate()
    res = run.write_results(final=True)
    model = run.model.eval()
    with torch.no_grad():
        assert torch.equal(model(X, 0), before)
        after = model.trainable_state_dict()
        assert all(torch.equal(after[k], v) for k, v in state.items())
    assert res["forgetting"] == 0.0 and res["bwt"] == 0.0
    assert res["accuracy_matrix"][2][0] == res["accuracy_matrix"][0][0]
    # with tolerance 1 the cheapest candidate wins: no new experts when reuse is possible
    report = json.loads((tmp_path / "artihippo.json").read_text())
    assert [t["name"] for t in report["tasks"]] == ["digits", "pedestrians", "signs"]
    assert all(b["op"] == "reuse" for t in report["tasks"] for b in t["blocks"])
    assert (tmp_path / "artihippo.png").is_file()
    proc = subprocess.run([sys.executable, str(REPO / "analysis" / "artihippo_figure.py"), str(tmp_path), "--out",
                           str(tmp_path / "fig.png")], env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and (tmp_path / "fig.png").is_file(), proc.stderr[-2000:]
    assert "signs" in proc.stdout


def compare(a: dict, b: dict) -> None:
    for key in ("accuracy_matrix", "final_accuracy", "task_id_accuracy", "params", "forgetting"):
        assert a[key] == b[key], key


def arches(run_dir) -> list:
    return [[(b["op"], b["source"]) for b in t["blocks"]]
            for t in json.loads((run_dir / "artihippo.json").read_text())["tasks"]]


@pytest.mark.parametrize("overrides", [[], ["strategy.method.adapt=gift"]], ids=["lora", "gift"])
def test_stopped_after_an_experience_or_inside_one_resumes_exactly(tmp_path, overrides):
    full = tiny_run(tmp_path / "full", *overrides, checkpoint_every=1)
    full.train_and_evaluate()
    expected = full.write_results(final=True)

    # stopped at an experience boundary
    stopped = tiny_run(tmp_path / "boundary", *overrides, checkpoint_every=1)
    stopped.experiences = stopped.experiences[:1]
    stopped.train_and_evaluate()
    resumed = tiny_run(tmp_path / "boundary", *overrides, checkpoint_every=1)
    resumed.restore(tmp_path / "boundary" / CHECKPOINT)
    resumed.train_and_evaluate()
    compare(resumed.write_results(final=True), expected)
    assert arches(tmp_path / "boundary") == arches(tmp_path / "full")

    # stopped inside the second experience, after its search and its first epoch
    class Killed(Exception):
        pass

    stopped = tiny_run(tmp_path / "mid", *overrides, checkpoint_every=1)
    save = stopped._save_mid_experience

    def save_then_die(strategy, epochs_done):
        save(strategy, epochs_done)
        if stopped.progress["position"] == 1:
            raise Killed

    [checkpointer] = [p for p in stopped.strategy.plugins if isinstance(p, EpochCheckpointPlugin)]
    checkpointer.save = save_then_die
    with pytest.raises(Killed):
        stopped.train_and_evaluate()
    resumed = tiny_run(tmp_path / "mid", *overrides, checkpoint_every=1)
    resumed.restore(tmp_path / "mid" / CHECKPOINT)
    assert resumed.model.has_architecture(1)  # the search is not redone
    resumed.train_and_evaluate()
    compare(resumed.write_results(final=True), expected)
    assert arches(tmp_path / "mid") == arches(tmp_path / "full")


def test_killed_run_resumes_to_identical_results(tmp_path):
    args = [*TINY, *PROCEDURAL, "strategy=artihippo", "optim.epochs=3", "checkpoint_every=1",
            "benchmark.domains=[digits,pedestrians,signs]", "benchmark.n_train=96"]
    _, _, reference, killed = kill_and_resume(args, tmp_path)
    assert arches(reference) == arches(killed)


# ---------------------------------------------------------------------------------------------- learning
def test_artihippo_learns_every_task(tmp_path):
    cfg = compose_cfg("strategy=artihippo", "benchmark.domains=[textures,pedestrians]", "optim.epochs=3",
                      "benchmark.n_train=300", "benchmark.n_test=200", "checkpoint_every=0", model="vit_procedural")
    res = run_in_process(cfg, tmp_path)
    textures_after_own, pedestrians_after_own = res["accuracy_matrix"][0][0], res["accuracy_matrix"][1][1]
    assert textures_after_own > 0.2, res["accuracy_matrix"]  # chance 5 %
    assert pedestrians_after_own > 0.6, res["accuracy_matrix"]  # chance 50 %
    assert res["forgetting"] == 0.0
    assert res["task_id_accuracy"] > 0.9


def test_separate_level1_keeps_new_above_a_floor_as_tasks_accumulate():
    """``level1="separate"``: New and Skip are level-1 categories of their own and exploration is spread per
    kind, so P(New) >= ε/3 at every task; the default Aux category thins out as old experts accumulate."""
    from types import SimpleNamespace

    from gift_cl.methods.artihippo import PRETRAINED

    def sampler(n_old: int, level1: str) -> HierarchicalSampler:
        fake = SimpleNamespace(depth=1, ops=("reuse", "adapt", "new", "skip"),
                               candidates=lambda l, old: {PRETRAINED: [], **{t: [t] for t in old}})
        sims = {t: 0.6 for t in range(n_old)}  # similar old tasks: ŝ = 0.8
        return HierarchicalSampler(fake, sims, temperature=0.2, level1=level1,
                                   generator=torch.Generator().manual_seed(0))

    eps = 0.3
    floor = eps / 3
    aux_new = []
    for n_old in range(10):  # the new task is task n_old + 1 (10 tasks)
        dist = sampler(n_old, "separate").distribution(0, eps)
        assert abs(sum(dist.values()) - 1) < 1e-12
        assert dist[("new", None)] >= floor and dist[("skip", None)] >= floor, (n_old, dist)
        aux_new.append(sampler(n_old, "aux").distribution(0, eps)[("new", None)])
    assert aux_new[-1] < floor < aux_new[0]  # the default's collapse, which the option avoids
    # draws follow the exact distribution
    s = sampler(9, "separate")
    draws = [s.sample_block(0, eps) for _ in range(2000)]
    p = s.distribution(0, eps)[("new", None)]
    got = sum(1 for d in draws if d == ("new", None))
    assert abs(got - 2000 * p) < 5 * (2000 * p * (1 - p)) ** 0.5
    with pytest.raises(ValueError, match="level1"):
        sampler(1, "cheem")


def test_level1_option_reaches_the_search_from_the_config():
    from gift_cl.methods.artihippo import ArtiHippoSearch
    from gift_cl.methods.artihippo.search import SearchConfig
    from gift_cl.orchestration.validation import validate

    from runs import compose_cfg

    cfg = compose_cfg("strategy=artihippo", "strategy.plugins.artihippo_search.level1=separate")
    validate(cfg)
    assert cfg.strategy.plugins.artihippo_search.level1 == "separate"
    assert ArtiHippoSearch(level1="separate").cfg.level1 == "separate"
    assert ArtiHippoSearch().cfg.level1 == "aux"  # the default is unchanged
    with pytest.raises(ValueError, match="level1"):
        SearchConfig(level1="uniform")


def test_selection_tolerance_kinds_and_choices():
    """Which near-best candidate is chosen: the tolerance as an accuracy margin, a fraction of the best (CHEEM)
    or a count of search images, and the cheapest by added parameters (the default) or by FLOPs (CHEEM)."""
    from gift_cl.methods.artihippo.search import SearchConfig, choose

    n_val = 40
    reuse, new, skip = (("reuse", 0),), (("new", None),), (("skip", None),)
    scores = {new: 30 / n_val, reuse: 29 / n_val, skip: 28 / n_val}  # one and two images below the best
    costs = {new: (1000, 50), reuse: (0, 40), skip: (0, 10)}

    def cost(arch):
        return costs[tuple(arch)]

    default = SearchConfig()  # 0.02 absolute: less than one image of 40, only the best qualifies
    assert choose(scores, cost, default, n_val) == (new, [new])
    one_image = SearchConfig(tolerance=1, tolerance_kind="images")
    assert choose(scores, cost, one_image, n_val)[0] == reuse  # no parameters added; more accurate than skip
    two_images = SearchConfig(tolerance=2, tolerance_kind="images")
    assert choose(scores, cost, two_images, n_val)[0] == reuse  # params tie: accuracy decides before FLOPs
    assert choose(scores, cost, SearchConfig(tolerance=2, tolerance_kind="images", choice="flops"), n_val)[0] == skip
    # relative: 5 % of 0.75 = 0.0375 admits one image (0.025) below the best, not two (0.05)
    assert sorted(choose(scores, cost, SearchConfig(tolerance=0.05, tolerance_kind="relative"), n_val)[1]) == \
        sorted([new, reuse])
    with pytest.raises(ValueError, match="tolerance_kind"):
        SearchConfig(tolerance_kind="percent")
    with pytest.raises(ValueError, match="tolerance=2"):
        SearchConfig(tolerance=2)  # an accuracy margin above 1


def test_search_options_checked_before_the_run_name_what_the_search_accepts():
    from gift_cl.config import ARGUMENT_RANGES
    from gift_cl.methods.artihippo.sampling import HierarchicalSampler
    from gift_cl.methods.artihippo.search import SearchConfig

    ranges = ARGUMENT_RANGES["gift_cl.methods.artihippo.ArtiHippoSearch"]
    assert ranges["level1"].values == tuple(HierarchicalSampler.LEVEL1)
    assert ranges["tolerance_kind"].values == SearchConfig.TOLERANCE_KINDS
    assert ranges["choice"].values == SearchConfig.CHOICES
    assert ranges["similarity"].values == SearchConfig.SIMILARITIES


def test_per_layer_similarity_records_each_task_along_its_own_path(tmp_path):
    """similarity=per_layer (CHEEM's): every finished task records its mean [CLS] token after each block of its
    own path; a new task's similarity to it is one cosine per block; a task's own data scores 1 at every block."""
    from gift_cl.methods.artihippo.search import layer_similarities

    run = tiny_run(tmp_path, "strategy.plugins.artihippo_search.similarity=per_layer", domains="[digits,pedestrians]", epochs=1)
    run.train_and_evaluate()
    model = run.model.eval()
    assert sorted(model.layer_prototypes) == [0, 1]
    assert all(p.shape == (model.depth, model.feature_dim) for p in model.layer_prototypes.values())
    sims = model.search_log[1]["similarity"]
    assert list(sims) == ["0"] and len(sims["0"]) == model.depth and all(-1 <= s <= 1 for s in sims["0"])
    own = layer_similarities(model, run.experiences[0].dataset.eval(), 64, "cpu")
    assert own[0] == pytest.approx([1.0] * model.depth, abs=1e-5)
    assert sorted(model.get_extra_state()["layer_prototypes"]) == [0, 1]  # checkpointed with the model


def test_a_run_saved_under_artihippos_former_names_loads_and_resumes(tmp_path):
    """ArtiHippo's model and search were ``gift_cl.artihippo.*`` and, before that, the search was
    ``strategies.artihippo.ArtiHippoSearch``; a run saved under those names reads back under today's names
    (analysis, export, resume)."""
    import yaml

    from gift_cl.config import load_saved_config
    from gift_cl.orchestration.rundir import config_differences, saved_config

    cfg = compose_cfg("strategy=artihippo")
    current = OmegaConf.to_container(cfg, resolve=True)
    old = yaml.safe_load(OmegaConf.to_yaml(cfg, resolve=True))
    old["strategy"]["method"]["_target_"] = "gift_cl.artihippo.ArtiHippo"
    old["strategy"]["plugins"]["artihippo_search"]["_target_"] = "strategies.artihippo.ArtiHippoSearch"
    (tmp_path / "config_resolved.yaml").write_text(yaml.safe_dump(old))

    loaded = load_saved_config(tmp_path / "config_resolved.yaml")
    assert loaded.strategy.method._target_ == "gift_cl.methods.ArtiHippo"
    assert loaded.strategy.plugins.artihippo_search._target_ == "gift_cl.methods.artihippo.ArtiHippoSearch"
    assert config_differences(saved_config(tmp_path), current) == []
