"""Bad input: each is refused with a clear error, and a refused call changes nothing."""

import os

import numpy as np
import pytest
import torch
from conftest import MODES

import fastps

N = 100


@pytest.fixture(params=MODES)
def store(request):
    init = np.arange(N, dtype=np.float32)
    with fastps.Store(init=init, shards=3, mode=request.param, momentum=0.5, lr=0.1) as s:
        yield s


def assert_unchanged(store, before_params, before_stats):
    np.testing.assert_array_equal(store.read(), before_params)
    assert store.stats() == before_stats


BAD_GRADS = [
    (np.ones(N - 1, np.float32), ValueError, r"push: grad has 99 elements, expected 100"),
    (np.ones(N + 1, np.float16), ValueError, r"push: grad has 101 elements, expected 100"),
    (
        np.ones(N, np.float64),
        TypeError,
        r"push: grad has dtype float64, expected float32, float16 or bfloat16",
    ),
    (np.ones(N, np.int32), TypeError, r"push: grad has dtype int32, expected float32"),
    (
        np.ones(N, ">f4"),
        TypeError,
        r"push: grad has dtype >f4, expected float32.*native byte order",
    ),
    (np.ones(2 * N, np.float32)[::2], ValueError, r"push: grad is not C-contiguous"),
    (
        torch.ones(N, dtype=torch.float64),
        TypeError,
        r"push: grad has dtype torch.float64, expected float32",
    ),
    (torch.ones(2 * N)[::2], ValueError, r"push: grad is not contiguous"),
    (
        torch.ones(N, device="meta"),
        ValueError,
        r"push: grad is on device meta, expected a CPU tensor",
    ),
    (
        [1.0] * N,
        TypeError,
        r"push: grad must be a numpy array, a torch CPU tensor, or an object with the buffer protocol or __dlpack__ \(got list\)",
    ),
    (None, TypeError, r"push: grad must be .* \(got NoneType\)"),
]


@pytest.mark.parametrize("grad,exc,msg", BAD_GRADS)
def test_bad_gradient_is_refused_and_changes_nothing(store, grad, exc, msg):
    h = store.learner()
    before = store.read(), store.stats()
    with pytest.raises(exc, match=msg):
        h.push(grad)
    assert_unchanged(store, *before)


BAD_OUTS = [
    (np.empty(N - 1, np.float32), ValueError, r"pull: out has 99 elements, expected 100"),
    (np.empty(N, np.float64), TypeError, r"pull: out has dtype float64, expected float32"),
    (np.empty(2 * N, np.float32)[::2], ValueError, r"pull: out is not C-contiguous"),
    (
        torch.empty(N, dtype=torch.float16),
        TypeError,
        r"pull: out has dtype torch.float16, expected float32",
    ),
    (
        torch.empty(N, device="meta"),
        ValueError,
        r"pull: out is on device meta, expected a CPU tensor",
    ),
    (torch.empty(2 * N)[::2], ValueError, r"pull: out is not contiguous"),
    ("abc", TypeError, r"pull: out must be a numpy array"),
]


@pytest.mark.parametrize("out,exc,msg", BAD_OUTS)
def test_bad_out_is_refused(store, out, exc, msg):
    h = store.learner()
    with pytest.raises(exc, match=msg):
        h.pull(out)


NONFINITE = [
    ("float32", np.nan), ("float32", np.inf), ("float32", -np.inf),
    ("float16", np.nan), ("float16", np.inf), ("bfloat16", np.nan), ("bfloat16", -np.inf),
]  # fmt: skip


def _grad_with(dtype, value, index):
    g = torch.ones(N, dtype=getattr(torch, dtype))
    g[index] = value
    return g


@pytest.mark.parametrize("dtype,value", NONFINITE)
def test_nonfinite_gradient_is_refused_by_default(store, dtype, value):
    h = store.learner()
    before = store.read(), store.stats()
    with pytest.raises(
        ValueError, match=r"push: grad\[57\] is not finite \(NaN or Inf\); nothing was applied"
    ):
        h.push(_grad_with(dtype, value, 57))
    assert_unchanged(store, *before)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype,value", NONFINITE[:4])
def test_nan_guard_skip_counts_and_applies_nothing(mode, dtype, value):
    with fastps.Store(N, shards=3, mode=mode, nan_guard="skip", lr=1.0) as store:
        h = store.learner()
        assert h.push(_grad_with(dtype, value, N - 1)) == 3  # every shard update skipped
        h.push(np.ones(N, np.float32))
        st = store.stats()
        assert st["nonfinite_skipped"] == 1 and st["pushes"] == 1 and st["clock"] == 1
        np.testing.assert_array_equal(store.read(), -np.ones(N, np.float32))


def test_nan_guard_off_applies_what_it_is_given():
    with fastps.Store(N, nan_guard="off") as store:
        store.learner().push(_grad_with("float32", np.nan, 3))
        assert np.isnan(store.read()[3]) and store.stats()["nonfinite_skipped"] == 0
    with pytest.raises(
        ValueError, match=r"Store: nan_guard must be one of raise, skip, off \(got 'no'\)"
    ):
        fastps.Store(N, nan_guard="no")


def test_read_only_out_is_refused_and_left_alone(store):
    out = np.full(N, 7.0, np.float32)
    out.setflags(write=False)
    with pytest.raises(ValueError, match=r"pull: out is read-only, expected a writeable array"):
        store.learner().pull(out)
    with pytest.raises(ValueError, match=r"read: out is read-only"):
        store.read(out)
    assert np.all(out == 7.0)
    with pytest.raises(ValueError, match=r"read: out has 5 elements, expected 100"):
        store.read(np.empty(5, np.float32))


def test_a_refused_pull_keeps_the_read_versions(store):
    h, other = store.learner(), store.learner()
    h.pull(np.empty(N, np.float32))
    other.push(np.ones(N, np.float32))
    with pytest.raises(ValueError):
        h.pull(np.empty(N - 1, np.float32))
    assert [h.read_version(s) for s in range(3)] == [0, 0, 0]


def test_handle_after_store_closed(store):
    h = store.learner()
    store.close()
    with pytest.raises(RuntimeError, match=r"push: the store is closed"):
        h.push(np.ones(N, np.float32))
    with pytest.raises(RuntimeError, match=r"pull: the store is closed"):
        h.pull(np.empty(N, np.float32))
    for call, name in [(store.read, "read"), (store.stats, "stats"), (store.learner, "learner")]:
        with pytest.raises(RuntimeError, match=f"{name}: the store is closed"):
            call()
    store.close()  # idempotent


def test_closed_handle(store):
    h = store.learner()
    h.close()
    h.close()
    with pytest.raises(RuntimeError, match=r"push: this learner handle is closed"):
        h.push(np.ones(N, np.float32))
    assert store.stats()["learners"] == 0


BAD_ARGS = [
    (dict(), ValueError, r"Store: give size or init \(got neither\)"),
    (dict(size=0), ValueError, r"Store: size must be at least 1 \(got 0\)"),
    (dict(size=1.5), TypeError, r"Store: size must be an integer \(got float\)"),
    (
        dict(size=10, init=np.zeros(11)),
        ValueError,
        r"Store: init has 11 elements, expected size=10",
    ),
    (
        dict(init=np.zeros((2, 2))),
        ValueError,
        r"Store: init must be a flat 1-D vector \(got shape \(2, 2\); pass init.ravel\(\)\)",
    ),
    (dict(init=np.array(["a"])), TypeError, r"Store: init has dtype <U1, expected real numbers"),
    (dict(size=10, shards=0), ValueError, r"Store: shards must be in \[1, 1\] for size 10"),
    (
        dict(size=100, shards=8),
        ValueError,
        r"Store: shards must be in \[1, 7\] for size 100 .*got 8",
    ),
    (
        dict(size=10, mode="fast"),
        ValueError,
        r"Store: mode must be one of locked, hogwild, leashed \(got 'fast'\)",
    ),
    (dict(size=10, mode=1), TypeError, r"Store: mode must be a string \(got int\)"),
    (dict(size=10, lr=-1), ValueError, r"Store: lr must be finite and >= 0 \(got -1\)"),
    (dict(size=10, lr=float("nan")), ValueError, r"Store: lr must be finite \(got nan\)"),
    (dict(size=10, lr="0.1"), TypeError, r"Store: lr must be a number \(got str\)"),
    (dict(size=10, momentum=1.0), ValueError, r"Store: momentum must be in \[0, 1\) \(got 1\)"),
    (dict(size=10, nesterov=True), ValueError, r"Store: nesterov=True needs momentum > 0"),
    (dict(size=10, nesterov=1), TypeError, r"Store: nesterov must be a bool \(got int\)"),
    (dict(size=10, weight_decay=-0.1), ValueError, r"Store: weight_decay must be finite and >= 0"),
    (
        dict(size=10, persistence=-2),
        ValueError,
        r"Store: persistence must be -1 \(never drop\) or >= 0 \(got -2\)",
    ),
    (
        dict(size=10, max_learners=0),
        ValueError,
        r"Store: max_learners must be in \[1, 1024\] \(got 0\)",
    ),
    (
        dict(size=10, max_learners=5000),
        ValueError,
        r"Store: max_learners must be in \[1, 1024\] \(got 5000\)",
    ),
    (
        dict(size=10, staleness_bins=0),
        ValueError,
        r"Store: staleness_bins must be in \[1, 65536\] \(got 0\)",
    ),
    (dict(size=10, shared="a/b"), ValueError, r"Store: shared name 'a/b' has the character '/'"),
    (
        dict(size=10, shared=""),
        ValueError,
        r"Store: shared name must have 1 to 200 characters \(got 0\)",
    ),
    (
        dict(size=10, shared=5),
        TypeError,
        r"Store: shared must be a string name, True or None \(got int\)",
    ),
]


@pytest.mark.parametrize("kwargs,exc,msg", BAD_ARGS)
def test_invalid_constructor_arguments(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        fastps.Store(**kwargs)


def test_shared_name_taken(shm_name):
    with fastps.Store(10, shared=shm_name):
        with pytest.raises(
            RuntimeError, match=f"Store: cannot create shared segment '{shm_name}': File exists"
        ):
            fastps.Store(10, shared=shm_name)


def test_attach_missing(shm_name):
    with pytest.raises(ValueError, match=f"attach: no shared store named '{shm_name}'"):
        fastps.Store.attach(shm_name)
    with pytest.raises(TypeError, match=r"attach: name must be a string \(got int\)"):
        fastps.Store.attach(3)
    with pytest.raises(ValueError, match=r"attach: shared name '\.\./x' has the character '/'"):
        fastps.Store.attach("../x")


def test_attach_to_a_segment_that_is_not_a_store(shm_name):
    with open(f"/dev/shm/fastps.{shm_name}", "wb") as f:
        f.write(b"\xff" * 4096)
    with pytest.raises(
        ValueError, match=f"attach: shared segment '{shm_name}' is not a fastps store"
    ):
        fastps.Store.attach(shm_name)
    with open(f"/dev/shm/fastps.{shm_name}", "wb") as f:
        f.write(b"x" * 10)
    with pytest.raises(ValueError, match=r"has 10 bytes, too small for a fastps store"):
        fastps.Store.attach(shm_name)
    open(f"/dev/shm/fastps.{shm_name}", "wb").close()
    with pytest.raises(ValueError, match=r"is empty, not a fastps store"):
        fastps.Store.attach(shm_name)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a segment to another user")
def test_attach_to_a_foreign_segment_is_refused(shm_name):
    with fastps.Store(10, shared=shm_name):
        os.chown(f"/dev/shm/fastps.{shm_name}", 4242, 4242)
        with pytest.raises(ValueError, match=r"belongs to uid 4242, expected uid 0"):
            fastps.Store.attach(shm_name)


# -- errors helper (issue 17.7): load overrides, native integer ranges, checkpoint paths --------


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "s.fpsck"
    with fastps.Store(10, max_learners=4) as s:
        s.save(path)
    return path


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        (dict(max_learners=0), r"Store: max_learners must be in \[1, 1024\] \(got 0\)"),
        (
            dict(mode=""),
            r"Store: mode must be one of locked, hogwild, leashed \(got ''\)",
        ),
        (dict(nan_guard=""), r"Store: nan_guard must be one of raise, skip, off \(got ''\)"),
        (
            dict(max_learners=2**40),
            r"Store: max_learners must be in \[1, 1024\] \(got 1099511627776\)",
        ),
    ],
)
def test_load_overrides_are_checked_like_the_constructor(ckpt, shm_name, kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        fastps.Store(10, **kwargs)
    with pytest.raises(ValueError, match=msg):
        fastps.Store.load(ckpt, shared=shm_name, **kwargs)
    assert not os.path.exists(f"/dev/shm/fastps.{shm_name}")


INT_RANGES = [
    (dict(size=2**64), r"Store: size must be in \[1, 2\^40\] \(got 18446744073709551616\)"),
    (dict(size=-(2**70)), r"Store: size must be in \[1, 2\^40\] \(got -1180591620717411303424\)"),
    (
        dict(size=10, persistence=2**31),
        r"Store: persistence must be -1 \(never drop\) or in \[0, 2\^31-1\] \(got 2147483648\)",
    ),
    (
        dict(size=10, persistence=-(2**40)),
        r"Store: persistence must be -1 \(never drop\) or in \[0, 2\^31-1\] \(got -1099511627776\)",
    ),
    (
        dict(size=10, max_learners=np.int64(2**40)),
        r"Store: max_learners must be in \[1, 1024\] \(got 1099511627776\)",
    ),
    (dict(size=10, max_learners=-1), r"Store: max_learners must be in \[1, 1024\] \(got -1\)"),
    (
        dict(size=10, staleness_bins=2**32),
        r"Store: staleness_bins must be in \[1, 65536\] \(got 4294967296\)",
    ),
    (
        dict(size=100, shards=2**40),
        r"Store: shards must be in \[1, 7\] for size 100 \(one 64-byte block at least per "
        r"shard\), got 1099511627776",
    ),
]


@pytest.mark.parametrize("kwargs,msg", INT_RANGES)
def test_integers_beyond_the_native_fields_name_the_argument_and_its_range(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        fastps.Store(**kwargs)
    # RayStore builds its configuration with the same function.
    kw = dict(kwargs)
    with pytest.raises(ValueError, match=msg.replace("Store:", "RayStore:")):
        fastps.config.native_config(kw.pop("size"), api="RayStore", **kw)


def test_the_integer_ranges_agree_with_the_core():
    """check_int's bounds are the core's (which still checks): the last value each accepts is
    accepted by both, the next refused by both with the same range in the message."""
    for name, top, rule in (("max_learners", 1024, r"\[1, 1024\]"),
                            ("staleness_bins", 65536, r"\[1, 65536\]")):  # fmt: skip
        fastps.config.native_config(16, **{name: top})
        with pytest.raises(ValueError, match=rf"Store: {name} must be in {rule} \(got {top + 1}\)"):
            fastps.config.native_config(16, **{name: top + 1})  # the core's message
        with pytest.raises(ValueError, match=rf"Store: {name} must be in {rule} \(got {2**33}\)"):
            fastps.config.native_config(16, **{name: 2**33})  # check_int's message
    with pytest.raises(ValueError, match=r"Store: size \d+ is larger than 2\^40 elements"):
        fastps.config.native_config(2**40 + 1)


def _in_child_as_nobody(fn):
    """fn() in a forked child that runs as uid 65534 (root passes every permission check):
    returns (exception type name, message, cause type name)."""
    import pickle
    import warnings

    r, w = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: we exec nothing
        pid = os.fork()
    if pid == 0:
        out = ("ok", "", "")
        try:
            os.setgid(65534)
            os.setuid(65534)
            fn()
        except BaseException as e:  # reported to the parent
            out = (type(e).__name__, str(e), type(e.__cause__).__name__)
        os.write(w, pickle.dumps(out))
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = pickle.loads(f.read())
    os.waitpid(pid, 0)
    return out


@pytest.fixture
def open_folder():
    """A folder that uid 65534 can reach (pytest's tmp_path is in a 0700 folder of root)."""
    import pathlib
    import shutil
    import tempfile

    path = pathlib.Path(tempfile.mkdtemp(prefix="fastps-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_save_path_errors_say_what_and_where(tmp_path, open_folder):
    with fastps.Store(10) as s:
        missing = tmp_path / "no" / "s.fpsck"
        with pytest.raises(FileNotFoundError) as e:
            s.save(missing)
        assert str(e.value) == (
            f"save: cannot write checkpoint '{missing}': folder '{missing.parent}' does not exist"
        )
        assert isinstance(e.value.__cause__, FileNotFoundError) and e.value.errno == 2
        with pytest.raises(IsADirectoryError) as e:
            s.save(tmp_path)
        assert str(e.value) == f"save: cannot write checkpoint '{tmp_path}': it is a folder"
        (tmp_path / "f").write_bytes(b"")
        with pytest.raises(NotADirectoryError) as e:
            s.save(tmp_path / "f" / "s.fpsck")
        assert str(e.value) == (
            f"save: cannot write checkpoint '{tmp_path / 'f' / 's.fpsck'}': "
            f"'{tmp_path / 'f'}' is not a folder"
        )
        ro = open_folder / "ro"
        ro.mkdir(mode=0o555)
        got = _in_child_as_nobody(lambda: s.save(ro / "s.fpsck"))
        assert got == (
            "PermissionError",
            f"save: cannot write checkpoint '{ro / 's.fpsck'}': no permission to write in "
            f"folder '{ro}'",
            "PermissionError",
        )
    assert os.listdir(tmp_path) == ["f"] and os.listdir(ro) == []


def test_load_path_errors_say_what_and_where(tmp_path, open_folder):
    missing = tmp_path / "nothing.fpsck"
    with pytest.raises(FileNotFoundError) as e:
        fastps.Store.load(missing)
    assert str(e.value) == f"load: checkpoint '{missing}' does not exist"
    assert isinstance(e.value.__cause__, FileNotFoundError) and e.value.errno == 2
    with pytest.raises(IsADirectoryError) as e:
        fastps.Store.load(tmp_path)
    assert str(e.value) == f"load: checkpoint '{tmp_path}' is a folder"
    ckpt = open_folder / "s.fpsck"
    with fastps.Store(10) as s:
        s.save(ckpt)
    os.chmod(ckpt, 0o200)
    got = _in_child_as_nobody(lambda: fastps.Store.load(ckpt))
    assert got[0] == "PermissionError" and got[2] == "PermissionError"
    assert got[1] == f"load: cannot read checkpoint '{ckpt}': permission denied"


# -- shared names and read_version (issue 17 item 7, the native parts) ----------------------


@pytest.mark.parametrize(
    "name, problem",
    [
        ("é", r"has the character 'é'"),
        ("a\0b", r"has a NUL character at index 1"),
        ("ok\udcff", r"is not valid UTF-8 \(byte 0xff at index 2\)"),
        ("a b", r"has the character ' '"),
    ],
)
def test_a_shared_name_that_is_not_ascii_or_holds_a_nul_is_named_plainly(name, problem):
    for call, api in ((lambda: fastps.Store(10, shared=name), "Store"),
                      (lambda: fastps.Store.attach(name), "attach"),
                      (lambda: fastps.cleanup(name), "cleanup")):  # fmt: skip
        with pytest.raises(ValueError, match=rf"^{api}: shared name .* {problem}; expected only"):
            call()
    with pytest.raises(TypeError, match=r"Store: shared must be a string name, True or None"):
        fastps.Store(10, shared=1)


def test_native_name_messages_stay_ascii_and_whole():
    from fastps import _core

    with pytest.raises(ValueError, match=r"shared name '\\xc3\\xa9' has the character '\\xc3'"):
        _core.Store.attach("é")
    with pytest.raises(ValueError, match=r"shared name 'a\\x00b' has the character '\\x00';"):
        _core.Store.attach("a\0b")


def test_read_version_out_of_range_or_closed():
    with fastps.Store(48, shards=3) as store:
        h = store.learner()
        h.pull(np.empty(48, np.float32))
        assert [h.read_version(s) for s in range(3)] == [0, 0, 0]
        for shard in (3, 5, -1):
            with pytest.raises(
                ValueError, match=rf"read_version: shard {shard} out of range \[0, 3\)"
            ):
                h.read_version(shard)
        h.close()
        with pytest.raises(RuntimeError, match=r"read_version: this learner handle is closed"):
            h.read_version(0)
        h2 = store.learner()
    with pytest.raises(RuntimeError, match=r"read_version: the store is closed"):
        h2.read_version(0)
