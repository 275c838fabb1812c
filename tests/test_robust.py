"""Robustness terms (erase.methods.robust) on tiny families: they run, resume to the same weights, and each one
moves the model against its attack's objective on a toy case."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from erase.concept import Concept
from erase.methods.adversarial import AdversarialErasure
from erase.methods.base import MethodError, Original
from erase.methods.edit_refusal import EditRefusal
from erase.methods.esd import ESD
from erase.methods.robust import ROBUST_OFF, RobustConfig, embedding_pgd, image_pgd, relearn_leakage, relearn_weights
from erase.models.adapter import DiffusionAdapter
from erase.models.tiny import tiny_pipeline
from erase.training import TrainConfig, train

CONCEPT = Concept(
    id="toy", prompts=["a shirtless person"], anchor="a person", preserve=["a person in a red shirt"],
    forbidden_edits=["take off the shirt"], benign_edits=["make the shirt blue"],
)
FAST_ESD = dict(num_steps=3, trajectories=2, refresh_every=2, batch_size=1)
EVERY_STEP = {"embedding": {"weight": 1.0, "every": 1, "steps": 2}, "doors": {"weight": 1.0, "words": ["shirt"]},
              "relearn": {"weight": 1.0, "every": 1, "inner_steps": 1}}
EDITOR = {**EVERY_STEP, "image": {"weight": 1.0, "every": 1, "steps": 2}}


def tiny(family: str) -> DiffusionAdapter:
    a = DiffusionAdapter(tiny_pipeline(family))
    a.default_size = 32
    return a


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"steps": 1, "lr": 1e-3, "cpu": True, **kw})


def editor(**kw) -> EditRefusal:
    return EditRefusal(photos={"source": "toy", "n": 2}, batch_size=1, **kw)


# ---------------------------------------------------------------- config
def test_defaults_are_off_and_bad_keys_are_refused():
    assert all(part["weight"] == 0 for part in ROBUST_OFF.values())
    with pytest.raises(MethodError, match="unknown robust term"):
        RobustConfig.from_params({"embeding": {"weight": 1}})
    with pytest.raises(MethodError, match=r"robust.doors; valid"):
        RobustConfig.from_params({"doors": {"wieght": 1}})
    with pytest.raises(MethodError, match="eps"):
        RobustConfig.from_params({"image": {"weight": 1, "eps": 2.0}})
    with pytest.raises(MethodError, match="every"):
        RobustConfig.from_params({"relearn": {"weight": 1, "every": 0}})
    with pytest.raises(MethodError, match=r"image.start must be one of \['zero', 'counterpart'\]"):
        RobustConfig.from_params({"image": {"weight": 1, "start": "exposed"}})
    with pytest.raises(MethodError, match="0 PGD steps only with start: counterpart"):
        RobustConfig.from_params({"image": {"weight": 1, "steps": 0}})
    assert RobustConfig.from_params({"image": {"weight": 1, "steps": 0, "start": "counterpart"}}).image.steps == 0
    with pytest.raises(MethodError, match=r"relearn.group must be one of \['trained', 'xattn-kv'.*'all'\].*'unet'"):
        RobustConfig.from_params({"relearn": {"weight": 1, "group": "unet"}})
    assert RobustConfig.from_params({"relearn": {"weight": 1}}).relearn.group == "all"  # what the attack fine-tunes


def test_image_adversary_refused_without_a_photo_path(tmp_path):
    with pytest.raises(MethodError, match="robust.image"):
        train(ESD(**FAST_ESD, robust={"image": {"weight": 1.0}}), tiny("sd1"), CONCEPT, cfg(), tmp_path)


def test_terms_off_train_exactly_as_before(tmp_path):
    a, b = tiny("sd1"), tiny("sd1")
    train(ESD(**FAST_ESD), a, CONCEPT, cfg(steps=2), tmp_path / "a")
    train(ESD(**FAST_ESD, robust=None), b, CONCEPT, cfg(steps=2), tmp_path / "b")
    for (n, p), q in zip(a.denoiser.named_parameters(), b.denoiser.parameters()):
        assert torch.equal(p, q), n


# ---------------------------------------------------------------- every family the methods claim
@pytest.mark.parametrize("family", ["sd1", "sdxl", "sd3", "flux"])
def test_esd_terms_run(family, tmp_path):
    r = train(ESD(**FAST_ESD, robust=EVERY_STEP), tiny(family), CONCEPT, cfg(), tmp_path)
    assert {"robust_embedding", "robust_doors", "robust_relearn"} <= set(r.history[-1])


def test_adversarial_erasure_adds_the_terms_too(tmp_path):
    m = AdversarialErasure(**FAST_ESD, attack_steps=1, robust={"doors": {"weight": 1.0, "words": ["shirt"]}})
    r = train(m, tiny("sd1"), CONCEPT, cfg(), tmp_path)
    assert "robust_doors" in r.history[-1]


@pytest.mark.parametrize("family", ["ip2p", "sd-inpaint", "kontext", "sd1"])
def test_edit_refusal_terms_run(family, tmp_path):
    terms = EDITOR if family != "sd1" else EVERY_STEP  # sd1 edits by SDEdit: no photo condition to perturb
    r = train(editor(robust=terms), tiny(family), CONCEPT, cfg(), tmp_path)
    assert {f"robust_{k}" for k in terms} <= set(r.history[-1])


def test_counterpart_image_term_runs_on_every_editor_and_resumes(tmp_path):
    """start counterpart, steps 0 (the main job's editor recipe) on every photo path, and a resumed run ends with
    the weights of an uninterrupted one."""
    terms = {"image": {"weight": 1.0, "every": 1, "steps": 0, "eps": 1.0, "start": "counterpart"}}
    for family in ("ip2p", "sd-inpaint", "kontext"):
        r = train(editor(robust=terms), tiny(family), CONCEPT, cfg(), tmp_path / family)
        assert r.history[-1]["robust_image"] > 0, family
    kw = dict(steps=4, checkpoint_every=2, lr=1e-2)
    a, b, c = tiny("ip2p"), tiny("ip2p"), tiny("ip2p")
    train(editor(robust=terms), a, CONCEPT, cfg(**kw), tmp_path / "full")
    train(editor(robust=terms), b, CONCEPT, cfg(stop_after=2, **kw), tmp_path / "cut")
    assert train(editor(robust=terms), c, CONCEPT, cfg(**kw), tmp_path / "cut").resumed_from == 2
    for (n, p), q in zip(a.denoiser.named_parameters(), c.denoiser.parameters()):
        assert torch.equal(p, q), n


@pytest.mark.parametrize("group", ["all", "trained"])
def test_relearn_groups_run_on_esd_and_edit_refusal(group, tmp_path):
    terms = {"relearn": {"weight": 1.0, "every": 1, "inner_steps": 2, "group": group}}
    for name, m, family in [("esd", ESD(**FAST_ESD, robust=terms), "sd1"), ("editor", editor(robust=terms, group="xattn"), "ip2p")]:
        r = train(m, tiny(family), CONCEPT, cfg(steps=2), tmp_path / name)
        assert r.history[-1]["robust_relearn"] > 0, name


@pytest.mark.parametrize("group", ["all", "trained"])
def test_resumed_run_equals_uninterrupted(group, tmp_path):
    kw = dict(steps=4, checkpoint_every=2, lr=1e-2)
    terms = {**EVERY_STEP, "embedding": {"weight": 1.0, "every": 2}, "relearn": {**EVERY_STEP["relearn"], "group": group}}
    a = tiny("sd1")
    train(ESD(**FAST_ESD, robust=terms), a, CONCEPT, cfg(**kw), tmp_path / "full")
    full = {n: p.clone() for n, p in a.denoiser.named_parameters()}
    b = tiny("sd1")
    train(ESD(**FAST_ESD, robust=terms), b, CONCEPT, cfg(stop_after=2, **kw), tmp_path / "cut")
    c = tiny("sd1")
    r = train(ESD(**FAST_ESD, robust=terms), c, CONCEPT, cfg(**kw), tmp_path / "cut")
    assert r.resumed_from == 2
    for n, p in c.denoiser.named_parameters():
        assert torch.equal(p, full[n]), n


# ---------------------------------------------------------------- each term against its attack
def _esd_site(terms: dict, seed: int = 0):
    """An ESD method set up on tiny sd1 and the Site of one of its steps."""
    a = tiny("sd1")
    for p in a.denoiser.parameters():
        p.requires_grad_(False)
    for n in a.module_group("xattn"):
        dict(a.denoiser.named_parameters())[n].requires_grad_(True)
    m = ESD(**FAST_ESD, eta=3.0, robust=terms)
    return a, m, _first_site(m, a, seed)


def _first_site(m, a: DiffusionAdapter, seed: int = 0):
    """The Site of the method's first step (after setup on `a`), as the robust terms receive it."""
    m.setup(a, CONCEPT, Original(a, lora=False), seed)
    captured = {}
    real = m.robust.loss
    m.robust.loss = lambda model, step, g, site: (captured.setdefault("site", site), real(model, step, g, site))[1]
    m.loss(a.denoiser, 0, torch.Generator().manual_seed(seed))
    m.robust.loss = real
    return captured["site"]


def _descend(a, loss_fn, steps: int = 5, lr: float = 3e-3) -> None:
    params = [p for p in a.denoiser.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()


def test_embedding_adversary_raises_the_attacks_best_objective():
    """Training on the adversary's perturbed embedding makes the best embedding it can find (PGD re-run on the
    new weights) fit the concept worse: the attack's objective at its optimum goes up."""
    terms = {"embedding": {"weight": 1.0, "every": 1, "steps": 5, "eps": 0.5}}
    a, m, site = _esd_site(terms)
    c = m.robust.cfg.embedding

    def attack_optimum() -> float:
        adv = embedding_pgd(a, a.denoiser, site, c)
        with torch.no_grad():
            return site.loss(a.predict(site.x_t, site.t, adv, site.image), site.concept, site.t).item()

    before = attack_optimum()
    _descend(a, lambda: m.robust.loss(a.denoiser, 0, torch.Generator().manual_seed(0), site)[0])
    assert attack_optimum() > before


def test_closed_doors_keep_the_negative_prompt_branch():
    """ESD moves the clothing word's prediction with the concept's; the doors term keeps it at the frozen model's."""
    terms = {"doors": {"weight": 10.0, "words": ["shirt"], "prompts": ["a person"]}}

    def drift(weight: float) -> float:
        a, m, site = _esd_site(terms)
        m.robust.cfg.doors.weight = weight  # 0: plain ESD on the same states
        word = a.encode_prompts(["shirt"])
        _descend(a, lambda: m.loss(a.denoiser, 0, torch.Generator().manual_seed(0))[0], steps=6, lr=1e-2)
        frozen = m.original.predict(site.x_t, site.t, word)
        with torch.no_grad():
            return (a.predict(site.x_t, site.t, word) - frozen).pow(2).mean().item()

    assert drift(10.0) < drift(0.0)


def test_relearn_resistance_lowers_leakage_after_real_relearning():
    """After training on the meta term, an attacker's actual fine-tuning (Adam on the concept, more steps than the
    simulation took) leaves the model further from the concept than it leaves the untrained one."""
    terms = {"relearn": {"weight": 1.0, "every": 1, "inner_steps": 2, "inner_lr": 2e-3}}
    a, m, site = _esd_site(terms)

    def after_relearning() -> float:
        b = copy.deepcopy(a.denoiser)
        params = [p for p in b.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=1e-3)
        for _ in range(4):
            opt.zero_grad()
            site.loss(a.predict(site.x_t, site.t, site.cond, site.image, denoiser=b), site.concept, site.t).backward()
            opt.step()
        with torch.no_grad():
            return site.loss(a.predict(site.x_t, site.t, site.cond, site.image, denoiser=b), site.concept, site.t).item()

    before = after_relearning()
    _descend(a, lambda: relearn_leakage(a, a.denoiser, site, m.robust.cfg.relearn))
    assert after_relearning() > before


def test_relearn_group_all_steps_the_frozen_weights_too():
    """Group "all" moves every denoiser weight in the functional copy (frozen ones as constants), "trained" only
    the trained cross-attention; the live model is untouched and the two simulated leakages differ."""
    terms = {"relearn": {"weight": 1.0, "every": 1, "inner_steps": 2, "inner_lr": 2e-3}}
    a, m, site = _esd_site(terms)
    live = {n: p.detach().clone() for n, p in a.denoiser.named_parameters()}
    trained = {n for n, p in a.denoiser.named_parameters() if p.requires_grad}
    c = m.robust.cfg.relearn
    every = relearn_weights(a, a.denoiser, site, c)
    assert set(every) == set(a.module_group("all")) and set(every) > trained
    moved_frozen = [n for n in every if n not in trained and not torch.equal(every[n], live[n])]
    assert len(moved_frozen) > len(trained)  # most frozen weights took their sign steps
    assert all(not every[n].requires_grad for n in every if n not in trained)  # constants: no outer gradient
    assert all(every[n].requires_grad for n in trained)  # d theta_k / d theta = I
    only = relearn_weights(a, a.denoiser, site, dataclasses.replace(c, group="trained"))
    assert set(only) == trained
    for n, p in a.denoiser.named_parameters():
        assert torch.equal(p, live[n]), n
    leak_all = relearn_leakage(a, a.denoiser, site, c)
    leak_trained = relearn_leakage(a, a.denoiser, site, dataclasses.replace(c, group="trained"))
    assert not torch.isclose(leak_all, leak_trained, rtol=1e-3)
    leak_all.backward()  # the outer gradient reaches the trained parameters only
    assert all((p.grad is not None) == p.requires_grad for p in a.denoiser.parameters())


def test_relearn_group_all_resists_an_attacker_that_moves_every_weight():
    """The harness's attacker fine-tunes every weight (Adam). Training on the group-"all" term leaves the model
    further from the concept after that attack than training on the plain refusal at the same states does (here
    0.0033 against 0.0017; seeds 0-3 of _esd_site all order the same way, seed 2 narrowly). Fails if the inner
    steps move nothing (the term is then the plain refusal)."""
    terms = {"relearn": {"weight": 1.0, "every": 1, "inner_steps": 2, "inner_lr": 2e-3, "group": "all"}}

    def after_attack(train_on: str) -> float:
        a, m, site = _esd_site(terms)
        pred = lambda net=None: a.predict(site.x_t, site.t, site.cond, site.image, denoiser=net)
        loss = {"plain": lambda: site.loss(pred(), site.refusal, site.t),
                "relearn": lambda: relearn_leakage(a, a.denoiser, site, m.robust.cfg.relearn)}[train_on]
        _descend(a, loss, steps=20, lr=3e-3)
        b = copy.deepcopy(a.denoiser)
        for p in b.parameters():
            p.requires_grad_(True)  # every weight, as attacks/relearning.py's group "all"
        opt = torch.optim.Adam(list(b.parameters()), lr=1e-3)
        for _ in range(2):
            opt.zero_grad()
            site.loss(pred(b), site.concept, site.t).backward()
            opt.step()
        with torch.no_grad():
            return site.loss(pred(b), site.concept, site.t).item()

    assert after_attack("relearn") > after_attack("plain")


def test_image_adversary_raises_the_attacks_best_objective(tmp_path):
    """On the tiny InstructPix2Pix editor: after training on the image term, PGD on the photo (re-run) steers the
    benign edit toward the forbidden prediction less well."""
    a = tiny("ip2p")
    m = editor(robust={"image": {"weight": 1.0, "every": 1, "steps": 4}}, group="all")
    site, c = _first_site(m, a), m.robust.cfg.image
    image_of = lambda p: a.image_condition((site.photos + p).clamp(-1, 1), site.masks)
    attack = lambda p: site.loss(a.predict(site.x_t, site.t, site.benign, image_of(p)), site.concept, site.t)

    def attack_optimum() -> float:
        p = image_pgd(attack, site.photos.float(), c)
        with torch.no_grad():
            return attack(p).item()

    before = attack_optimum()
    _descend(a, lambda: m.robust.loss(a.denoiser, 0, torch.Generator().manual_seed(0), site)[0], steps=4, lr=1e-3)
    assert attack_optimum() > before


def test_counterpart_start_takes_the_exposed_photo_away_from_the_concept(tmp_path):
    """image.start counterpart, eps 1, steps 0: the adversarial photo is the exposed counterpart itself (where an
    encoder attack ends at any budget). Training on the term makes a benign instruction on that photo fit the
    concept's prediction worse: the attack's objective at its end point goes up."""
    a = tiny("ip2p")
    m = EditRefusal(photos={"source": "toy", "n": 4}, batch_size=4, group="all",
                    robust={"image": {"weight": 1.0, "every": 1, "steps": 0, "eps": 1.0, "start": "counterpart"}})
    site = _first_site(m, a)
    assert site.counterparts is not None and not torch.equal(site.counterparts, site.photos)
    p = image_pgd(lambda q: q.sum(), site.photos.float(), m.robust.cfg.image, site.counterparts - site.photos)
    torch.testing.assert_close(site.photos + p, site.counterparts)  # steps 0, eps 1: exactly the counterpart
    exposed = a.image_condition(site.counterparts, site.masks)

    def attack_objective() -> float:
        with torch.no_grad():
            return site.loss(a.predict(site.x_t, site.t, site.benign, exposed), site.concept, site.t).item()

    before = attack_objective()
    _descend(a, lambda: m.robust.loss(a.denoiser, 0, torch.Generator().manual_seed(0), site)[0], steps=4, lr=1e-4)
    assert attack_objective() > 1.5 * before


def test_counterpart_start_refused_without_counterparts(tmp_path):
    from erase.methods.robust import RobustTerms, Site

    a = tiny("ip2p")
    terms = RobustTerms({"image": {"weight": 1.0, "every": 1, "steps": 0, "eps": 1.0, "start": "counterpart"}})
    terms.setup(a, Original(a, lora=False), "edit_refusal", [], image_path=True)
    x = torch.zeros(1, 3, 32, 32)
    cond = a.encode_prompts(["make the shirt blue"])
    site = Site(a.encode_images(x), a.sample_timesteps(1, torch.Generator().manual_seed(0)), cond,
                a.image_condition(x), torch.zeros(1, 4, 4, 4), torch.zeros(1, 4, 4, 4), lambda p, y, t: ((p - y) ** 2).mean(),
                photos=x, benign=cond)
    with pytest.raises(MethodError, match="counterpart.*needs photos with exposed counterparts"):
        terms.loss(a.denoiser, 0, torch.Generator().manual_seed(0), site)
