"""The transfer pipeline on the CPU copy engine: the same chunking, ordering, overlap and
buffer-reuse code that moves CUDA tensors, run on host memory with a copy thread."""

import os

import numpy as np
import pytest
import torch
from conftest import CONSISTENT, MODES, run_threads

import fastps
from fastps import _core

SIZE = 1000  # not a multiple of any chunk below


def _grads(count, size=SIZE, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(size).astype(np.float32) for _ in range(count)]


def _run(store, grads, **transfer):
    """Pull, push each gradient in turn, pull again; returns the final pull."""
    h = store.learner()
    if transfer:
        h.configure_transfer(engine="cpu", **transfer)
    out = np.empty(store.size, np.float32)
    for g in grads:
        h.pull(out)
        h.push(g)
    h.pull(out)
    h.close()
    return out


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("chunk_bytes, ring", [(64, 1), (64, 2), (256, 5), (4 << 20, 2)])
def test_chunked_push_and_pull_equal_the_plain_path_bitwise(mode, chunk_bytes, ring):
    kw = dict(mode=mode, lr=0.1, momentum=0.9, weight_decay=0.01, shards=3)
    init = np.linspace(-1, 1, SIZE, dtype=np.float32)
    grads = _grads(4)
    with fastps.Store(init=init, **kw) as plain, fastps.Store(init=init, **kw) as piped:
        want = _run(plain, grads)
        got = _run(piped, grads, chunk_bytes=chunk_bytes, ring=ring)
        np.testing.assert_array_equal(got, want)
        assert piped.stats()["versions"] == plain.stats()["versions"] == [4, 4, 4]


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_half_precision_gradients_through_the_pipeline(half):
    g32 = torch.from_numpy(_grads(1)[0])
    g = g32.to(getattr(torch, half))
    with (
        fastps.Store(SIZE, lr=1.0, shards=2) as plain,
        fastps.Store(SIZE, lr=1.0, shards=2) as piped,
    ):
        plain.learner().push(g)
        h = piped.learner()
        h.configure_transfer(engine="cpu", chunk_bytes=128)
        h.push(g)
        np.testing.assert_array_equal(piped.read(), plain.read())
        np.testing.assert_array_equal(piped.read(), -g.float().numpy())


def _edge_values():
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32)
    special = np.array(
        [
            0.0,
            -0.0,
            1.0,
            -1.0,
            np.inf,
            -np.inf,
            65504.0,
            65520.0,
            65519.99,
            6.1e-5,
            5.96e-8,
            2.98e-8,
            1e-10,
            3.0e38,
            1.0 + 2**-11,
            1.0 + 3 * 2**-11,
            1.0 + 2**-8,
            1.0 + 3 * 2**-8,
        ],
        np.float32,
    )
    v = np.concatenate([bits.view(np.float32), special])
    return v[~np.isnan(v)]


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_half_precision_pull_narrows_like_torch(half):
    values = _edge_values()
    with fastps.Store(init=values, shards=3, nan_guard="off") as store:
        h = store.learner()
        h.configure_transfer(engine="cpu", chunk_bytes=512)
        out = torch.empty(values.size, dtype=getattr(torch, half))
        h.pull(out)
        want = torch.from_numpy(values).to(getattr(torch, half))
        assert torch.equal(out.view(torch.int16), want.view(torch.int16))


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_nan_stays_nan_when_narrowed(half):
    # torch itself writes different NaN payloads on different paths: only NaN-ness is pinned.
    with fastps.Store(init=np.array([np.nan, -np.nan, 1.0], np.float32), nan_guard="off") as st:
        h = st.learner()
        h.configure_transfer(engine="cpu")
        out = torch.empty(3, dtype=getattr(torch, half))
        h.pull(out)
        assert out.float().isnan().tolist() == [True, True, False] and out[2].item() == 1.0


@pytest.mark.parametrize("td", ["float16", "bfloat16"])
def test_transfer_dtype_narrows_gradients_and_pulls(td):
    g = _grads(1)[0]
    half = torch.from_numpy(g).to(getattr(torch, td))
    with fastps.Store(SIZE, lr=1.0, shards=2) as store:
        h = store.learner()
        h.configure_transfer(engine="cpu", transfer_dtype=td, chunk_bytes=256)
        h.push(g)  # float32 in, narrowed before the copy
        np.testing.assert_array_equal(store.read(), -half.float().numpy())
        out = np.empty(SIZE, np.float32)
        h.pull(out)  # narrowed on the CPU, widened after the copy
        np.testing.assert_array_equal(out, -half.float().numpy())


def _spans(timeline, kind):
    return {c: (b, t0, t1) for k, c, b, t0, t1 in timeline if k == kind}


@pytest.mark.parametrize("ring", [2, 3])
def test_slow_copies_overlap_the_applies_and_never_overwrite_a_buffer_in_use(ring):
    chunks = 8
    with fastps.Store(16 * chunks, lr=1.0, shards=1, mode="locked") as store:
        h = store.learner()
        h.configure_transfer(
            engine="cpu", chunk_bytes=64, ring=ring, copy_delay_us=3000, record=True
        )
        h.push(np.ones(16 * chunks, np.float32))
        tl = h.transfer_timeline()
        copy, apply = _spans(tl, "copy"), _spans(tl, "apply")
        assert sorted(copy) == sorted(apply) == list(range(chunks))
        for j in range(chunks):
            assert copy[j][0] == apply[j][0] == j % ring  # chunk j uses buffer j % ring
            assert apply[j][1] >= copy[j][2]  # applied only after its copy completed
            if j + 1 < chunks:
                assert copy[j][2] <= copy[j + 1][1]  # copies complete in order
                assert apply[j][1] < copy[j + 1][2]  # overlap: chunk j+1 in flight meanwhile
            if j + ring < chunks:
                assert copy[j + ring][1] >= apply[j][2]  # buffer refilled after its apply
        np.testing.assert_array_equal(store.read(), -np.ones(16 * chunks, np.float32))


def test_a_one_buffer_ring_serialises_copy_and_apply():
    with fastps.Store(64, lr=1.0, shards=1) as store:
        h = store.learner()
        h.configure_transfer(engine="cpu", chunk_bytes=64, ring=1, copy_delay_us=2000, record=True)
        h.push(np.ones(64, np.float32))
        copy, apply = _spans(h.transfer_timeline(), "copy"), _spans(h.transfer_timeline(), "apply")
        for j in range(3):
            assert copy[j + 1][1] >= apply[j][2]  # no copy while the only buffer is applied


@pytest.mark.parametrize("mode", CONSISTENT)
def test_concurrent_pipelined_pushes_sum_exactly(mode):
    # Slow chunked copies make two learners' updates of the one shard overlap, so leashed
    # publications are lost and retried: the retry copies the gradient again.
    threads, pushes, n = 2, 6, 16 * 6
    with fastps.Store(n, mode=mode, lr=1.0, shards=1) as store:

        def learner(i):
            h = store.learner()
            h.configure_transfer(engine="cpu", chunk_bytes=64, copy_delay_us=300)
            g = np.full(n, float(i + 1), np.float32)
            buf = np.empty(n, np.float32)
            for _ in range(pushes):
                h.pull(buf)
                h.push(g)
            h.close()

        run_threads(learner, threads, args=lambda i: (i,))
        st = store.stats()
        np.testing.assert_array_equal(store.read(), np.full(n, -pushes * 3.0, np.float32))
        assert st["versions"] == [threads * pushes]
        if mode == "leashed":
            assert st["cas_failures"] > 0  # the retry path ran


def test_dropped_updates_skip_their_chunks_and_the_rest_still_lands():
    # persistence=0: a lost publication drops that shard's update; its remaining chunks are
    # never asked for, and the pipeline must hand the next shard its own chunks.
    n, pushes = 16 * 12, 8
    with fastps.Store(n, mode="leashed", lr=1.0, shards=3, persistence=0) as store:

        def learner(_):
            h = store.learner()
            h.configure_transfer(engine="cpu", chunk_bytes=64, copy_delay_us=200)
            g = np.ones(n, np.float32)
            buf = np.empty(n, np.float32)
            for _ in range(pushes):
                h.pull(buf)
                h.push(g)
            h.close()

        run_threads(learner, 2, args=lambda i: (i,))
        st = store.stats()
        w = store.read()
        for s, (b, e) in enumerate(store.shard_ranges()):
            np.testing.assert_array_equal(w[b:e], -float(st["versions"][s]))
        assert sum(st["versions"]) + st["dropped"] == 2 * pushes * 3


@pytest.mark.parametrize("mode", MODES)
def test_staleness_distance_reads_through_the_pipeline_like_the_plain_path(mode):
    kw = dict(mode=mode, lr=0.5, shards=2, step_size=fastps.StalenessDistance(c=0.5, eta_max=0.3))
    init = np.linspace(0, 1, SIZE, dtype=np.float32)
    grads = _grads(3, seed=3)
    with fastps.Store(init=init, **kw) as plain, fastps.Store(init=init, **kw) as piped:
        np.testing.assert_array_equal(_run(piped, grads, chunk_bytes=128), _run(plain, grads))


def test_nan_guard_through_the_pipeline():
    g = np.ones(SIZE, np.float32)
    g[777] = np.inf
    with fastps.Store(SIZE, shards=2) as store:
        h = store.learner()
        h.configure_transfer(engine="cpu", chunk_bytes=256)
        with pytest.raises(ValueError, match=r"push: grad\[777\] is not finite"):
            h.push(g)
        assert store.stats()["pushes"] == 0 and not store.read().any()
    with fastps.Store(SIZE, shards=2, nan_guard="skip") as store:
        h = store.learner()
        h.configure_transfer(engine="cpu")
        assert h.push(g) == 2
        assert store.stats()["nonfinite_skipped"] == 1 and not store.read().any()


def test_a_throwing_hook_mid_push_drains_the_copies_and_leaves_the_handle_usable():
    calls = []

    def hook(tau, ctx):
        calls.append(ctx["shard"])
        if len(calls) == 2:
            raise KeyError("boom")
        return 1.0

    with fastps.Store(64 * 3, mode="leashed", shards=3, step_size=hook) as store:
        h = store.learner()
        h.configure_transfer(engine="cpu", chunk_bytes=64, copy_delay_us=500)
        with pytest.raises(KeyError, match="boom"):
            h.push(np.ones(64 * 3, np.float32))
        assert store.stats()["versions"].count(1) == 1  # one shard applied, then the hook threw
        h.push(np.ones(64 * 3, np.float32))
        assert sum(store.stats()["versions"]) == 4


def test_push_async_returns_a_future_and_the_next_call_waits_for_it():
    with fastps.Store(SIZE, lr=1.0, shards=2) as store:
        h = store.learner()
        h.configure_transfer(engine="cpu", chunk_bytes=256, copy_delay_us=2000)
        fut = h.push_async(np.ones(SIZE, np.float32))
        assert not fut.done()  # 8 slow chunks: still in flight
        out = np.empty(SIZE, np.float32)
        h.pull(out)  # waits for the push first
        assert fut.done() and fut.result() == 0
        np.testing.assert_array_equal(out, -np.ones(SIZE, np.float32))
        bad = h.push_async(np.ones(SIZE - 1, np.float32))
        with pytest.raises(ValueError, match="push: grad has 999 elements, expected 1000"):
            bad.result()
        h.close()
        assert store.stats()["learners"] == 0


def test_plain_handles_push_async_too():
    with fastps.Store(8, lr=1.0) as store:
        h = store.learner()
        assert h.push_async(np.ones(8, np.float32)).result() == 0
        np.testing.assert_array_equal(store.read(), -np.ones(8, np.float32))


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(engine="gpu"), ValueError, "engine must be one of"),
        (dict(chunk_bytes=100), ValueError, "chunk_bytes must be a positive multiple of 64"),
        (dict(chunk_bytes=0), ValueError, "chunk_bytes must be a positive multiple of 64"),
        (dict(chunk_bytes=64.0), TypeError, "chunk_bytes must be an integer"),
        (dict(ring=0), ValueError, r"ring must be 1..64"),
        (dict(transfer_dtype="int8"), ValueError, "transfer_dtype must be one of"),
        (dict(copy_delay_us=5), ValueError, "copy_delay_us is for the 'cpu' engine only"),
    ],
)
def test_configure_transfer_refuses_bad_options(kwargs, exc, match):
    with fastps.Store(8) as store:
        h = store.learner()
        with pytest.raises(exc, match=match):
            h.configure_transfer(**kwargs)
        h.push(np.ones(8, np.float32))  # the handle still works on the plain path
        assert store.stats()["pushes"] == 1


def test_pipeline_refuses_bad_buffers_and_changes_nothing():
    with fastps.Store(SIZE, shards=2) as store:
        h = store.learner()
        h.configure_transfer(engine="cpu")
        with pytest.raises(ValueError, match="push: grad has 999 elements, expected 1000"):
            h.push(np.ones(SIZE - 1, np.float32))
        with pytest.raises(TypeError, match="push: grad has dtype int32"):
            h.push(np.ones(SIZE, np.int32))
        with pytest.raises(ValueError, match="pull: out is not C-contiguous"):
            h.pull(np.empty(2 * SIZE, np.float32)[::2])
        with pytest.raises(ValueError, match="pull: out is read-only"):
            ro = np.empty(SIZE, np.float32)
            ro.flags.writeable = False
            h.pull(ro)
        assert store.stats()["pushes"] == 0 and not store.read().any()


def test_cuda_engine_is_refused_cleanly_without_a_gpu():
    if fastps.cuda_available():
        pytest.skip("a GPU is present (tests/test_cuda.py covers the CUDA engine)")
    with fastps.Store(8) as store:
        h = store.learner()
        with pytest.raises((RuntimeError, ValueError), match="transfer: "):
            _core.Transfer(h._h, "cuda", 0, 1 << 20, 2, 0, False)
        st = store.stats()
        assert st["pinned"] is False and st["pin_error"] == ""


@pytest.mark.skipif(os.environ.get("FASTPS_CUDA") != "ON", reason="only where FASTPS_CUDA=ON")
def test_a_cuda_on_build_has_the_cuda_engine():
    # .ci/run builds with FASTPS_CUDA=ON: the extension must then carry the CUDA path.
    assert fastps.built_with_cuda is True
