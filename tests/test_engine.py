"""The local engine: exactly-once sample order, accumulation arithmetic, chunking independence, learning.

References: a BN-free model trained with one 64-sample micro-batch per step must match the same model trained
with two 32-sample micro-batches per step (the gradient of the mean loss over the same 64 samples), and any
split of an epoch into chunks must give bit-identical parameters.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from absa_cli.data.order import EpochOrder, derive_seed, probe_indices
from absa_cli.worker.audit import SampleAudit
from absa_cli.worker.engine import Engine
from absa_cli.decide.geometry import BatchGeometry, samples_in_epoch, steps_in_epoch


def test_epoch_order_is_a_seeded_permutation():
    first, again, other_epoch = EpochOrder(7, 3, 1000), EpochOrder(7, 3, 1000), EpochOrder(7, 4, 1000)
    assert torch.equal(first.indices, again.indices) and torch.equal(first.aug_seeds, again.aug_seeds)
    assert not torch.equal(first.indices, other_epoch.indices)
    assert torch.equal(first.indices.sort().values, torch.arange(1000))


def test_positions_cover_the_epoch_in_full_batches_and_refuse_a_short_one():
    order = EpochOrder(0, 0, 1000)
    seen, position = [], 0
    for _ in range(steps_in_epoch(1000, 128)):
        span = order.positions(position, 128)
        seen.append(order.indices[span])
        position = span.stop
    assert steps_in_epoch(1000, 128) == 7 and samples_in_epoch(1000, 128) == 896 == position
    assert all(len(batch) == 128 for batch in seen)
    tail = order.indices[position:]
    assert torch.equal(torch.cat([*seen, tail]).sort().values, torch.arange(1000))  # applied + dropped: all, once
    with pytest.raises(ValueError, match="104 samples left at position 896, fewer than a global batch of 128"):
        order.positions(position, 128)


def test_derive_seed_mixes():
    assert derive_seed(1, 2) != derive_seed(2, 1) and derive_seed(0) != derive_seed(0, 0)
    assert 0 <= derive_seed(123, 456) < 2**63


def _engine_without_batchnorm(config) -> Engine:
    engine = Engine(config, device=torch.device("cpu"))
    torch.manual_seed(0)
    engine.model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 32), nn.Tanh(), nn.Linear(32, 10)).double()
    engine.train_set.get_batch = _as_double(engine.train_set.get_batch)
    engine.optimizer = torch.optim.SGD(engine.model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    return engine


def _as_double(get_batch):
    def wrapped(indices, seeds):
        inputs, labels = get_batch(indices, seeds)
        return inputs.double(), labels
    return wrapped


def _params(engine: Engine) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in engine.model.parameters()])


def test_accumulation_equals_one_big_micro_batch(tiny_config):
    whole, accumulated = _engine_without_batchnorm(tiny_config), _engine_without_batchnorm(tiny_config)
    lrs = [0.05] * 4
    whole.train_chunk(0, 0, lrs, BatchGeometry(64, 1, 64, 1))
    accumulated.train_chunk(0, 0, lrs, BatchGeometry(64, 1, 32, 2))
    assert torch.allclose(_params(whole), _params(accumulated), atol=1e-10, rtol=0)
    assert not torch.allclose(_params(whole), _params(_engine_without_batchnorm(tiny_config)))  # it trained


def test_fgsm_samples_do_not_depend_on_how_the_batch_is_cut(tiny_config):
    """0.1 of every base batch of 64 is attacked: positions 0-5 of each step, whatever the micro-batches. Counted
    per micro-batch instead, the cuts below would attack 1 sample at each of 0, 16, 32, 48 against 3 at each of
    0, 32, and the weights would differ. (No BatchNorm: its batch statistics depend on the cut by themselves.)"""
    sixteens, thirty_twos = _engine_without_batchnorm(tiny_config), _engine_without_batchnorm(tiny_config)
    lrs = [0.05] * 4
    sixteens.train_chunk(0, 0, lrs, BatchGeometry(64, 1, 16, 4), adv_ratio=0.1)
    thirty_twos.train_chunk(0, 0, lrs, BatchGeometry(64, 1, 32, 2), adv_ratio=0.1)
    assert torch.allclose(_params(sixteens), _params(thirty_twos), atol=1e-10, rtol=0)
    clean = _engine_without_batchnorm(tiny_config)
    clean.train_chunk(0, 0, lrs, BatchGeometry(64, 1, 32, 2))
    assert not torch.allclose(_params(clean), _params(thirty_twos), atol=1e-10, rtol=0)  # the attack mattered


def test_chunking_does_not_change_the_result(tiny_config):
    geometry = BatchGeometry(64, 1, 32, 2)
    one_go, in_pieces = Engine(tiny_config), Engine(tiny_config)
    stats = one_go.train_chunk(0, 0, [0.05] * 4, geometry)
    first = in_pieces.train_chunk(0, 0, [0.05] * 3, geometry)
    second = in_pieces.train_chunk(0, 3 * 64, [0.05], geometry)
    assert stats.samples == first.samples + second.samples == 256
    for a, b in zip(one_go.model.state_dict().values(), in_pieces.model.state_dict().values()):
        assert torch.equal(a, b)


def test_engine_learns_and_evaluates(tiny_config):
    engine = Engine(tiny_config)
    before = engine.evaluate()
    geometry = BatchGeometry(64, 1, 32, 2)
    losses = [engine.train_chunk(epoch, 0, [0.05] * 4, geometry) for epoch in range(4)]
    after = engine.evaluate()
    assert before.samples == after.samples == 128
    first, last = losses[0].loss_sum / losses[0].samples, losses[-1].loss_sum / losses[-1].samples
    assert last < first, (first, last)


def test_state_dict_round_trip(tiny_config):
    source, target = Engine(tiny_config), Engine(tiny_config)
    source.train_chunk(0, 0, [0.05] * 2, BatchGeometry(64, 1, 32, 2))
    target.load_state_dict(source.state_dict())
    for a, b in zip(source.model.state_dict().values(), target.model.state_dict().values()):
        assert torch.equal(a, b)
    assert source.optimizer.state_dict()["state"].keys() == target.optimizer.state_dict()["state"].keys()


def test_a_probe_changes_no_training_state(tiny_config, one_thread):
    """The probe reads the model and its own samples only: training with a probe between two chunks ends bitwise as
    training without it, BatchNorm statistics and every momentum buffer included. (So where the batch schedule
    does not depend on λ, e.g. growth forced by policy.duration=1, a run trains the same model whatever its probe's
    batch.)"""
    geometry = BatchGeometry(64, 1, 32, 2)
    finals = []
    for probed in (True, False):
        engine = Engine(tiny_config)
        engine.train_chunk(0, 0, [0.05] * 4, geometry, adv_ratio=0.1)
        if probed:
            assert engine.probe(0).eigenvalue > 0
        engine.train_chunk(1, 0, [0.05] * 4, geometry, adv_ratio=0.1)
        momentum = {f"momentum {i}": s["momentum_buffer"] for i, s in engine.optimizer.state_dict()["state"].items()}
        finals.append({**engine.model.state_dict(), **momentum})
    assert finals[0].keys() == finals[1].keys() and len(finals[0]) > len(engine.model.state_dict())
    assert all(torch.equal(finals[0][key], finals[1][key]) for key in finals[0])


def _small_probe(config, **fields):
    import dataclasses

    return dataclasses.replace(config, probe=dataclasses.replace(config.probe, batch_size=32, **fields))


def test_the_probe_starts_warm_from_the_last_eigenvector_and_the_state_carries_it(tiny_config, one_thread):
    """The second probe starts from the first's eigenvector and finds λ_max to the probe's tolerance; the vector
    travels in the state, so an engine restored from it probes bit for bit like the original."""
    from absa_cli.curvature import HessianOperator, lanczos

    tiny_config = _small_probe(tiny_config)
    engine = Engine(tiny_config)
    assert tiny_config.probe.warm_start and engine.probe_start is None and "probe_start" not in engine.state_dict()
    engine.train_chunk(0, 0, [0.05] * 2, BatchGeometry(64, 1, 32, 2))
    engine.probe(0)
    assert engine.probe_start is not None and engine.probe_start.shape == (sum(p.numel() for p in
                                                                              engine.model.parameters()),)
    engine.train_chunk(1, 0, [0.05] * 2, BatchGeometry(64, 1, 32, 2))
    state = engine.state_dict()
    assert torch.equal(state["probe_start"], engine.probe_start)
    restored = Engine(tiny_config)
    restored.load_state_dict(state)
    warm, again = engine.probe(1), restored.probe(1)
    assert (warm.eigenvalue, warm.hvp_count) == (again.eigenvalue, again.hvp_count)
    assert torch.equal(engine.probe_start, restored.probe_start)
    # against a converged reference of the same weights: λ_max within the probe's tolerance
    probe = tiny_config.probe
    operator = HessianOperator(restored.model, torch.nn.functional.cross_entropy, restored.probe_batches())
    reference = lanczos(operator, k=1, max_iter=60, tol=1e-8, seed=probe.seed)
    assert reference.converged and warm.eigenvalue == pytest.approx(reference.eigenvalues[0], rel=probe.tol)


def test_without_warm_starts_each_probe_starts_from_a_vector_drawn_for_its_epoch(tiny_config, one_thread):
    """A cold start draws a fresh Gaussian at every probe, as the reference does, from (probe.seed, epoch): the same
    epoch's probe is repeatable (a resumed run probes as the uninterrupted one), another epoch's starts elsewhere."""
    engine = Engine(_small_probe(tiny_config, warm_start=False, max_iter=3))
    first, again, later = engine.probe(4), engine.probe(4), engine.probe(5)
    assert engine.probe_start is None and "probe_start" not in engine.state_dict()
    assert (first.eigenvalue, first.hvp_count) == (again.eigenvalue, again.hvp_count)
    assert later.eigenvalue != first.eigenvalue  # same weights and samples, another start: not converged alike


def test_a_recheck_probes_new_samples_from_a_new_start_and_leaves_the_warm_start(tiny_config, one_thread):
    """A recheck (policy.recheck; draw k > 0) reads samples and a start vector drawn from (probe.seed, epoch, k),
    whatever probe.data and probe.warm_start say, repeatably; the warm start stays what the epoch's probe left."""
    engine = Engine(_small_probe(tiny_config, max_iter=3))  # the quickstart's probe: fixed set, warm starts
    first = engine.probe(3)
    vector = engine.probe_start.clone()
    recheck, again = engine.probe(3, draw=1), engine.probe(3, draw=1)
    assert torch.equal(engine.probe_start, vector)
    assert (recheck.eigenvalue, recheck.hvp_count) == (again.eigenvalue, again.hvp_count)
    assert recheck.eigenvalue != first.eigenvalue
    inputs = lambda epoch, draw: engine.curvature.batches(engine.ctx, epoch, draw)[0][0]  # noqa: E731
    expected, _ = engine.train_set.get_batch(probe_indices(256, 32, 1, 0, 3, 1)[0], None)
    assert torch.equal(inputs(3, 1), expected)
    assert not torch.equal(inputs(3, 1), inputs(3, 0))  # draw 0: the fixed set
    assert not torch.equal(inputs(3, 1), inputs(3, 2)) and not torch.equal(inputs(3, 1), inputs(4, 1))
    # a fresh probe's own draw is (seed, epoch), as before rechecks existed: runs probe as they did
    assert torch.equal(probe_indices(256, 32, 1, 0, 3, 0)[0], probe_indices(256, 32, 1, 0, 3)[0])


def test_fresh_probe_data_is_drawn_per_epoch_and_fixed_data_is_not(tiny_config, one_thread):
    fresh = Engine(_small_probe(tiny_config, data="fresh"))
    fixed = Engine(_small_probe(tiny_config))
    labels = lambda engine, epoch: engine.probe_batches(epoch)[0][1]  # noqa: E731
    assert torch.equal(labels(fresh, 3), labels(fresh, 3))
    assert not torch.equal(labels(fresh, 3), labels(fresh, 4))
    assert torch.equal(labels(fixed, 3), labels(fixed, 4)) and torch.equal(labels(fixed, 3), labels(fixed, None))
    inputs = fresh.probe_batches(3)[0][0]
    expected, _ = fresh.train_set.get_batch(probe_indices(256, 32, 1, 0, 3)[0], None)  # unaugmented
    assert torch.equal(inputs, expected)


def test_an_epochs_tail_is_recorded_as_dropped_in_the_sample_audit(tiny_config, tmp_path):
    """250 samples at a global batch of 64: three steps apply 192, the last 58 are dropped, and the audit log says
    which, so applied + dropped is every sample of the epoch exactly once."""
    import dataclasses
    import json

    config = dataclasses.replace(tiny_config, data=dataclasses.replace(tiny_config.data, train_size=250))
    engine = Engine(config)
    engine.audit = SampleAudit(tmp_path / "audit.jsonl")
    geometry = BatchGeometry(64, 1, 32, 2)
    assert engine.train_chunk(0, 0, [0.05] * 2, geometry).samples == 128
    assert engine.train_chunk(0, 128, [0.05], geometry).samples == 64
    with pytest.raises(ValueError, match="fewer than a global batch"):
        engine.train_chunk(0, 192, [0.05], geometry)
    engine.audit.close()
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    applied = [i for r in records if "batch" in r for i in r["batch"]]
    (dropped,) = [r for r in records if "dropped" in r]
    assert dropped["start"] == 192 and len(dropped["dropped"]) == 58
    assert sorted(applied + dropped["dropped"]) == list(range(250))


def _norm_buffers(engine: Engine) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in engine.model.state_dict().items() if "running" in k or "num_batches" in k}


def test_batchnorm_statistics_without_accumulation_are_pytorchs_own(tiny_config):
    """One worker, one micro-batch per step: the rule reduces to PyTorch's momentum update."""
    engine = Engine(tiny_config)
    reference = copy.deepcopy(engine.model)
    geometry = BatchGeometry(64, 1, 64, 1)
    engine.train_chunk(0, 0, [0.0], geometry)  # LR 0: only the statistics move
    order = engine.epoch_order(0)
    inputs, _ = engine.train_set.get_batch(order.indices[:64], order.aug_seeds[:64])
    reference.train()
    with torch.no_grad():
        reference(inputs)
    expected = {k: v for k, v in reference.state_dict().items() if "running" in k or "num_batches" in k}
    assert expected and expected.keys() == _norm_buffers(engine).keys()
    for name, value in _norm_buffers(engine).items():
        assert torch.equal(value, expected[name]), name


def test_batchnorm_statistics_move_once_per_step_with_the_micro_batch_mean(tiny_config):
    """With accumulation, every micro-batch updates from the step's start and the step keeps the mean, so the
    statistics do not depend on how the global batch is cut (workers × accumulation)."""
    engine = Engine(tiny_config)
    start = copy.deepcopy(engine.model)
    engine.train_chunk(0, 0, [0.0], BatchGeometry(64, 1, 32, 2))
    order = engine.epoch_order(0)
    updated = []
    for part in (slice(0, 32), slice(32, 64)):
        model = copy.deepcopy(start).train()
        inputs, _ = engine.train_set.get_batch(order.indices[part], order.aug_seeds[part])
        with torch.no_grad():
            model(inputs)
        updated.append(model.state_dict())
    for name, value in _norm_buffers(engine).items():
        if "num_batches" in name:
            assert int(value) == 1, name  # one step, one update
        else:
            assert torch.allclose(value, (updated[0][name] + updated[1][name]) / 2, atol=1e-7, rtol=1e-6), name


def test_a_stop_request_ends_the_chunk_after_the_step_in_progress(tiny_config):
    engine = Engine(tiny_config)
    geometry = BatchGeometry(64, 1, 32, 2)
    first = engine.train_chunk(0, 0, [0.05] * 2, geometry)
    engine.stop_requested = True
    cut = engine.train_chunk(0, 128, [0.05] * 2, geometry)
    assert (first.steps, first.samples) == (2, 128)
    assert (cut.steps, cut.samples) == (1, 64) and engine.position == (0, 192)


class _DeadPeer:
    """A group whose all-reduce fails, as gloo's does when a peer dies mid-step."""

    world_size, rank = 2, 0

    def all_reduce_mean(self, tensors):
        raise RuntimeError("Connection closed by peer")

    all_reduce_sum = all_reduce_mean


@pytest.mark.parametrize("geometry", [BatchGeometry(64, 2, 16, 2), BatchGeometry(64, 2, 32, 1)],
                         ids=["accumulating", "one-micro-batch"])
def test_a_step_that_fails_in_the_all_reduce_leaves_weights_and_statistics_untouched(tiny_config, geometry):
    """With one micro-batch per rank the statistics the forward moved are all-reduced in place (NormStep's single
    path): a failed step must still put back the step's starting values."""
    engine = Engine(tiny_config)
    before = {k: v.clone() for k, v in engine.model.state_dict().items()}
    engine.set_context(_DeadPeer())
    try:
        engine.train_chunk(0, 0, [0.05], geometry)
    except RuntimeError as exc:
        assert "peer" in str(exc)
    else:
        raise AssertionError("the step should have failed")
    for name, value in engine.model.state_dict().items():
        assert torch.equal(value, before[name]), name  # BatchNorm buffers included


@pytest.mark.parametrize("micro_batches", [1, 2])
def test_a_step_counts_one_batch_for_every_batchnorm_however_often_the_forward_ran_it(micro_batches):
    """num_batches_tracked moves by one per step (the start + 1) on both of NormStep's paths, also for a BatchNorm
    the forward runs twice (shared) or never (unused); with momentum=None it weights the next update."""
    from absa_cli.worker.norms import NormBuffers, NormStep, tracked_norms

    shared, unused = torch.nn.BatchNorm1d(3, momentum=None), torch.nn.BatchNorm1d(3)
    norms = tracked_norms(torch.nn.ModuleList([shared, unused]))
    step = NormStep(NormBuffers(norms), micro_batches=micro_batches)
    for _ in range(micro_batches):
        step.before_forward()
        shared(shared(torch.randn(8, 3)))
        step.after_forward()
    step.apply()
    assert [int(m.num_batches_tracked) for m in norms] == [1, 1]


def test_norm_buffers_follow_statistics_tensors_that_were_replaced():
    """``model.double()`` (like ``.to(...)`` or ``load_state_dict(assign=True)``) puts new tensors in the modules:
    the step must restore and average those, not the ones the buffers were made from."""
    from absa_cli.worker.norms import NormBuffers, NormStep, tracked_norms

    torch.manual_seed(0)
    norm = torch.nn.BatchNorm1d(3)
    buffers = NormBuffers(tracked_norms(norm))
    norm.double()
    inputs = [torch.randn(8, 3, dtype=torch.float64) for _ in range(2)]
    step = NormStep(buffers, micro_batches=2)
    for x in inputs:
        step.before_forward()
        norm(x)
        step.after_forward()
    step.apply()
    alone = [torch.nn.BatchNorm1d(3).double() for _ in inputs]  # each micro-batch's update from the same start
    for module, x in zip(alone, inputs):
        module(x)
    assert torch.allclose(norm.running_mean, (alone[0].running_mean + alone[1].running_mean) / 2, atol=0, rtol=1e-15)
    assert torch.allclose(norm.running_var, (alone[0].running_var + alone[1].running_var) / 2, atol=0, rtol=1e-15)
    assert int(norm.num_batches_tracked) == 1
