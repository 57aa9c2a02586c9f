"""Tests for distill_lib.sweep: cell caching (hit, miss, corrupt file), the set cache and its resumed checkpoints,
validation cells, the tidy records of a sweep, and the metrics of a cell's set."""
from dataclasses import replace

import pytest
import torch
from conftest import interrupt_step_at

from distill_lib import seeding, sweep
from distill_lib.analysis import set_metrics
from distill_lib.cache import DiskCache
from distill_lib.distill import DistillConfig, Distiller
from distill_lib.evaluate import EvalProtocol, evaluate, random_subset
from distill_lib.featnet import pretrain
from distill_lib.idm import QueueSpec
from distill_lib.options import RunOptions
from distill_lib.runner import distill
from distill_lib.sweep import Cell, cell_data, grid, pooled, run_cell, synthetic_set, synthetic_sets

BASE = DistillConfig(dataset="digits", ipc=2, iterations=3, batch_real=8, net_width=8)
PROTOCOL = EvalProtocol(epochs=1, num_models=1, device="cpu")


class Calls:
    """Counts the distillation steps and evaluations the sweep runs, by wrapping the library's functions."""

    def __init__(self, monkeypatch):
        self.steps = self.evaluations = 0
        step, evaluate_ = Distiller.step, sweep.evaluate

        def counting_step(run):
            self.steps += 1
            return step(run)

        def counting_evaluate(*args, **kwargs):
            self.evaluations += 1
            return evaluate_(*args, **kwargs)

        monkeypatch.setattr(Distiller, "step", counting_step)
        monkeypatch.setattr(sweep, "evaluate", counting_evaluate)


@pytest.fixture
def calls(monkeypatch, digits):
    return Calls(monkeypatch)


def test_identical_cell_is_a_hit_changed_cell_a_miss(calls):
    first = run_cell(Cell(BASE, PROTOCOL), verbose=False)
    assert (calls.steps, calls.evaluations) == (3, 1) and len(first.accuracies) == 1
    assert run_cell(Cell(BASE, PROTOCOL), verbose=False) == first  # hit: nothing recomputed
    assert (calls.steps, calls.evaluations) == (3, 1)

    other_protocol = run_cell(Cell(BASE, replace(PROTOCOL, epochs=2)), verbose=False)
    assert (calls.steps, calls.evaluations) == (3, 2)  # a new evaluation of the cached set
    assert other_protocol.protocol["epochs"] == 2

    run_cell(Cell(replace(BASE, lr_img=0.5), PROTOCOL), verbose=False)
    assert (calls.steps, calls.evaluations) == (6, 3)  # a changed distillation config: both recomputed


def test_cells_differing_only_in_run_options_are_one_cell_and_one_set(calls):
    """How a set is distilled (device, compile, chunking, checkpoints) is no part of what it is: one key, one cached
    set and one evaluation serve every choice of RunOptions."""
    other = RunOptions(device="cpu", compile="off", real_chunk=0, checkpoint_every=3)
    plain, tuned = Cell(BASE, PROTOCOL), Cell(BASE, PROTOCOL, options=other)
    assert plain.key() == tuned.key() and plain.config.identity() == tuned.config.identity()
    first = synthetic_set(tuned)
    assert calls.steps == 3
    assert torch.equal(synthetic_set(plain).images, first.images) and calls.steps == 3  # the cached set
    assert run_cell(tuned, verbose=False) == run_cell(plain, verbose=False) and calls.evaluations == 1


def test_cell_matches_distill_then_evaluate(digits, calls):
    expected = evaluate(distill(BASE, digits, progress=False), digits, PROTOCOL)
    assert run_cell(Cell(BASE, PROTOCOL), verbose=False).accuracies == expected.accuracies
    random = run_cell(Cell(BASE, PROTOCOL, method="random"), verbose=False)
    assert random.accuracies == evaluate(random_subset(digits, 2, 0), digits, PROTOCOL).accuracies


def test_init_cell_is_the_distillation_start(digits, calls):
    """'init' evaluates the images DM starts from: the Distiller's own draw, not the random subset's, and one cached
    cell serves every config that starts from the same images (another lr, more iterations, CC/CM on)."""
    start = synthetic_set(Cell(BASE, PROTOCOL, method="init"))
    assert torch.equal(start.images, Distiller(BASE, digits, progress=False).images.detach())
    assert not torch.equal(start.images, random_subset(digits, BASE.ipc, BASE.seed).images)
    assert calls.steps == 0
    first = run_cell(Cell(BASE, PROTOCOL, method="init"), verbose=False)
    again = run_cell(Cell(replace(BASE, lr_img=0.5, iterations=7, cm=True), PROTOCOL, method="init"), verbose=False)
    assert again == first and calls.evaluations == 1
    run_cell(Cell(replace(BASE, seed=1), PROTOCOL, method="init"), verbose=False)
    assert calls.evaluations == 2  # another seed draws other images


def test_idm_cell_set_keeps_its_partitions(digits):
    """A cached IDM set is the distilled one, factor included, so evaluation trains on the decoded tiles."""
    config = replace(BASE, method="idm", iterations=2,
                     queue=QueueSpec(length=2, push_interval=1, train_nets=1, train_steps=1, batch=8))
    cached = synthetic_set(Cell(config, PROTOCOL))
    direct = distill(config, digits, progress=False)
    assert cached.factor == direct.factor == 2
    assert torch.equal(cached.images, direct.images) and torch.equal(cached.decoded()[0], direct.decoded()[0])


def test_corrupt_cell_file_is_recomputed_with_a_warning(calls):
    cell = Cell(BASE, PROTOCOL)
    first = run_cell(cell, verbose=False)
    DiskCache("sweep").path(cell.key()).write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="unreadable"):
        again = run_cell(cell, verbose=False)
    assert again == first and calls.evaluations == 2
    assert calls.steps == 3  # the cached synthetic set was still good: only the evaluation was redone


def test_corrupt_set_file_is_redistilled_with_a_warning(calls):
    cell = Cell(BASE, PROTOCOL)
    first = synthetic_set(cell)
    DiskCache("synthetic").path({"config": cell.config.identity(), "validation": 0}).write_bytes(b"")
    with pytest.warns(UserWarning, match="unreadable"):
        again = synthetic_set(cell)
    assert torch.equal(again.images, first.images) and calls.steps == 6


def test_checkpoints_resume_to_the_uninterrupted_result(digits, calls):
    cell = Cell(replace(BASE, cm=True), PROTOCOL)
    sets = synthetic_sets(cell, [4, 2])
    assert sorted(sets) == [2, 4] and calls.steps == 4  # one run: 2 steps, saved, 2 more
    for n, syn in sets.items():
        direct = distill(replace(cell.config, iterations=n), digits, progress=False)
        assert torch.equal(syn.images, direct.images) and torch.equal(syn.labels, direct.labels)
        assert [h["loss"] for h in syn.history] == [h["loss"] for h in direct.history]
        assert syn.config["iterations"] == n and syn.mean == digits.mean
    assert calls.steps == 4 + 6  # the two direct runs

    longer = synthetic_sets(cell, [2, 4, 7])
    assert calls.steps == 10 + 3  # 2 and 4 cached; 7 resumed from 4
    assert torch.equal(longer[4].images, sets[4].images)
    assert torch.equal(synthetic_set(replace(cell, config=replace(cell.config, iterations=7))).images,
                       longer[7].images) and calls.steps == 13  # the plain cell is the same cache entry


def test_a_longer_cell_resumes_from_the_longest_cached_shorter_run(digits, calls):
    cell = Cell(replace(BASE, iterations=2), PROTOCOL)
    synthetic_sets(cell, [2, 4])
    assert calls.steps == 4

    def longer(n):
        return replace(cell, config=replace(cell.config, iterations=n))

    seven = synthetic_set(longer(7))  # a plain cell, as benchmarks ask: resumes from the 4 steps cached before
    assert calls.steps == 4 + 3
    assert torch.equal(seven.images, distill(replace(cell.config, iterations=7), digits, progress=False).images)
    calls.steps = 0
    DiskCache("synthetic").path({"config": longer(7).config.identity(), "validation": 0}).unlink()
    synthetic_set(longer(9))  # the listed 7-step set is gone: falls back to the 4-step one, no error
    assert calls.steps == 5


def test_an_interrupted_cell_resumes_from_its_last_snapshot(digits, calls, monkeypatch):
    """Every SNAPSHOT_EVERY iterations a cell's run caches its state (a shorter run's exact set): after Ctrl-C at
    iteration 7 with snapshots every 3, the rerun takes 9 - 6 steps and gives the uninterrupted set."""
    monkeypatch.setattr(sweep, "SNAPSHOT_EVERY", 3)
    cell = Cell(replace(BASE, iterations=9), PROTOCOL)
    counting_step = Distiller.step
    interrupt_step_at(monkeypatch, 7)
    with pytest.raises(KeyboardInterrupt):
        synthetic_set(cell)
    assert calls.steps == 7
    monkeypatch.setattr(Distiller, "step", counting_step)
    calls.steps = 0
    resumed = synthetic_set(cell)
    assert calls.steps == 3
    assert torch.equal(resumed.images, distill(cell.config, digits, progress=False).images)
    assert DiskCache("synthetic").get(sweep._lineage(cell)) == [3, 6, 9]


def test_synthetic_sets_rejects_bad_requests():
    with pytest.raises(ValueError, match="only 'distill' cells"):
        synthetic_sets(Cell(BASE, PROTOCOL, method="random"), [2])
    with pytest.raises(ValueError, match="iterations must be"):
        synthetic_sets(Cell(BASE, PROTOCOL), [0, 2])
    with pytest.raises(ValueError, match="iterations must be"):
        synthetic_sets(Cell(BASE, PROTOCOL), [])


def test_validation_cell_never_sees_the_test_set(digits, monkeypatch):
    seen = []
    evaluate_ = sweep.evaluate

    def spy(syn, data, protocol):
        seen.append(data)
        return evaluate_(syn, data, protocol)

    monkeypatch.setattr(sweep, "evaluate", spy)
    run_cell(Cell(BASE, PROTOCOL, validation=5), verbose=False)
    (data,) = seen
    assert len(data.y_test) == 5 * digits.num_classes  # tested on the held-out training images
    assert len(data.x_train) == len(digits.x_train) - 5 * digits.num_classes
    held_out = {tuple(x.flatten().tolist()) for x in data.x_test}
    assert not held_out & {tuple(x.flatten().tolist()) for x in data.x_train}
    assert torch.equal(cell_data(Cell(BASE, PROTOCOL, validation=5)).x_test, data.x_test)
    with pytest.raises(ValueError, match="validation must be >= 0"):
        Cell(BASE, PROTOCOL, validation=-1)


def test_sweep_records_one_tidy_row_per_config(calls):
    configs = grid(BASE, lr_img=[1.0, 0.5], seed=[0, 1])
    assert [(c.lr_img, c.seed) for c in configs] == [(1.0, 0), (1.0, 1), (0.5, 0), (0.5, 1)]
    records = sweep.sweep(configs[:2], PROTOCOL, verbose=False)
    assert [r["seed"] for r in records] == [0, 1] and all(r["validation"] == 0 for r in records)
    for record, config in zip(records, configs):
        result = run_cell(Cell(config, PROTOCOL), verbose=False)
        assert record["accuracies"] == result.accuracies
        assert record["mean"] == pytest.approx(result.mean) and record["std"] == pytest.approx(result.std)
    both = pooled([run_cell(Cell(c, PROTOCOL), verbose=False) for c in configs[:2]])
    assert both.accuracies == records[0]["accuracies"] + records[1]["accuracies"]
    assert calls.evaluations == 2  # the checks above were cache hits


def test_run_cells_mixes_methods_and_splits_in_order(calls):
    cells = [Cell(BASE, PROTOCOL, "random"), Cell(BASE, PROTOCOL), Cell(BASE, PROTOCOL, "init"),
             Cell(replace(BASE, seed=1), PROTOCOL, validation=4)]
    results = sweep.run_cells(cells, verbose=False)
    assert [r.accuracies for r in results] == [run_cell(c, verbose=False).accuracies for c in cells]
    assert calls.evaluations == 4  # the per-cell checks were cache hits
    assert sweep.run_cells([], verbose=False) == []


def test_choose_takes_the_best_candidate_on_validation_of_each_set(calls, monkeypatch):
    sets = [{1.0: BASE, 0.5: replace(BASE, lr_img=0.5)}, {0: BASE, 1: replace(BASE, seed=1), 2: replace(BASE, seed=2)}]
    picks = sweep.choose(sets, PROTOCOL, validation=4)
    for candidates, (best, scores) in zip(sets, picks):
        expected = {v: run_cell(Cell(c, PROTOCOL, validation=4), verbose=False) for v, c in candidates.items()}
        assert scores == expected  # validation cells (the held-out training images), not test cells
        assert best == max(expected, key=lambda v: expected[v].mean)
    assert calls.evaluations == 4  # BASE is one cell in both sets
    for bad, match in (([{1.0: BASE}], "validation split"), ([{}], "at least one candidate")):
        with pytest.raises(ValueError, match=match):
            sweep.choose(bad, PROTOCOL, validation=0 if match == "validation split" else 4)


def test_featnets_needed_once_per_data_split_spec_and_pool_seed():
    cc = replace(BASE, cc=True, featnet_recipe="default", featnet_arch="convnet", featnet_epochs=1,
                 featnet_per_class=20)
    cells = [Cell(replace(cc, lambda_cc=0.1), PROTOCOL), Cell(replace(cc, lambda_cc=0.2, cm=True), PROTOCOL),
             Cell(replace(cc, seed=1), PROTOCOL), Cell(cc, PROTOCOL, validation=5),
             Cell(replace(cc, featnet_pool=2), PROTOCOL),  # seeds 0 (already listed) and 1 (listed too)
             Cell(replace(cc, featnet_epochs=2), PROTOCOL),
             Cell(replace(cc, cc=False, match_net="featnet", featnet_epochs=3), PROTOCOL),  # DM in the feature net
             Cell(BASE, PROTOCOL), Cell(cc, PROTOCOL, method="random"), Cell(cc, PROTOCOL, method="init")]
    needed = sweep.featnets_needed(cells)
    assert [(cell.validation, spec.seed, spec.epochs) for cell, spec in needed] == [(0, 0, 1), (0, 1, 1), (5, 0, 1),
                                                                                   (0, 0, 2), (0, 0, 3)]
    assert needed[2][0] is cells[3]  # pretrained on that cell's data: the validation split


def test_sweep_pretrains_each_feature_net_once_before_the_cells(calls, monkeypatch):
    cc = replace(BASE, cc=True, featnet_recipe="default", featnet_arch="convnet", featnet_epochs=1,
                 featnet_per_class=20)
    order = []
    real_pretrain, real_run_cell = sweep.pretrain, sweep.run_cell

    def spy_pretrain(data, spec, *args, **kwargs):
        order.append(("pretrain", len(data.x_train), spec.seed))
        return real_pretrain(data, spec, *args, **kwargs)

    def spy_run_cell(cell, *args, **kwargs):
        order.append(("cell", cell.config.lambda_cc))
        return real_run_cell(cell, *args, **kwargs)

    monkeypatch.setattr(sweep, "pretrain", spy_pretrain)
    monkeypatch.setattr(sweep, "run_cell", spy_run_cell)
    n_train = len(cell_data(Cell(cc, PROTOCOL, validation=3)).x_train)
    sweep.sweep(grid(cc, lambda_cc=[0.1, 0.2]), PROTOCOL, validation=3, verbose=False)
    assert order == [("pretrain", n_train, 0), ("cell", 0.1), ("cell", 0.2)]
    order.clear()
    sweep.sweep(grid(cc, lambda_cc=[0.1, 0.2]), PROTOCOL, validation=3, verbose=False)
    assert order == []  # both cells cached: nothing to pretrain or run


def test_cell_metrics_in_the_cells_own_feature_net(digits):
    config = replace(BASE, featnet_recipe="default", featnet_arch="convnet", featnet_epochs=1, featnet_per_class=20)
    cell = Cell(config, PROTOCOL, validation=5)
    got = sweep.cell_metrics(cell, real_per_class=3)
    split = cell_data(cell)
    net, _ = pretrain(split, config.featnet_spec())  # trained on the split's training part, not on all of digits
    expected = set_metrics(synthetic_set(cell), split, net, 3, seeding.generator(config.seed, seeding.ANALYSIS_REAL))
    assert got == pytest.approx(expected)
    full_net, _ = pretrain(digits, config.featnet_spec())
    assert not torch.equal(next(net.parameters()), next(full_net.parameters()))


def test_cell_metrics_are_cached_per_set_feature_net_and_query_count(digits, monkeypatch):
    config = replace(BASE, featnet_recipe="default", featnet_arch="convnet", featnet_epochs=1, featnet_per_class=20)
    calls = []
    monkeypatch.setattr(sweep, "set_metrics", lambda *args: calls.append(args[3]) or {"spread_ratio": len(calls)})
    first = sweep.cell_metrics(Cell(config, PROTOCOL, validation=5), real_per_class=3)
    assert sweep.cell_metrics(Cell(config, replace(PROTOCOL, epochs=PROTOCOL.epochs + 1), validation=5),
                              real_per_class=3) == first  # another evaluation protocol: the same set, a hit
    assert calls == [3]
    sweep.cell_metrics(Cell(config, PROTOCOL, validation=5), real_per_class=4)  # more queries: a miss
    random_cell = Cell(config, PROTOCOL, "random", validation=5)
    sweep.cell_metrics(random_cell, real_per_class=3)
    sweep.cell_metrics(Cell(replace(config, featnet_epochs=2), PROTOCOL, "random", validation=5), real_per_class=3)
    assert calls == [3, 4, 3, 3]  # a random subset's key still names the feature net that measures it


def test_describe_names_factor_lr_img_ce_weight_lambdas_batch_real_and_init_only_where_they_depart_from_the_default():
    def label(**fields):
        return sweep.describe(Cell(DistillConfig(dataset="digits", ipc=2, **fields), PROTOCOL))

    assert label(method="idm", factor=1) == "digits ipc2 IDM (factor 1) 200 it seed0 (test)"
    assert label(method="dm", factor=2) == "digits ipc2 DM (factor 2) 200 it seed0 (test)"
    assert label(method="idm", factor=1, ce_weight=0.0, lr_img=1.0) == \
        "digits ipc2 IDM (factor 1) (lr_img 1) (ce_weight 0) 200 it seed0 (test)"
    assert label(batch_real=64, init="herding", lr_half_life=200) == \
        "digits ipc2 DM (lr half-life 200) (batch_real 64) (init herding) 200 it seed0 (test)"
    assert label(cc=True, cm=True, lambda_cc=0.003, featnet_recipe="default") == \
        "digits ipc2 DM+CC+CM (lambda_cc 0.003) 200 it seed0 (test)"
    assert label(cc=True) == "digits ipc2 DM+CC (feature nets convnet 6 ep x 1) 200 it seed0 (test)"
    assert label(method="idm", cm=True, lambda_cm=0.01) == "digits ipc2 IDM+CM (lambda_cm 0.01) 200 it seed0 (test)"
    plain = (label(method="idm") + label(method="idm", factor=2, lr_img=0.2) + label(method="dm", lr_img=1.0) +
             label(batch_real=256, init="real") +
             label(cc=True, cm=True, lambda_cc=0.001, lambda_cm=0.01, featnet_recipe="default") +
             label(lambda_cc=0.003, lambda_cm=0.5))
    assert "(" not in plain.replace("(test)", "")
