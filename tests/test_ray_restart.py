"""fastps.ray across restarts and after close (issue 17 items 10-12, issue 19 items 10-11), on a
local Ray instance with 2 CPUs started once for the module: a handle restored in a restarted
actor applies every push exactly once, a copy of a handle in use elsewhere raises instead of
losing pushes, a closed store fails at once with its own message, a server restarted without
checkpoint_dir comes back with its initial values, and default servers leave the CPUs free."""

import os
import pickle
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from conftest import wait_until

import fastps

ray = pytest.importorskip("ray")
fray = pytest.importorskip("fastps.ray")

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("ray_local")]


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class Restartable:
    """A learner actor whose handle arrives pickled in its constructor: Ray runs the
    constructor again on a restart, with the same (old) pickled handle."""

    def __init__(self, handle):
        self.h = handle

    def push(self, count, value=1.0):
        g = np.full(self.h.size, value, np.float32)
        for _ in range(count):
            self.h.push(g)
        return self.h.pushes

    def pid(self):
        return os.getpid()

    def push_timed(self):
        t = time.monotonic()
        try:
            self.h.push(np.ones(self.h.size, np.float32))
        except RuntimeError as e:
            return time.monotonic() - t, str(e)
        return time.monotonic() - t, "applied"


def restart(actor, timeout_s=60.0):
    """ray.kill(actor, no_restart=False), then wait until the restarted incarnation answers.

    ray.kill is asynchronous: a task submitted at once may start on the old incarnation and die
    with it half done (a push that reached one server of two), and Ray then retries the whole
    task on the new one. The restart is what these tests are about, not that race."""
    before = ray.get(actor.pid.remote())
    ray.kill(actor, no_restart=False)
    wait_until(lambda: ray.get(actor.pid.remote()) != before, "the actor's restart", timeout_s)


# -- issue 17.10: a push reaches the store once or raises -----------------------------------------


@pytest.mark.parametrize("named", [False, True], ids=["unnamed", "named"])
def test_a_handle_in_a_restarted_actor_applies_every_push_once(named):
    """30 pushes of 1.0 with lr 1, ray.kill(actor, no_restart=False), 30 more from the restarted
    actor through the handle its constructor got again: every element is -60."""
    with fray.RayStore(1024, servers=2, mode="locked", lr=1.0, server_cpus=0) as st:
        h = st.learner(name="rank0") if named else st.learner()
        a = Restartable.remote(h)
        assert ray.get(a.push.remote(30)) == 30
        restart(a)
        assert ray.get(a.push.remote(30)) == 60
        np.testing.assert_array_equal(st.read(), np.full(1024, -60, np.float32))
        s = st.stats()
        assert s["pushes"] == 60 and s["lost_updates"] == 0 and s["dropped"] == 0
        assert [srv["applied"] for srv in s["servers"]] == [60, 60]
        ray.kill(a, no_restart=True)


def test_copies_of_a_handle_used_one_after_another_apply_every_push():
    """A handle passed to one task after another (pickled each time with the driver's state):
    each copy continues the learner's sequence, so no push is taken for a retry."""
    with fray.RayStore(256, servers=2, lr=1.0, server_cpus=0) as st:
        h = st.learner()
        g = np.ones(256, np.float32)
        first = pickle.loads(pickle.dumps(h))
        for _ in range(5):
            first.push(g)
        second = pickle.loads(pickle.dumps(h))  # carries the driver's count: 0 pushes
        for _ in range(5):
            second.push(g)
        assert second.pushes == 10
        np.testing.assert_array_equal(st.read(), np.full(256, -10, np.float32))


def test_a_handle_used_in_two_places_at_once_raises_and_changes_nothing():
    with fray.RayStore(256, servers=2, lr=1.0, server_cpus=0) as st:
        h = st.learner()
        g = np.ones(256, np.float32)
        h.push(g)
        copy = pickle.loads(pickle.dumps(h))
        copy.push(g)  # push 2 of this learner, from the copy
        with pytest.raises(RuntimeError, match=r"push: learner .* pushed number 2 from two "):
            h.push(g)  # the original also sends number 2: not a retry, and not applied
        np.testing.assert_array_equal(st.read(), np.full(256, -2, np.float32))
        copy.push(g)
        assert copy.pushes == 3 and st.stats()["pushes"] == 3


def test_a_resubmitted_push_is_still_applied_once():
    """The retry path: the same push (learner, number, handle copy) sent twice to a server,
    as Ray and the handle resubmit it after a restart, is applied once."""
    with fray.RayStore(256, servers=1, lr=1.0, server_cpus=0) as st:
        h = st.learner()
        h.push(np.ones(256, np.float32))
        srv = st.server_actors()[0]
        call = (h.id, 2, h._copy, None, np.ones(256, np.float32), "float32")  # push 2, as sent
        first, again = ray.get(srv.push.remote(*call)), ray.get(srv.push.remote(*call))
        assert first[2] == again[2] == 2  # the server's applied count: once
        np.testing.assert_array_equal(st.read(), np.full(256, -2, np.float32))


# -- issue 17.11: a closed store fails at once --------------------------------------------------


def test_a_closed_store_and_its_handles_fail_at_once_with_its_name():
    st = fray.RayStore(256, servers=2, lr=1.0, server_cpus=0)
    h = st.learner()
    a = Restartable.remote(h)
    assert ray.get(a.push.remote(1)) == 1
    st.close()
    closed = rf"RayStore '{st.name}' is closed"
    took, msg = ray.get(a.push_timed.remote())  # an actor: its server handles are dead
    assert took < 5.0 and msg.startswith("push: ") and f"RayStore '{st.name}' is closed" in msg
    for call in (lambda: h.push(np.ones(256, np.float32)), lambda: h.pull(np.empty(256, np.float32)),
                 st.learner, st.read, st.stats, lambda: st.learner(name="x")):  # fmt: skip
        t = time.monotonic()
        with pytest.raises(RuntimeError, match=closed):
            call()
        assert time.monotonic() - t < 1.0
    st.close()  # idempotent
    h.close()  # the store took the learner's place with it
    with pytest.raises(RuntimeError, match=r"push: this learner handle is closed"):
        h.push(np.ones(256, np.float32))
    ray.kill(a, no_restart=True)


def test_a_name_is_open_again_for_a_new_store_after_close():
    for round_ in (1, 2):
        with fray.RayStore(64, servers=1, lr=1.0, server_cpus=0, name="reused") as st:
            st.learner().push(np.ones(64, np.float32))
            assert st.read().tolist() == [-1.0] * 64, round_


# -- issue 17.12: restarts without arguments in the object store ------------------------------


def test_a_server_restarted_without_checkpoint_dir_comes_back_with_its_initial_values():
    init = np.arange(256, dtype=np.float32)
    with fray.RayStore(init=init, servers=2, lr=1.0, server_cpus=0) as st:
        h = st.learner()
        g = np.ones(256, np.float32)
        for _ in range(4):
            h.push(g)
        old = st.stats()["servers"][0]["token"]
        ray.kill(st.server_actors()[0], no_restart=False)
        wait_until(lambda: st.stats()["servers"][0]["token"] != old, "the restart")
        for _ in range(3):
            h.push(g)
        b = st.server_ranges()[0][1]
        w = st.read()
        np.testing.assert_array_equal(w[:b], init[:b] - 3)  # its 4 earlier pushes are lost
        np.testing.assert_array_equal(w[b:], init[b:] - 7)
        s = st.stats()
        assert s["servers"][0]["lost_updates"] == 4 and s["servers"][0]["reconstructed"]


SUBPROCESS = textwrap.dedent(
    """
    import time, numpy as np, ray, fastps.ray as fray
    fray.init(num_cpus=2)
    with fray.RayStore(init=np.arange(1 << 16, dtype=np.float32), servers=2, lr=1.0) as st:
        st.learner().push(np.ones(1 << 16, np.float32))
        print("read", st.read()[:2].tolist(), flush=True)
    st = fray.RayStore(init=np.zeros(64, np.float32))
    ray.shutdown()
    t = time.monotonic()
    st.close()
    print("close", round(time.monotonic() - t, 1), ray.is_initialized(), flush=True)
    """
)


def test_a_store_logs_no_error_at_creation_and_closes_after_ray_shutdown(tmp_path):
    """Ray logs at error level when an actor that may restart has constructor arguments in the
    object store; the servers take theirs inline. close() after ray.shutdown() starts nothing."""
    r = subprocess.run([sys.executable, "-c", SUBPROCESS], capture_output=True, text=True,
                       timeout=240, cwd=tmp_path, env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"))  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "constructor arguments in the object store" not in r.stderr
    assert " E " not in "".join(ln for ln in r.stderr.splitlines(True) if "core_worker" in ln)
    assert r.stdout.splitlines() == ["read [-1.0, 0.0]", "close 0.0 False"]


# -- issue 19.10: servers leave the CPUs to the learners ------------------------------------------


@ray.remote(num_cpus=1)
class OneCpu:
    def ping(self):
        return "up"


def test_a_default_store_leaves_the_cpus_to_a_learner_actor():
    with fray.RayStore(1024, servers=2) as st:
        assert st.stats()["servers"][0]["range"] == [0, 512]
        a = OneCpu.remote()
        assert ray.get(a.ping.remote(), timeout=20) == "up"
        ray.kill(a)


def test_servers_that_take_every_cpu_warn():
    with pytest.warns(UserWarning, match=r"RayStore: 2 servers with server_cpus=1 take all 2 "):
        st = fray.RayStore(1024, servers=2, server_cpus=1)
    st.close()


# -- issue 19.11: messages ------------------------------------------------------------------------


def test_init_that_is_not_a_flat_vector_says_how_to_get_one():
    with pytest.raises(ValueError, match=r"RayStore: init must be a flat 1-D vector \(got a dict"):
        fray.RayStore(init={"weight": np.zeros(4)})
    with pytest.raises(ValueError, match=r"parameters_to_vector"):
        fray.RayStore(init={"weight": np.zeros(4)})
    with pytest.raises(ValueError, match=r"got shape \(2, 2\).*init.ravel\(\)"):
        fastps.Store(init=np.zeros((2, 2), np.float32))


def test_a_numpy_gradient_of_another_dtype_names_every_accepted_one():
    with fray.RayStore(64, servers=1, server_cpus=0) as st:
        with pytest.raises(TypeError, match=r"push: grad has dtype float64, expected float32, "
                           r"float16 or bfloat16 \(bfloat16 as a torch tensor\)"):  # fmt: skip
            st.learner().push(np.ones(64))
