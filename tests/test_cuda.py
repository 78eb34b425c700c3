"""The CUDA transfer path (skipped without a GPU): push from and pull into CUDA tensors through
pinned staging and the handles' copy streams, against the host path on the same data."""

import numpy as np
import pytest
import torch
from conftest import MODES, run_threads

import fastps
import fastps.torch

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not fastps.cuda_available(), reason="needs a CUDA GPU"),
]

SIZE = (1 << 20) + 37  # several chunks at 64 KiB, not a multiple of any


def _grads(count, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(SIZE).astype(np.float32) for _ in range(count)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("chunk_bytes", [64 << 10, 4 << 20])
def test_cuda_push_and_pull_equal_the_host_path_bitwise(mode, chunk_bytes):
    kw = dict(mode=mode, lr=0.1, momentum=0.9, shards=3)
    init = np.linspace(-1, 1, SIZE, dtype=np.float32)
    grads = _grads(3)
    with fastps.Store(init=init, **kw) as host, fastps.Store(init=init, **kw) as dev:
        hh, hd = host.learner(), dev.learner()
        hd.configure_transfer(chunk_bytes=chunk_bytes)
        out_h = np.empty(SIZE, np.float32)
        out_d = torch.empty(SIZE, device="cuda")
        for g in grads:
            hh.pull(out_h)
            hd.pull(out_d)
            np.testing.assert_array_equal(out_d.cpu().numpy(), out_h)
            hh.push(g)
            hd.push(torch.from_numpy(g).cuda())
        np.testing.assert_array_equal(dev.read(), host.read())
        assert dev.stats()["pinned"] is True, dev.stats()["pin_error"]


def test_push_waits_for_the_kernel_that_produces_the_gradient():
    side = torch.cuda.Stream()
    with fastps.Store(SIZE, lr=1.0) as store:
        h = store.learner()
        with torch.cuda.stream(side):
            a = torch.randn(2048, 2048, device="cuda")
            for _ in range(20):  # keep the stream busy before the gradient is written
                a = a @ a / 2048
            g = torch.full((SIZE,), 3.0, device="cuda") + 0 * a.sum()
            h.push(g)  # ordered after the kernels queued on `side`, no device-wide sync
        np.testing.assert_array_equal(store.read(), np.full(SIZE, -3.0, np.float32))


def test_pull_is_visible_to_the_callers_stream():
    with fastps.Store(init=np.arange(SIZE, dtype=np.float32)) as store:
        h = store.learner()
        out = torch.zeros(SIZE, device="cuda")
        h.pull(out)
        total = (out * 2).sum()  # queued on the caller's stream right after the pull
        assert total.item() == pytest.approx(2 * np.arange(SIZE, dtype=np.float64).sum(), rel=1e-6)


@pytest.mark.parametrize("td", ["float16", "bfloat16"])
def test_half_precision_transfers(td):
    g = torch.from_numpy(_grads(1)[0]).cuda()
    half = g.to(getattr(torch, td))
    with fastps.Store(SIZE, lr=1.0, shards=2) as store:
        h = store.learner()
        h.configure_transfer(transfer_dtype=td)
        h.push(g)
        want = -half.float().cpu().numpy()
        np.testing.assert_array_equal(store.read(), want)
        out = torch.empty(SIZE, device="cuda")
        h.pull(out)
        np.testing.assert_array_equal(out.cpu().numpy(), want)
        out_half = torch.empty(SIZE, dtype=getattr(torch, td), device="cuda")
        h.pull(out_half)
        assert torch.equal(out_half.cpu(), torch.from_numpy(want).to(getattr(torch, td)))


@pytest.mark.parametrize("mode", ["locked", "leashed"])
def test_many_learners_on_one_gpu_sum_exactly(mode):
    learners, pushes = 4, 5
    with fastps.Store(SIZE, mode=mode, lr=1.0, shards=4) as store:

        def run(i):
            h = store.learner()
            h.configure_transfer(chunk_bytes=256 << 10)
            g = torch.full((SIZE,), float(i + 1), device="cuda")
            out = torch.empty(SIZE, device="cuda")
            for _ in range(pushes):
                h.pull(out)
                h.push(g)
            h.close()

        run_threads(run, learners, args=lambda i: (i,))
        want = -pushes * sum(range(1, learners + 1))
        np.testing.assert_array_equal(store.read(), np.full(SIZE, want, np.float32))


def test_push_async_and_nan_guard_on_the_gpu():
    with fastps.Store(SIZE, lr=1.0) as store:
        h = store.learner()
        g = torch.ones(SIZE, device="cuda")
        assert h.push_async(g).result() == 0
        bad = g.clone()
        bad[12345] = float("nan")
        with pytest.raises(ValueError, match=r"grad\[12345\] is not finite"):
            h.push(bad)
        np.testing.assert_array_equal(store.read(), -np.ones(SIZE, np.float32))


def test_async_optimizer_trains_a_cuda_module_like_a_cpu_one():
    torch.manual_seed(0)
    cpu = torch.nn.Linear(64, 10)
    gpu = torch.nn.Linear(64, 10)
    gpu.load_state_dict(cpu.state_dict())
    gpu.cuda()
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    results = []
    for model, dev in ((cpu, "cpu"), (gpu, "cuda")):
        store = fastps.torch.store_from(model, lr=0.1, mode="locked")
        opt = fastps.torch.AsyncOptimizer(model, store)
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x.to(dev)), y.to(dev)).backward()
            opt.step()
        results.append(store.read())
        opt.close()
        store.close()
    np.testing.assert_allclose(results[1], results[0], rtol=1e-5, atol=1e-6)


def test_fit_with_gpu_learners_trains():
    import functools

    from fastps.train import data, models
    from fastps.train.fit import fit

    ds = data.load("digits")
    model_fn = functools.partial(models.build, "logreg", ds.input_shape, ds.classes, seed=0)
    h = fit(model_fn, ds, learners=2, backend="thread", lr=0.1, updates=400, batch_size=32,
            devices=["cuda:0"])  # fmt: skip
    assert [ln["device"] for ln in h.learners] == ["cuda:0", "cuda:0"]
    assert h.final_accuracy > 0.85
