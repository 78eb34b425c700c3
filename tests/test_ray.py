"""fastps.ray on a local Ray instance with 2 CPUs (started once for the module): a RayStore gives
a local store's parameters bit for bit, concurrent learner actors sum exactly, a killed server
comes back from its checkpoint with its lost updates counted, and fit(backend="ray") trains."""

import functools
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from conftest import blobs, wait_until

import fastps
from fastps.config import shard_ranges

ray = pytest.importorskip("ray")
fray = pytest.importorskip("fastps.ray")

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("ray_local")]


def test_the_local_instance_listens_on_loopback_only():
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")


def test_without_ray_the_import_says_how_to_install_it():
    code = "import sys; sys.modules['ray'] = None\ntry:\n import fastps.ray\nexcept ImportError as e: print(e)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd="/").stdout  # fmt: skip
    assert out == ("fastps.ray: needs the module 'ray', which is not installed: "
                   'pip install "fastps[ray]"\n')  # fmt: skip


def test_bad_arguments_are_refused_before_any_actor_exists():
    with pytest.raises(ValueError, match="servers must be in"):
        fray.RayStore(32, servers=3)
    with pytest.raises(ValueError, match="mode must be one of"):
        fray.RayStore(64, mode="eventual")
    with pytest.raises(ValueError, match="shards_per_server must be in"):
        fray.RayStore(64, servers=2, shards_per_server=3, server_cpus=0)
    with pytest.raises(ValueError, match="need 8 CPUs"):
        fray.RayStore(256, servers=8, server_cpus=1)
    with pytest.raises(ValueError, match=r"RayStore: lr must be finite and >= 0 \(got -1\)"):
        fray.RayStore(64, lr=-1)
    with pytest.raises(ValueError, match=r"RayStore: momentum must be in \[0, 1\) \(got 1.5\)"):
        fray.RayStore(64, momentum=1.5)  # the core's range check, before any actor
    with pytest.raises(TypeError, match="RayStore: unexpected keyword argument 'colour'"):
        fray.RayStore(64, colour="blue")
    with pytest.raises(TypeError, match=r"RayStore: servers must be an integer \(got str\)"):
        fray.RayStore(64, servers="2")


@pytest.mark.parametrize(("size", "servers"), [(16, 1), (200, 2), (1000, 3), (4097, 7), (64, 4)])
def test_server_ranges_are_the_split_a_store_makes_of_its_shards(size, servers):
    ranges = fray.server_ranges(size, servers)
    assert ranges == shard_ranges(size, servers)
    with fastps.Store(size, shards=servers) as local:
        assert ranges == local.shard_ranges()


# -- the same parameters as a local store ---------------------------------------------------------


def _script(steps=40, learners=3, seed=3):
    """(learner, "pull" | "push") with each learner alternating, in a seeded random order:
    a learner that waits long between its pull and its push pushes with a large tau."""
    rng = np.random.default_rng(seed)
    pulled, out = [False] * learners, []
    for _ in range(steps):
        who = int(rng.integers(learners))
        out.append((who, "push" if pulled[who] else "pull"))
        pulled[who] = not pulled[who]
    return out


SCRIPT = _script()


@pytest.mark.parametrize("mode", ["locked", "leashed"])
@pytest.mark.parametrize(
    "policy",
    [dict(step_size=fastps.Inverse(), momentum=0.9),
     dict(step_size=fastps.TailTau(warmup=6)),
     dict(step_size=fastps.Exponential(beta=0.5), weight_decay=0.01)],
    ids=["inverse-momentum", "tailtau", "exponential-wd"],
)  # fmt: skip
def test_two_servers_give_a_local_stores_parameters_for_a_scripted_sequence(mode, policy):
    """Every push reaches every shard, so each server sees the staleness the local store sees:
    the parameters agree bit for bit, and each server's histogram equals the local one."""
    rng = np.random.default_rng(7)
    n = 200  # two servers: 96 + 104 elements
    init = rng.standard_normal(n).astype(np.float32)
    kw = dict(init=init, mode=mode, lr=0.05, max_learners=4, **policy)
    grads = [rng.standard_normal(n).astype(np.float32) for _ in SCRIPT]
    local = fastps.Store(shards=1, **kw)
    with fray.RayStore(servers=2, shards_per_server=1, server_cpus=0, **kw) as remote:
        assert remote.server_ranges() == [(0, 96), (96, 200)]
        hl = [local.learner() for _ in range(3)]
        hr = [remote.learner() for _ in range(3)]
        buf = np.empty(n, np.float32)
        for (who, op), g in zip(SCRIPT, grads):
            if op == "pull":
                hl[who].pull(buf)
                hr[who].pull(buf)
            else:
                hl[who].push(g)
                hr[who].push(g)
        np.testing.assert_array_equal(remote.read(), local.read())
        rs, ls = remote.stats(), local.stats()
        assert sum(1 for c in ls["staleness_hist"] if c) >= 4  # taus 0..3 at least
        for s in rs["servers"]:
            assert s["staleness_hist"] == ls["staleness_hist"]
            assert s.get("step_hist") == ls.get("step_hist")
        pushes = sum(op == "push" for _, op in SCRIPT)
        assert rs["clock"] == rs["pushes"] == ls["pushes"] == pushes
        assert rs["lost_updates"] == 0
    local.close()


def test_pull_and_push_take_torch_tensors_and_refuse_bad_gradients_whole():
    torch = pytest.importorskip("torch")
    with fray.RayStore(init=np.zeros(64, np.float32), servers=2, lr=1.0, server_cpus=0) as st:
        h = st.learner()
        out = torch.empty(64)
        h.pull(out)
        h.push(torch.ones(64, dtype=torch.bfloat16))
        h.push(-np.ones(64, np.float16))
        bad = np.ones(64, np.float32)
        bad[50] = np.nan  # in the second server's range: the first must not change either
        with pytest.raises(ValueError, match="NaN"):
            h.push(bad)
        with pytest.raises(ValueError, match="grad has 63 elements, expected 64"):
            h.push(np.ones(63, np.float32))
        with pytest.raises(TypeError, match="expected float32"):
            h.push(np.ones(64, np.float64))
        h.pull(out)
        assert out.tolist() == [0.0] * 64 and st.stats()["pushes"] == 2
        assert st.read(torch.empty(64)).tolist() == [0.0] * 64
        with pytest.raises(ValueError, match="read: out has 63 elements, expected 64"):
            st.read(torch.empty(63))
        h.push_pull(np.ones(64, np.float32), out)  # one call per server: the pull sees the push
        assert out.tolist() == [-1.0] * 64 and st.stats()["pushes"] == 3


# -- concurrent learner actors --------------------------------------------------------------------


@ray.remote(num_cpus=1)
class Pusher:
    """A learner actor: pull, push -1 everywhere, ``pushes`` times (lr=1 adds 1 a push)."""

    def __init__(self, handle):
        self.h = handle  # arrived by name, not by value

    def run(self, pushes, stop_file=None):
        size = self.h._meta["size"]
        buf = np.empty(size, np.float32)
        g = -np.ones(size, np.float32)
        acks = []
        for _ in range(pushes):
            if stop_file is not None and os.path.exists(stop_file):
                break
            self.h.pull(buf)
            self.h.push(g)
            acks.append(self.h.last_acks())
        return self.h.pushes, acks


@pytest.mark.parametrize("mode", ["locked", "leashed"])
def test_concurrent_learner_actors_sum_exactly(mode):
    with fray.RayStore(init=np.zeros(1000, np.float32), servers=2, shards_per_server=2, mode=mode,
                       lr=1.0, server_cpus=0) as st:  # fmt: skip
        handles = [st.learner() for _ in range(2)]
        assert len(pickle.dumps(handles[0])) < 1000  # by name: no parameters inside
        actors = [Pusher.remote(h) for h in handles]
        done = ray.get([a.run.remote(150) for a in actors])
        assert [d[0] for d in done] == [150, 150]
        np.testing.assert_array_equal(st.read(), np.full(1000, 300, np.float32))
        s = st.stats()
        assert s["pushes"] == s["clock"] == 300 and s["shard_updates"] == 300 * 4
        assert sum(s["staleness_hist"]) == 300 * 4 and s["dropped"] == 0
        for a in actors:
            ray.kill(a)


# -- a server killed mid-training -----------------------------------------------------------------


def test_a_killed_server_restores_its_checkpoint_and_counts_the_lost_updates(tmp_path):
    n = 256
    stop = str(tmp_path / "stop")
    with fray.RayStore(init=np.zeros(n, np.float32), servers=2, mode="leashed", lr=1.0,
                       server_cpus=0, checkpoint_dir=tmp_path / "ck") as st:  # fmt: skip
        victim = st.server_actors()[1]
        actors = [Pusher.remote(st.learner()) for _ in range(2)]
        runs = [a.run.remote(100_000, stop) for a in actors]

        def applied():
            return st.stats()["servers"][1]["applied"]

        wait_until(lambda: applied() >= 100, "100 pushes")
        saved = st.checkpoint()[1]  # what server 1's checkpoint holds
        wait_until(lambda: applied() >= saved + 60, "60 pushes after the checkpoint")
        old = st.stats()["servers"][1]["token"]
        ray.kill(victim, no_restart=False)
        wait_until(lambda: st.stats()["servers"][1]["token"] != old, "the restart")
        back = st.stats()["servers"][1]
        wait_until(lambda: applied() >= back["applied"] + 60, "60 pushes after the restart")
        open(stop, "w").close()
        results = ray.get(runs)
        for a in actors:
            ray.kill(a)

        s = st.stats()
        srv = s["servers"][1]
        assert srv["reconstructed"] and srv["restored_clock"] == saved
        # Lost: the pushes the dead server acknowledged after its checkpoint, and only those
        # (a push it applied but never answered was retried and applied once after the restart).
        lost = sum(1 for _, acks in results for a in acks if a[1][0] == old and a[1][1] > saved)
        assert lost >= 60 and s["lost_updates"] == srv["lost_updates"] == lost
        total = sum(p for p, _ in results)
        w = st.read()
        b = st.server_ranges()[1][0]
        np.testing.assert_array_equal(w[:b], np.full(b, total, np.float32))
        np.testing.assert_array_equal(w[b:], np.full(n - b, total - lost, np.float32))
        assert srv["pushes"] == total - lost and s["servers"][0]["lost_updates"] == 0


def test_servers_checkpoint_periodically_and_the_files_load_as_stores(tmp_path):
    with fray.RayStore(init=np.zeros(64, np.float32), servers=2, lr=1.0, server_cpus=0,
                       checkpoint_dir=tmp_path, checkpoint_every_s=0.1) as st:  # fmt: skip
        h = st.learner()
        h.push(-np.ones(64, np.float32))
        wait_until(
            lambda: min(s["checkpoints"] for s in st.stats()["servers"]) >= 4, "4 checkpoints"
        )
        for j, (b, e) in enumerate(st.server_ranges()):
            with fastps.Store.load(tmp_path / f"server-{j}.fpsck") as one:  # a plain Store file
                assert one.read().tolist() == [1.0] * (e - b)
                assert one.metadata["range"] == [b, e] and one.metadata["lost"] == 0


def test_save_and_load_continue_with_the_saved_policy_and_refuse_a_second_one(tmp_path):
    with fray.RayStore(init=np.zeros(64, np.float32), servers=2, lr=0.5, server_cpus=0,
                       step_size=fastps.Exponential(beta=0.25), max_learners=3) as st:  # fmt: skip
        h = st.learner()
        h.pull(np.empty(64, np.float32))
        h.push(-np.ones(64, np.float32))
        st.save(tmp_path / "saved", metadata={"epoch": 1})
        before, policy = st.read(), repr(st.step_size)
    with pytest.raises(ValueError, match="step_size is only for checkpoints saved with a hook"):
        fray.RayStore.load(tmp_path / "saved", step_size=fastps.Inverse(), server_cpus=0)
    with fray.RayStore.load(tmp_path / "saved", server_cpus=0) as again:
        assert again.metadata == {"epoch": 1} and repr(again.step_size) == policy
        assert again.server_ranges() == [(0, 32), (32, 64)] and again.stats()["clock"] == 1
        np.testing.assert_array_equal(again.read(), before)


def test_load_of_a_hook_checkpoint_without_the_hook_is_refused_before_any_actor(tmp_path):
    with fastps.Store(64, step_size=lambda tau, stats: 0.1) as one:
        one.save(tmp_path / "server-0.fpsck")
    (tmp_path / "manifest.json").write_text('{"size": 64, "ranges": [[0, 64]]}')
    with pytest.raises(ValueError, match="saved with a Python step_size hook; pass it again"):
        fray.RayStore.load(tmp_path)


# -- fit(backend="ray") ---------------------------------------------------------------------------


def _digits_logreg():
    from fastps.train.models import build

    # Importable in the learner actors (a function of this test module would not be).
    return functools.partial(build, "logreg", (1, 8, 8), 10, seed=0)


@pytest.mark.parametrize("variant", ["async", "sync"])
def test_fit_with_ray_learners_reaches_the_single_learner_loss_on_digits(variant):
    pytest.importorskip("sklearn")
    from fastps.train.data import load
    from fastps.train.fit import fit

    ds = load("digits")
    common = dict(lr=0.1, updates=1500 if variant == "async" else 600, batch_size=32, seed=1)
    one = fit(_digits_logreg(), ds, learners=1, mode="locked", backend="thread", **common)
    two = fit(_digits_logreg(), ds, learners=2, variant=variant, mode="leashed", backend="ray",
              servers=2, server_cpus=0, **common)  # fmt: skip
    l1, l2 = one.evals[-1]["loss"], two.evals[-1]["loss"]
    assert l1 < 0.5 * one.evals[0]["loss"]  # the baseline itself learned
    assert abs(l2 - l1) < 0.1 + 0.15 * l1, (l1, l2)
    assert two.config["backend"] == "ray" and two.stats["clock"] == common["updates"]
    if variant == "sync":  # every update averages both learners' gradients on one model
        assert all(sorted(u["learners"]) == [0, 1] for u in two.updates)
    else:
        assert sum(ln["updates"] for ln in two.learners) == common["updates"]
        # Each push is logged with its staleness, read from the versions every server created.
        assert len(two.updates) == common["updates"]
        assert all(u["staleness"] >= 0 for u in two.updates)
    print(f"{variant}: test loss {l2:.3f} with 2 Ray learners vs {l1:.3f} with one",
          file=sys.stderr)  # fmt: skip


@pytest.mark.parametrize("variant", ["k-batch-sync", "local-sgd", "downpour"])
def test_fit_with_ray_keeps_each_variants_rule(variant):
    """The channels the async and sync runs above do not use: the coordinator's update count
    watched by cancelling learners, model averaging through the slots, Downpour's cadence."""
    torch = pytest.importorskip("torch")
    from fastps.train.fit import fit

    kw = {"k-batch-sync": dict(k=2, updates=60), "local-sgd": dict(local_steps=4, updates=30),
          "downpour": dict(n_fetch=2, n_push=3, updates=60)}[variant]  # fmt: skip
    h = fit(functools.partial(torch.nn.Linear, 8, 3), blobs(), learners=2, variant=variant,
            backend="ray", lr=0.1, batch_size=32, servers=2, server_cpus=0, **kw)  # fmt: skip
    updates = kw["updates"]
    assert h.stats["clock"] == updates
    if variant == "downpour":
        assert sum(ln["updates"] for ln in h.learners) == updates
        assert all(ln["steps"] == 3 * ln["updates"] for ln in h.learners)
    else:
        assert len(h.updates) == updates
        for u in h.updates:  # K gradients (or both models), all from the last update's model
            assert u["k"] == 2 and set(u["versions"]) == {u["update"] - 1}
        if variant == "local-sgd":
            assert all(sorted(u["learners"]) == [0, 1] for u in h.updates)
            assert all(ln["steps"] == 4 * ln["updates"] for ln in h.learners)
    assert h.final_accuracy > 0.85


def test_fit_k_async_on_ray_gives_the_servers_the_gradients_staleness():
    """k-async with a staleness policy on the ray backend: every server's histogram counts each
    update's oldest gradient (the coordinator backdates its push on every server)."""
    torch = pytest.importorskip("torch")
    from collections import Counter

    from fastps.train.fit import fit

    h = fit(functools.partial(torch.nn.Linear, 8, 3), blobs(), learners=2, variant="k-async",
            k=1, backend="ray", lr=0.1, batch_size=32, servers=2, server_cpus=0, updates=40,
            step_size=fastps.Inverse(), mode="locked")  # fmt: skip
    applied = Counter(u["tau_applied"] for u in h.updates)
    shards, hist = h.stats["shards"], h.stats["staleness_hist"]
    assert sum(hist) == 40 * shards
    for tau, n in applied.items():
        assert hist[tau] == n * shards, (tau, hist[: max(applied) + 1], applied)
    assert sum(n for tau, n in applied.items() if tau > 0) > 0  # two learners: some stale


def test_a_killed_learner_actor_is_restarted_and_makes_only_the_rest_of_its_quota():
    import threading

    torch = pytest.importorskip("torch")
    from fastps.train.fit import Straggler, fit

    result = {}

    def run():
        result["h"] = fit(functools.partial(torch.nn.Linear, 8, 3), blobs(), learners=2,
                          backend="ray", lr=0.1, batch_size=32, updates=200, servers=2,
                          server_cpus=0, straggler=Straggler("fixed", delay=0.01))  # fmt: skip

    t = threading.Thread(target=run)
    t.start()

    def learner0():
        return next((n for n in ray.util.list_named_actors()
                     if n.startswith("fastps-fit/") and n.endswith("/learner0")), None)  # fmt: skip

    wait_until(lambda: learner0() is not None, "the learner actors")
    name = learner0()
    actor = ray.get_actor(name)
    srv = ray.get_actor(f"fastps/{name.split('/')[1]}/server0")
    wait_until(lambda: ray.get(srv.stats.remote())["applied"] >= 30, "30 pushes")
    ray.kill(actor, no_restart=False)
    t.join(timeout=240)
    h = result["h"]
    # Learner 0's second incarnation continued its push sequence: the run made exactly its
    # 200 updates, and learner 0's report (its second life) covers less than its quota of 100.
    assert h.stats["clock"] == 200
    assert h.learners[1]["updates"] == 100 and 0 < h.learners[0]["updates"] < 100


def test_fit_with_ray_checkpoints_to_a_folder_and_resumes_only_the_missing_updates(tmp_path):
    torch = pytest.importorskip("torch")
    from fastps.train.fit import fit

    kw = dict(learners=2, backend="ray", lr=0.1, batch_size=32, server_cpus=0)
    model = functools.partial(torch.nn.Linear, 8, 3)
    first = fit(model, blobs(), updates=60, checkpoint=tmp_path / "ck", checkpoint_every=20, **kw)
    assert first.stats["clock"] == 60
    assert sorted(os.listdir(tmp_path / "ck")) == ["manifest.json", "server-0.fpsck",
                                                   "server-1.fpsck"]  # fmt: skip
    again = fit(model, blobs(), updates=100, resume_from=tmp_path / "ck", **kw)
    assert again.config["resumed_at"] == 60 and again.stats["clock"] == 100
    assert sum(ln["updates"] for ln in again.learners) == 40


def test_a_ray_handle_backdates_its_next_push_on_every_server():
    """fit's coordinator on a RayStore (k-async): the next push counts its staleness from N
    updates before the last pull, on each server, exactly as a local handle does."""
    with fray.RayStore(1024, servers=2, mode="locked", lr=1.0, step_size=fastps.Inverse(),
                       server_cpus=0) as st:  # fmt: skip
        a, b = st.learner(), st.learner()
        w = np.empty(1024, np.float32)
        zero = np.zeros(1024, np.float32)
        with pytest.raises(ValueError, match=r"backdate: needs a pull first"):
            a.backdate(1)
        for _ in range(4):
            b.pull(w)
            b.push(zero)
        a.pull(w)  # version 4 of every shard
        for _ in range(2):
            b.pull(w)
            b.push(zero)
        with pytest.raises(
            ValueError, match=r"backdate: shard 0 was read at version 4, fewer than 5"
        ):
            a.backdate(5)
        a.backdate(3)
        before = st.read()
        a.push(np.ones(1024, np.float32))
        np.testing.assert_allclose(st.read(), before - 1 / (1 + 5), rtol=1e-6)  # Inverse, tau 5
        hist = st.stats()["staleness_hist"]
        assert hist[5] == st.stats()["shards"]  # every native shard of every server at tau 5
