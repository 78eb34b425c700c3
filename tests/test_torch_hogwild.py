"""PyTorch's Hogwild structure (examples/mnist_hogwild) switched to fastps with the README's two
lines: a parent model, ``share_memory()``, spawned learner processes that each build an
AsyncOptimizer, join, and the parent evaluates its own model. Also the README's multi-process
example, run as written, the learner limit, and learners whose parent was killed."""

import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
import torch.multiprocessing as tmp
from conftest import MODES, blobs

import fastps
import fastps.torch as ft

pytestmark = pytest.mark.timeout(300)

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def loss_and_accuracy(model, x, y):
    with torch.no_grad():
        out = model(torch.from_numpy(x))
        loss = torch.nn.functional.cross_entropy(out, torch.from_numpy(y)).item()
        return loss, float((out.argmax(1).numpy() == y).mean())


def train(rank, model, store, x, y, epochs):
    """mnist_hogwild's train(), with the optimizer line switched to fastps."""
    torch.manual_seed(1 + rank)
    opt = ft.AsyncOptimizer(
        model, store
    )  # was: optim.SGD(model.parameters(), lr=..., momentum=...)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        for idx in torch.randperm(len(xt)).split(32):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()


@pytest.mark.parametrize("mode", MODES)
def test_the_parent_model_holds_the_trained_parameters_after_join(mode):
    data = blobs()
    model = net()
    model.share_memory()
    before = loss_and_accuracy(model, data.x_test, data.y_test)
    store = ft.store_from(model, lr=0.05, momentum=0.5, mode=mode)  # once, in the parent
    try:
        ctx = tmp.get_context("spawn")
        ps = [ctx.Process(target=train, args=(r, model, store, data.x_train, data.y_train, 3))
              for r in range(2)]  # fmt: skip
        for p in ps:
            p.start()
        for p in ps:
            p.join(240)
        assert [p.exitcode for p in ps] == [0, 0]
        final = store.read()
        assert store.stats()["pushes"] == 2 * 3 * 50  # 1600 samples in batches of 32
        flat = store.layout.flatten(dict(model.named_parameters()))
        np.testing.assert_array_equal(flat, final)  # exactly the store's, padding included
        loss, acc = loss_and_accuracy(model, data.x_test, data.y_test)
        assert loss < before[0] - 0.4 and acc > before[1] + 0.3, (before, loss, acc)
    finally:
        store.close()


def test_store_from_shares_the_store_by_default():
    model = net()
    store = ft.store_from(model, lr=0.1)
    try:
        name = store.name
        assert re.fullmatch(r"auto-\d+-[0-9a-f]+", name)
        assert os.path.exists(f"/dev/shm/fastps.{name}")
    finally:
        store.close()
    assert not os.path.exists(f"/dev/shm/fastps.{name}")
    with ft.store_from(model, lr=0.1, shared=None) as private:
        assert private.name is None


def readme_block(marker):
    """The python code block that follows ``marker`` in the README."""
    with open(README) as f:
        text = f.read()
    at = text.index(marker)
    start = text.index("```python\n", at) + len("```python\n")
    return text[start : text.index("```", start)]


def test_the_readme_multi_process_example_runs_as_written(tmp_path):
    code = readme_block("A multi-process example")
    assert "share_memory()" in code and "store_from(" in code and "AsyncOptimizer(" in code
    script = tmp_path / "hogwild.py"
    script.write_text(code.replace("EPOCHS = 5", "EPOCHS = 2"))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=240, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    m = re.search(r"accuracy (\d\.\d+), store and model agree: True", out.stdout)
    assert m and float(m.group(1)) > 0.8, out.stdout


def _spin(store, started):
    opt = ft.AsyncOptimizer(torch.nn.Linear(8, 3), store)
    started.set()
    while True:  # a learner that never stops by itself
        opt.zero_grad()
        opt.step()


ORPHAN = textwrap.dedent("""
    import sys, time, torch, torch.multiprocessing as tmp
    import fastps.torch as ft
    sys.path.insert(0, {tests!r})
    from test_torch_hogwild import _spin

    if __name__ == "__main__":
        store = ft.store_from(torch.nn.Linear(8, 3), lr=0.01)
        ctx = tmp.get_context("spawn")
        started = ctx.Event()
        p = ctx.Process(target=_spin, args=(store, started))
        p.start()
        started.wait(120)
        print(store.name, p.pid, flush=True)
        time.sleep(600)
""")


def _running(pid):
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_a_learner_whose_parent_was_killed_stops(tmp_path):
    tests = os.path.dirname(os.path.abspath(__file__))
    # cwd outside the checkout: its fastps/ (no built extension) must not shadow the installed one
    parent = subprocess.Popen([sys.executable, "-c", ORPHAN.format(tests=tests)],
                              stdout=subprocess.PIPE, text=True, cwd=tmp_path)  # fmt: skip
    name, pid = None, None
    try:
        with parent.stdout:
            name, pid = parent.stdout.readline().split()
        pid = int(pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _running(pid):
            time.sleep(0.1)
        assert not _running(pid), "the orphaned learner still trains"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(30)
        if pid is not None and _running(pid):
            os.kill(pid, signal.SIGKILL)
        if name is not None and os.path.exists(f"/dev/shm/fastps.{name}"):
            fastps.cleanup(name, force=True)


@pytest.mark.parametrize("mode", ["locked", "hogwild"])
def test_a_default_store_takes_more_than_sixteen_learners(mode):
    """17 learner processes used to crash one child ("max_learners") while 16 trained on; in
    locked and hogwild an unused learner place costs bytes, so store_from gives 1024."""
    with ft.store_from(torch.nn.Linear(8, 3), lr=0.01, mode=mode) as store:
        assert store.config["max_learners"] == 1024
        opts = [ft.AsyncOptimizer(torch.nn.Linear(8, 3), store) for _ in range(100)]
        assert store.stats()["learners"] == 100
        for opt in opts:
            opt.close()
        assert store.stats()["learners"] == 0


def test_leashed_keeps_sixteen_places_and_the_seventeenth_learner_is_told():
    with ft.store_from(torch.nn.Linear(8, 3), lr=0.01, mode="leashed") as store:
        opts = [ft.AsyncOptimizer(torch.nn.Linear(8, 3), store) for _ in range(16)]
        with pytest.raises(RuntimeError, match=r"max_learners is 16 \(close a handle or create"):
            ft.AsyncOptimizer(torch.nn.Linear(8, 3), store)
        assert store.stats()["learners"] == 16
        for opt in opts:
            opt.close()
