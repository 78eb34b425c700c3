"""The store against closed forms with one learner: numpy reference, dtypes, staleness."""

import numpy as np
import pytest
import torch
from conftest import MODES, reference_apply

import fastps

OPTIMIZERS = [
    dict(momentum=0.0, nesterov=False, weight_decay=0.0),
    dict(momentum=0.0, nesterov=False, weight_decay=0.01),
    dict(momentum=0.9, nesterov=False, weight_decay=0.0),
    dict(momentum=0.9, nesterov=True, weight_decay=0.01),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shards", [1, 3, 8])
@pytest.mark.parametrize(
    "opt", OPTIMIZERS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items())
)
def test_matches_numpy_reference_bitwise(mode, shards, opt):
    rng = np.random.default_rng(1)
    n = 1000  # not a multiple of 16: the last shard is short
    init = rng.standard_normal(n).astype(np.float32)
    with fastps.Store(init=init, shards=shards, mode=mode, lr=0.05, **opt) as store:
        h = store.learner()
        w, m = init.copy(), np.zeros(n, np.float32)
        for _ in range(6):
            g = rng.standard_normal(n).astype(np.float32)
            h.push(g)
            reference_apply(w, m, g, lr=0.05, **opt)
        np.testing.assert_array_equal(store.read(), w)
        out = np.empty(n, np.float32)
        h.pull(out)
        np.testing.assert_array_equal(out, w)
        st = store.stats()
        assert (st["clock"], st["pushes"], st["shard_updates"]) == (6, 6, 6 * shards)
        assert st["bytes_applied"] == 6 * n * 4
        assert st["versions"] == [6] * shards


def test_shards_are_contiguous_aligned_and_cover_the_vector():
    with fastps.Store(1000, shards=7) as store:
        ranges = store.shard_ranges()
        assert ranges[0][0] == 0 and ranges[-1][1] == 1000
        for (_b0, e0), (b1, _) in zip(ranges, ranges[1:]):
            assert e0 == b1
        assert all(b % 16 == 0 for b, _ in ranges)  # 64-byte aligned starts
        sizes = [e - b for b, e in ranges]
        assert max(sizes) - min(sizes) <= 16 + 1000 % 16


def test_default_shard_count_is_one_per_mib_capped():
    assert fastps.Store(1000).shards == 1
    assert fastps.Store(1 << 20, mode="locked").shards == 4
    assert fastps.Store(1 << 24, mode="locked").shards == 16


def test_init_and_size_and_zeros():
    with fastps.Store(5) as s:
        np.testing.assert_array_equal(s.read(), np.zeros(5, np.float32))
    with fastps.Store(init=[1, 2, 3]) as s:  # integers convert to float32
        assert s.size == 3
        np.testing.assert_array_equal(s.read(), [1, 2, 3])
    with fastps.Store(init=torch.arange(4.0)) as s:
        np.testing.assert_array_equal(s.read(), [0, 1, 2, 3])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_half_precision_gradients_are_widened_exactly(mode, half):
    n = 777
    rng = np.random.default_rng(2)
    tdtype = getattr(torch, half)
    # Normal values, exact zeros, negative zero and (float16) subnormals.
    g = torch.from_numpy(rng.standard_normal(n).astype(np.float32)).to(tdtype)
    g[:5] = torch.tensor([0.0, -0.0, 1e-7, -3e-6, 65504.0 if half == "float16" else 3e38])
    wide = g.to(torch.float32).numpy()
    init = rng.standard_normal(n).astype(np.float32)
    results = []
    for grad in (g, wide):
        with fastps.Store(init=init, shards=3, mode=mode, lr=0.25) as store:
            store.learner().push(grad)
            results.append(store.read())
    np.testing.assert_array_equal(results[0], results[1])
    if half == "float16":  # numpy float16 arrays take the same path
        with fastps.Store(init=init, shards=3, mode=mode, lr=0.25) as store:
            store.learner().push(g.numpy())
            np.testing.assert_array_equal(store.read(), results[1])


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_every_half_precision_bit_pattern_widens_like_torch(half):
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    g = bits.view(getattr(torch, half))
    with fastps.Store(g.numel(), lr=1.0, mode="locked", nan_guard="off") as store:
        store.learner().push(g)  # w = 0 - 1 * g (NaN and Inf patterns too: guard off)
        got = store.read()
    with np.errstate(invalid="ignore"):  # signalling NaN patterns
        want = np.zeros(g.numel(), np.float32) - np.float32(1.0) * g.to(torch.float32).numpy()
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


@pytest.mark.parametrize("mode", MODES)
def test_torch_tensors_in_and_out(mode):
    with fastps.Store(init=np.arange(64, dtype=np.float32), mode=mode, lr=0.5) as store:
        h = store.learner()
        p = torch.nn.Parameter(torch.zeros(64))  # requires_grad: pulled into in place
        assert h.pull(p) is p
        assert torch.equal(p.detach(), torch.arange(64.0))
        h.push(torch.ones(64))
        out = torch.empty(64)
        store.read(out)
        assert torch.equal(out, torch.arange(64.0) - 0.5)


def test_dlpack_and_buffer_protocol_objects():
    with fastps.Store(8, lr=1.0) as store:
        h = store.learner()
        h.push(memoryview(np.ones(8, np.float32)))
        h.push(torch.ones(8, dtype=torch.float64).float())
        np.testing.assert_array_equal(store.read(), -2 * np.ones(8))
        out = bytearray(32)  # any writeable buffer of 8 float32
        h.pull(np.frombuffer(out, np.float32))
        np.testing.assert_array_equal(np.frombuffer(out, np.float32), -2 * np.ones(8))


@pytest.mark.parametrize("mode", MODES)
def test_scripted_interleaving_gives_tau_zero_then_one(mode):
    shards = 4
    with fastps.Store(256, shards=shards, mode=mode) as store:
        h1, h2 = store.learner(), store.learner()
        out = np.empty(256, np.float32)
        h1.pull(out)
        h2.pull(out)
        h1.push(np.ones(256, np.float32))
        h2.push(np.ones(256, np.float32))
        hist = store.stats()["staleness_hist"]
        assert hist[0] == shards and hist[1] == shards and sum(hist) == 2 * shards


@pytest.mark.parametrize("mode", MODES)
def test_staleness_sequence_and_overflow_bin(mode):
    """One reader, then k pushes from a second handle: the reader's push has tau = k."""
    bins = 4
    with fastps.Store(64, shards=2, mode=mode, staleness_bins=bins) as store:
        stale, fresh = store.learner(), store.learner()
        buf = np.empty(64, np.float32)
        expected = [0] * (bins + 1)
        for k in [0, 1, 3, 4, 9]:
            stale.pull(buf)
            for _ in range(k):
                fresh.pull(buf)
                fresh.push(np.zeros(64, np.float32))
            stale.push(np.zeros(64, np.float32))
            expected[0] += 2 * k  # the fresh pushes
            expected[min(k, bins)] += 2
        assert store.stats()["staleness_hist"] == expected
        assert stale.read_version(0) == store.stats()["versions"][0] - 9 - 1


def test_push_without_pull_is_stale_by_the_whole_history():
    with fastps.Store(32, mode="leashed") as store:
        a, b = store.learner(), store.learner()
        for _ in range(3):
            a.push(np.zeros(32, np.float32))
        b.push(np.zeros(32, np.float32))  # never pulled: computed on version 0
        assert store.stats()["staleness_hist"][:4] == [1, 1, 1, 1]


def test_leashed_slots_return_to_the_pool():
    with fastps.Store(4096, shards=4, mode="leashed", max_learners=2) as store:
        h = store.learner()
        buf = np.empty(4096, np.float32)
        for _ in range(50):
            h.pull(buf)
            h.push(buf)
        st = store.stats()
        assert st["slots_in_use"] == 4  # exactly the published version of each shard
        assert st["slots_touched"] == 2  # a single learner alternates between two slots


def test_learner_limit_and_close_frees_a_place():
    with fastps.Store(16, max_learners=2) as store:
        a = store.learner()
        b = store.learner()
        with pytest.raises(
            RuntimeError, match=r"learner: 2 handles are open, the store's max_learners is 2"
        ):
            store.learner()
        assert store.stats()["learners"] == 2
        a.close()
        c = store.learner()
        assert store.stats()["learners"] == 2
        b.close()
        c.close()
        assert store.stats()["learners"] == 0


def test_repr_and_config():
    with fastps.Store(100, mode="locked", lr=0.5, momentum=0.5) as s:
        assert repr(s) == "fastps.Store(size=100, shards=1, mode='locked')"
        assert s.config["lr"] == 0.5 and s.config["momentum"] == 0.5
    assert "closed" in repr(s)
    assert fastps.cuda_available() is False or fastps.built_with_cuda
