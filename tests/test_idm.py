"""Tests for IDM (distill_lib.idm, method="idm" of distill_lib.distill), on the tiny digits set.

Partition/expand against plain loops; the model queue's push/pop/training schedule, its training against a plain SGD
loop, the class-aware CE weighting and every IDM loss term recomputed class by class; determinism and bit-exact
resume with the queue; IPC 1 with CC+CM (IDM acts, DM warns and is inert); method defaults, cache identity and bad
input; the decoded view reaching evaluation and the CLI.
"""
import copy
import dataclasses
import importlib
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from distill_lib import seeding
from distill_lib.cache import canonical
from distill_lib.cli import main
from distill_lib.distill import (IDM_FIELDS, METHOD_DEFAULTS, OMITTED_AT_DEFAULT, QUEUE_FIELDS, DistillConfig, Distiller,
                                 config_from_dict)
from distill_lib.evaluate import EvalProtocol, evaluate
from distill_lib.idm import INITIAL_NETS, ModelQueue, QueueSpec
from distill_lib.models import get_model
from distill_lib.options import RunOptions
from distill_lib.runner import distill
from distill_lib.synthetic import SyntheticSet, decode_partitions, encode_partitions
from test_distill import check_against_reference  # library terms and gradients = distill_lib.reference

# The modules (the package exports functions of the same names), for monkeypatching what they call.
distill_module = importlib.import_module("distill_lib.distill")
evaluate_module = importlib.import_module("distill_lib.evaluate")

# Small enough that a step takes milliseconds: width-8 nets, 8 real images per class, 2 queue steps of 32 images.
TINY = dict(dataset="digits", method="idm", ipc=2, iterations=4, batch_real=8, net_width=8,
            queue=QueueSpec(length=4, push_interval=2, train_nets=2, train_steps=2, batch=32))
CPU = RunOptions(device="cpu")
FEATNET = dict(featnet_recipe="default", featnet_arch="convnet", featnet_epochs=1, featnet_per_class=20)


def tiny(**overrides) -> DistillConfig:
    """TINY with ``overrides``; queue_<name> ones change its queue, as the command line's --queue-<name> flags do."""
    queue = {k[len("queue_"):]: overrides.pop(k) for k in list(overrides) if k.startswith("queue_")}
    return DistillConfig(**{**TINY, **overrides, "queue": dataclasses.replace(TINY["queue"], **queue)})


def losses_of(history):
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history]


# ---------------------------------------------------------------- partitioning and expansion

@pytest.mark.parametrize("factor", [2, 4])
def test_grid_of_known_images_decodes_to_upsampled_tiles(factor):
    """Stored image i holds constant tiles of value 10 i + k (k row-major): decoding gives constant images in order,
    and arbitrary tiles decode exactly as a plain loop of slicing and bilinear upsampling."""
    h, w = 4 * factor, 2 * factor
    stored = torch.zeros(2, 3, h, w)
    for i in range(2):
        for k in range(factor ** 2):
            r, c = divmod(k, factor)
            stored[i, :, r * 4:(r + 1) * 4, c * 2:(c + 1) * 2] = 10 * i + k
    decoded = decode_partitions(stored, factor)
    assert decoded.shape == (2 * factor ** 2, 3, h, w)
    want = torch.tensor([10 * i + k for i in range(2) for k in range(factor ** 2)], dtype=torch.float32)
    torch.testing.assert_close(decoded, want.view(-1, 1, 1, 1).expand_as(decoded))

    stored = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    th, tw = h // factor, w // factor
    loop = [F.interpolate(img[None, :, r * th:(r + 1) * th, c * tw:(c + 1) * tw], size=(h, w), mode="bilinear",
                          align_corners=False)[0]
            for img in stored for r in range(factor) for c in range(factor)]
    torch.testing.assert_close(decode_partitions(stored, factor), torch.stack(loop), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("factor", [2, 4])
def test_encode_then_decode_returns_each_image_in_order(factor):
    """encode packs image i * f^2 + k into tile k of stored image i (area-downscaled); decode gives it back,
    upsampled, at the same position."""
    x = torch.randn(2 * factor ** 2, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    stored = encode_partitions(x, factor)
    assert stored.shape == (2, 2, 8, 8)
    small = F.avg_pool2d(x, factor)  # area downscaling by an integer factor
    s = 8 // factor
    for i in range(2):
        for k in range(factor ** 2):
            r, c = divmod(k, factor)
            torch.testing.assert_close(stored[i, :, r * s:(r + 1) * s, c * s:(c + 1) * s], small[i * factor ** 2 + k])
    up = F.interpolate(small, size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(decode_partitions(stored, factor), up, rtol=1e-6, atol=1e-6)
    assert torch.equal(encode_partitions(x, 1), x)
    with pytest.raises(ValueError, match="do not fill"):
        encode_partitions(x[:3], 2)
    with pytest.raises(ValueError, match="divide"):
        encode_partitions(x, 3)


def test_partitioned_real_init_and_result(digits):
    """IDM's real initialisation: each stored image holds factor^2 real images of its class, downscaled; the result
    records the factor and decodes to ipc * factor^2 training images per class."""
    run = Distiller(tiny(ipc=2), digits, options=CPU, progress=False)
    assert run.factor == 2 and run.samples_per_class == 8 and run.images.shape == (20, 1, 16, 16)
    g = seeding.generator(0, seeding.SYN_INIT, 3)
    want = encode_partitions(digits.sample_real(3, 8, g), 2)
    assert torch.equal(run.images[6:8].detach(), want)
    result = run.result()
    assert result.factor == 2 and result.ipc == 2
    images, labels = result.decoded()
    assert images.shape == (80, 1, 16, 16) and torch.equal(labels, torch.arange(10).repeat_interleave(8))


def test_evaluation_trains_on_the_decoded_images(digits, tmp_path, monkeypatch):
    result = distill(tiny(iterations=1), digits, options=CPU, progress=False)
    loaded = SyntheticSet.load(result.save(tmp_path / "idm.pt"))
    assert loaded.factor == 2 and config_from_dict(loaded.config) == tiny(iterations=1)
    seen = []
    monkeypatch.setattr(evaluate_module, "train_classifier", lambda model, x, y, *a, **k: seen.append((x, y)))
    evaluate(loaded, digits, EvalProtocol(model="mlp", epochs=1, num_models=1, device="cpu"))
    x, y = seen[0]
    decoded, labels = loaded.decoded()
    assert x.shape == (80, 1, 16, 16) and torch.equal(x, decoded) and torch.equal(y, labels)


# ---------------------------------------------------------------- the model queue

def make_queue(digits, **spec) -> ModelQueue:
    template = get_model("convnet", 1, 10, (16, 16), width=8)
    return ModelQueue(template, digits, QueueSpec(**{**dict(length=4, push_interval=2, train_nets=2, train_steps=1,
                                                            batch=16), **spec}))


def expected_serials(length, interval, iterations):
    """A plain simulation of the schedule: INITIAL_NETS nets, then one push at every multiple of the interval."""
    queue, born, out = [], 0, []
    for _ in range(min(INITIAL_NETS, length)):
        queue, born = queue + [born], born + 1
    for it in range(iterations):
        if it % interval == 0:
            queue = (queue[1:] if len(queue) == length else queue) + [born]
            born += 1
        out.append(list(queue))
    return out


def test_queue_push_pop_and_training_schedule(digits):
    q = make_queue(digits)
    assert [m.serial for m in q.members] == [0, 1, 2]
    want = expected_serials(4, 2, 9)
    for it in range(9):
        q.start_iteration(it)
        assert [m.serial for m in q.members] == want[it], it
        weights = {m.serial: copy.deepcopy(m.net.state_dict()) for m in q.members}
        steps = {m.serial: m.steps for m in q.members}
        picks = q.trained_at(it)
        assert len(picks) == 2 and len(set(picks)) == 2 and picks == q.trained_at(it)
        trained = {q.members[i].serial for i in picks}
        q.train(it)
        for m in q.members:
            changed = any(not torch.equal(v, m.net.state_dict()[k]) for k, v in weights[m.serial].items())
            assert changed == (m.serial in trained), (it, m.serial)
            assert m.steps == steps[m.serial] + (1 if m.serial in trained else 0)
            assert not any(p.requires_grad for p in m.net.parameters())  # frozen outside their training
    # a net's weights come from its serial number's stream, not from when or where it was made
    fresh = make_queue(digits)
    for _ in range(5):
        fresh.push()
    assert q.members[-1].serial == 7 and fresh.members[-1].serial == 7 and fresh.members[-1].steps == 0
    net = copy.deepcopy(q.template)
    net.reset_parameters(seeding.generator(0, seeding.QUEUE_NET_INIT, 7))
    for a, b in zip(net.parameters(), fresh.members[-1].net.parameters()):
        assert torch.equal(a, b)
    # the net drawn for matching is the same every time it is asked, and draws vary over iterations
    assert all(q.sample(it) is q.sample(it) for it in range(20))
    assert len({q.sample(it).serial for it in range(40)}) > 1


def test_queue_length_one_and_more_nets_than_held(digits):
    q = make_queue(digits, length=1, train_nets=1)
    assert [m.serial for m in q.members] == [0]
    q.start_iteration(0)
    assert [m.serial for m in q.members] == [1]
    q = make_queue(digits, length=5, train_nets=5)
    q.start_iteration(0)
    assert len(q) == 4 and sorted(q.trained_at(0)) == [0, 1, 2, 3]  # all held nets, each once


def test_queue_training_equals_a_plain_sgd_loop(digits):
    """One training round of a member = plain SGD (momentum 0.9, wd 5e-4) on its seeded real batches; the recorded
    accuracy is that of the round's logits before each step."""
    q = make_queue(digits, train_steps=3, batch=24, lr=0.05)
    q.start_iteration(0)
    for it in range(2):  # give the members some momentum first
        q.train(it)
    it = 2
    slot, index = 0, q.trained_at(it)[0]
    member = q.members[index]
    net = copy.deepcopy(member.net).requires_grad_(True)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    opt.load_state_dict(member.optimizer.state_dict())
    correct = seen = 0
    batches = list(q.real_batches(it, slot))
    assert len(batches) == 3 and all(len(y) == 24 for _, y in batches)
    for x, y in batches:
        net.train()
        logits = net(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
    q.train(it)
    assert member.accuracy == pytest.approx(correct / seen)
    for a, b in zip(net.parameters(), member.net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the batches are distinct images of any class, drawn from the whole training set
    x, y = batches[0]
    assert len(set(y.tolist())) > 3


# ---------------------------------------------------------------- the loss terms, recomputed class by class

@pytest.mark.parametrize("extra", [dict(), dict(cc=True, cm=True, **FEATNET), dict(factor=1, cm=True)],
                         ids=["idm", "idm+cc+cm", "idm-factor1+cm"])
def test_idm_loss_terms_equal_per_class_reference(digits, extra):
    run = Distiller(tiny(**extra), digits, options=CPU, progress=False)
    for _ in range(3):
        run.step()
    # iterations whose drawn net has been trained, so that the CE term is really weighted
    trained = [it for it in range(3, 30) if run.queue.sample(it).accuracy > 0][:3]
    assert len(trained) == 3
    check_against_reference(run, trained, atol=1e-6)


def test_ce_weighting(digits):
    """CE = accuracy-weighted class-mean cross-entropy; the total is dm + ce_weight * ce; ce_weight 0 drops it; a
    net before its first training round weighs 0."""
    run = Distiller(tiny(ce_weight=7.0), digits, options=CPU, progress=False)
    for _ in range(3):
        run.step()
    for record in run.history:
        assert record["loss"] == pytest.approx(record["dm"] + 7.0 * record["ce"], rel=1e-5)
        assert 0 <= record["net_accuracy"] <= 1 and (record["ce"] == 0) == (record["net_accuracy"] == 0)
    it = next(it for it in range(3, 30) if run.queue.sample(it).accuracy > 0)
    member = run.queue.sample(it)
    terms = run.loss_terms(it)
    unweighted = terms["ce"] / member.accuracy
    saved, member.accuracy = member.accuracy, 0.5
    torch.testing.assert_close(run.loss_terms(it)["ce"], 0.5 * unweighted)
    member.accuracy = saved
    assert run.history[0]["net_accuracy"] == 0.0 and run.history[0]["ce"] == 0.0  # nothing trained yet at step 0
    assert "ce" not in Distiller(tiny(ce_weight=0.0), digits, options=CPU, progress=False).loss_terms(0)


# ---------------------------------------------------------------- determinism and resume

def test_same_config_same_result_other_seed_differs(digits):
    a = distill(tiny(), digits, options=CPU, progress=False)
    b = distill(tiny(), digits, options=CPU, progress=False)
    c = distill(tiny(seed=1), digits, options=CPU, progress=False)
    assert torch.equal(a.images, b.images) and losses_of(a.history) == losses_of(b.history)
    assert not torch.equal(a.images, c.images)
    dm = distill(tiny(method="dm", factor=2), digits, options=CPU, progress=False)  # same init, other nets
    assert not torch.equal(a.images, dm.images)


def queue_state(run: Distiller):
    return [(m.serial, m.steps, m.accuracy, [p.clone() for p in m.net.parameters()]) for m in run.queue.members]


def test_resume_with_the_queue_equals_uninterrupted(digits, tmp_path):
    cfg = tiny(iterations=7, cc=True, cm=True, **FEATNET)  # pushes at 0, 2, 4, 6 and pops from the third on
    full = Distiller(cfg, digits, options=CPU, progress=False)
    for _ in range(7):
        full.step()
    ckpt = tmp_path / "part.pt"
    part = distill(dataclasses.replace(cfg, iterations=3), digits, checkpoint=ckpt, options=CPU, progress=False)
    assert len(part.history) == 3
    state = torch.load(ckpt, weights_only=True)
    assert state["iteration"] == 3 and len(state["queue"]["members"]) == 4
    resumed = distill(cfg, digits, checkpoint=ckpt, resume=True, options=CPU, progress=False)
    assert torch.equal(resumed.images, full.result().images)
    assert losses_of(resumed.history) == losses_of(full.history)
    reloaded = Distiller(cfg, digits, options=CPU, progress=False)
    reloaded.load_state_dict(torch.load(ckpt, weights_only=True))
    for (s1, n1, a1, p1), (s2, n2, a2, p2) in zip(queue_state(reloaded), queue_state(full)):
        assert (s1, n1, a1) == (s2, n2, a2)
        assert all(torch.equal(x, y) for x, y in zip(p1, p2))
    assert reloaded.queue.born == full.queue.born == 7


def test_a_step_gone_nan_at_a_push_leaves_the_queue_as_before_and_resumes_to_the_uninterrupted_result(
        digits, tmp_path, monkeypatch):
    """The non-finite stop checkpoints the state before the failing step, IDM's push of that iteration undone."""
    cfg = tiny(iterations=5)
    full = distill(cfg, digits, options=CPU, progress=False)
    real = Distiller.loss_terms

    def nan_at_push(self, iteration):  # iteration 2 pushes a net (push interval 2)
        terms = real(self, iteration)
        return {**terms, "dm": terms["dm"] * float("nan")} if iteration == 2 else terms

    monkeypatch.setattr(Distiller, "loss_terms", nan_at_push)
    ckpt = tmp_path / "ck.pt"
    with pytest.raises(ValueError, match="iteration 2: loss term 'dm' is nan"):
        distill(cfg, digits, checkpoint=ckpt, options=CPU, progress=False)
    state = torch.load(ckpt, weights_only=True)
    assert state["iteration"] == 2 and len(state["queue"]["members"]) == INITIAL_NETS + 1  # pushes at 0 only
    monkeypatch.undo()
    resumed = distill(cfg, digits, checkpoint=ckpt, resume=True, options=CPU, progress=False)
    assert torch.equal(resumed.images, full.images)
    assert losses_of(resumed.history) == losses_of(full.history)


def test_resume_from_other_queue_settings_names_the_field(digits, tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    distill(tiny(iterations=2), digits, checkpoint=ckpt, options=CPU, progress=False)
    with pytest.raises(ValueError, match="queue_train_steps"):
        distill(tiny(iterations=4, queue_train_steps=3), digits, checkpoint=ckpt, resume=True, options=CPU,
                progress=False)
    with pytest.raises(ValueError, match="method"):
        distill(tiny(iterations=4, method="dm"), digits, checkpoint=ckpt, resume=True, options=CPU, progress=False)


# ---------------------------------------------------------------- IPC 1: IDM makes CC and CM act; DM cannot

def test_ipc1_idm_has_live_cc_and_cm_while_dm_warns_and_is_inert(digits):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # IDM at IPC 1: 4 samples per class, nothing to warn about
        run = Distiller(tiny(ipc=1, cc=True, cm=True, **FEATNET), digits, options=CPU, progress=False)
    for _ in range(2):
        run.step()
    assert all(r["cc"] > 0 for r in run.history)
    terms = run.loss_terms(2)
    for name in ("cc", "cm"):
        grad = torch.autograd.grad(terms[name], run.images, retain_graph=True)[0]
        assert grad.abs().max() > 0, name

    with pytest.warns(UserWarning, match="ipc=1"):
        dm = Distiller(tiny(method="dm", ipc=1, cc=True, cm=True, **FEATNET), digits, options=CPU, progress=False)
    assert dm.factor == 1 and dm.samples_per_class == 1
    terms = dm.loss_terms(0)
    assert terms["cc"].item() == 0.0
    for name in ("cc", "cm"):
        grad = torch.autograd.grad(terms[name], dm.images, retain_graph=True, allow_unused=True)[0]
        assert grad is None or grad.abs().max() == 0, name
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # DM with partitioning also has 4 samples per class
        Distiller(tiny(method="dm", factor=2, ipc=1, cm=True), digits, options=CPU, progress=False)


# ---------------------------------------------------------------- method defaults and identity

def test_method_defaults_and_overrides():
    dm, idm = DistillConfig().resolved(), DistillConfig(method="idm").resolved()
    assert (dm.lr_img, dm.factor, dm.lambda_cc, dm.lambda_cm) == (1.0, 1, 0.001, 0.01)
    assert (idm.lr_img, idm.factor, idm.lambda_cc, idm.lambda_cm) == (0.2, 2, 0.01, 0.03)
    assert idm.cc_form == "simplified"
    mine = DistillConfig(method="idm", factor=4, lambda_cc=0.5, lr_img=0.7).resolved()
    assert (mine.factor, mine.lambda_cc, mine.lr_img, mine.lambda_cm) == (4, 0.5, 0.7, 0.03)
    assert DistillConfig(method="idm", cc=True).loss_weights() == {"dm": 1.0, "cc": 0.01, "cm": 0.03, "ce": 50.0}
    assert [c.label() for c in (DistillConfig(), DistillConfig(method="idm", cc=True, cm=True))] == ["DM", "IDM+CC+CM"]
    # switching the method keeps "method default" fields unset, so they follow the new method
    assert dataclasses.replace(DistillConfig(), method="idm").resolved().lr_img == 0.2


def test_identity_keeps_dm_keys_and_separates_idm_settings():
    dm = DistillConfig(dataset="cifar10", ipc=10)
    ident = dm.identity()
    assert not {"method", "factor", *IDM_FIELDS} & ident.keys()
    assert (ident["lr_img"], ident["lambda_cc"], ident["lambda_cm"]) == (1.0, 0.05, 0.01)
    # every field but the IDM ones (and the fields added later, at their defaults, which key as before they existed)
    assert set(ident) == ({f.name for f in dataclasses.fields(DistillConfig)}
                          - {"method", "factor", "queue", *OMITTED_AT_DEFAULT, *IDM_FIELDS})
    assert DistillConfig(dataset="cifar10", ipc=10, lr_img=1.0, queue=QueueSpec(length=7)).identity() == ident
    assert DistillConfig(dataset="cifar10", ipc=10, factor=2).identity()["factor"] == 2
    idm = DistillConfig(dataset="cifar10", ipc=10, method="idm").identity()
    assert idm["method"] == "idm" and idm["factor"] == 2 and set(IDM_FIELDS) <= idm.keys()
    assert DistillConfig(method="idm", queue=QueueSpec(length=7)).identity() != DistillConfig(method="idm").identity()
    # the nested queue appears flat, under the names (and so the cache keys) it had before it was nested
    assert {k: idm[k] for k in QUEUE_FIELDS} == {"queue_length": 100, "queue_push_interval": 30, "queue_train_nets": 2,
                                                 "queue_train_steps": 10, "queue_batch": 256, "queue_lr": 0.01}


def test_config_saved_with_flat_queue_settings_loads_into_the_nested_queue():
    nested = DistillConfig(method="idm", queue=QueueSpec(length=7, lr=0.5))
    flat = {k: v for k, v in canonical(nested).items() if k != "queue"} | {"queue_length": 7, "queue_lr": 0.5}
    assert config_from_dict(flat) == nested and config_from_dict(canonical(nested)) == nested
    assert canonical(nested)["queue"] == {"length": 7, "push_interval": 30, "train_nets": 2, "train_steps": 10,
                                          "batch": 256, "lr": 0.5}


def test_checkpoint_written_before_idm_still_resumes(digits, tmp_path):
    """A DM checkpoint whose config has no IDM fields (as written before IDM existed) and still holds the run options
    (as written before they left the config) resumes."""
    cfg = DistillConfig(dataset="digits", ipc=2, iterations=4, batch_real=8, net_width=8)
    full = distill(cfg, digits, options=CPU, progress=False)
    run = Distiller(dataclasses.replace(cfg, iterations=2), digits, options=CPU, progress=False)
    run.step()
    run.step()
    state = run.state_dict()
    state["config"] = {k: v for k, v in canonical(cfg).items() if k not in ("method", "factor", "queue", *IDM_FIELDS)}
    state["config"].update(lr_img=1.0, lambda_cc=0.05, lambda_cm=0.01, device="cpu", checkpoint_every=0,
                           real_chunk=32, compile="auto")
    torch.save(state, tmp_path / "old.pt")
    resumed = distill(cfg, digits, checkpoint=tmp_path / "old.pt", resume=True, options=CPU, progress=False)
    assert torch.equal(resumed.images, full.images)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("overrides, match", [
    (dict(method="idx"), "method must be one of"),
    (dict(factor=0), "factor must be an integer >= 1"),
    (dict(factor=-2), "factor must be an integer >= 1"),
    (dict(factor=3), r"factor 3 does not divide the 16x16 images of 'digits'; use one of \[1, 2, 4, 8, 16\]"),
    (dict(dataset="cifar10", factor=5), "factor 5 does not divide the 32x32"),
    (dict(queue_length=0), "queue_length must be an integer >= 1"),
    (dict(queue_train_nets=0), "queue_train_nets must be an integer >= 1"),
    (dict(queue_push_interval=0), "queue_push_interval must be an integer >= 1"),
    (dict(queue_push_interval=-3), "queue_push_interval must be an integer >= 1"),
    (dict(queue_train_steps=0), "queue_train_steps"),
    (dict(queue_batch=0), "queue_batch"),
    (dict(queue_lr=0.0), "queue_lr must be positive"),
    (dict(queue_length=2, queue_train_nets=3), r"queue_train_nets \(3\) cannot exceed queue_length \(2\)"),
    (dict(ce_weight=-1.0), "ce_weight must be >= 0"),
    (dict(lr_img=0.0), "lr_img must be positive"),
    (dict(lambda_cm=-0.1), "lambda_cm must be positive"),
])
def test_bad_idm_config_raises(overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny(**overrides)


def test_idm_needs_a_trainable_classifier_head(digits, monkeypatch):
    def headless(*args, **kwargs):
        net = get_model(*args, **kwargs)
        net.classifier = nn.Identity()
        return net

    monkeypatch.setattr(distill_module, "get_model", headless)
    with pytest.raises(ValueError, match="no trainable classifier head"):
        Distiller(tiny(), digits, options=CPU, progress=False)
    Distiller(tiny(method="dm"), digits, options=CPU, progress=False)  # DM never trains its nets: no head needed


def test_partitioned_init_needs_enough_real_images(digits):
    smallest = min(digits.class_count(c) for c in range(10))
    with pytest.raises(ValueError, match="real images to initialise from"):
        Distiller(tiny(ipc=smallest // 4 + 1), digits, options=CPU, progress=False)
    Distiller(tiny(ipc=smallest // 4 + 1, init="noise"), digits, options=CPU, progress=False)  # noise: no real images


# ---------------------------------------------------------------- command line

def test_cli_distills_with_idm(digits, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DISTILL_DATA", str(tmp_path / "no_data"))
    out = tmp_path / "s.pt"
    argv = ["distill", "--method", "idm", "--dataset", "digits", "--ipc", "1", "--iterations", "2", "--batch-real",
            "8", "--net-width", "8", "--queue-batch", "16", "--queue-train-steps", "1", "--lambda-cm", "0.5",
            "--device", "cpu", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    syn = SyntheticSet.load(out)
    assert syn.factor == 2 and syn.config["method"] == "idm" and syn.config["lambda_cm"] == 0.5
    assert syn.config["lr_img"] is None and config_from_dict(syn.config).resolved().lr_img == 0.2
    # the flat --queue-* flags fill the nested queue
    assert config_from_dict(syn.config).queue == QueueSpec(batch=16, train_steps=1)
    assert main(["distill", "--method", "idm", "--factor", "3", "--no-progress"]) == 2
    assert "factor 3 does not divide" in capsys.readouterr().err
    assert main(["distill", "--method", "idm", "--queue-length", "1", "--no-progress"]) == 2
    assert "queue_train_nets (2) cannot exceed queue_length (1)" in capsys.readouterr().err
    assert set(METHOD_DEFAULTS) == {"dm", "idm"}
