"""fastps.torch on a RayStore: store_from(model, backend="ray") and docs/ray.md's example."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import assert_same_parameters, train_side_by_side

import fastps.torch as ft

ray = pytest.importorskip("ray")
fray = pytest.importorskip("fastps.ray")

pytestmark = pytest.mark.timeout(300)

DOC = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "ray.md")


def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))


def test_an_optimizer_on_a_ray_store_trains_like_torch_sgd():
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    fray.init(num_cpus=2)
    try:
        ref, ours = mlp(), mlp()
        sgd = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
        store = ft.store_from(ours, backend="ray", servers=2, server_cpus=0, lr=0.05,
                              momentum=0.9, mode="locked", shards_per_server=1)  # fmt: skip
        try:
            assert store.size == store.layout.size == ft.ParamLayout.from_module(ours).size
            opt = ft.AsyncOptimizer(ours, store)
            assert opt.param_groups[0]["lr"] == 0.05 and opt.param_groups[0]["momentum"] == 0.9
            g = torch.Generator().manual_seed(1)
            batches = [(torch.randn(16, 7, generator=g), torch.randint(0, 3, (16,), generator=g))
                       for _ in range(4)]  # fmt: skip
            train_side_by_side(batches, (ref, sgd), (ours, opt))
            assert_same_parameters(ref, ours)
            np.testing.assert_array_equal(store.read(), opt.flat_params.numpy())
            opt.close()
        finally:
            store.close()
    finally:
        ray.shutdown()


def test_the_docs_example_runs_as_written(tmp_path):
    with open(DOC) as f:
        text = f.read()
    at = text.index("## From a torch model")
    start = text.index("```python\n", at) + len("```python\n")
    script = tmp_path / "ray_torch.py"
    script.write_text(text[start : text.index("```", start)])
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=280, cwd=tmp_path, env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    m = re.search(r"accuracy (\d\.\d+), pushes (\d+)", out.stdout)
    assert m and float(m.group(1)) > 0.8 and int(m.group(2)) == 400, out.stdout
