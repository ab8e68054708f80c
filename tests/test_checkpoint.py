"""purenet.checkpoint: no pickle, atomic writes that survive SIGKILL, clear errors, bit-identical resume."""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import purenet as pn
from purenet import checkpoint
from tests.digits import fit_digits

ROOT = pathlib.Path(__file__).resolve().parents[1]


def model_and_state(key):
    model = pn.serial(pn.Dense(8), pn.ReLU(), pn.Dropout(0.1), pn.Dense(3))
    _, params = model.init(key, (-1, 4))
    optimizer = optax.adam(1e-2)
    return model, params, optimizer, optimizer.init(params)


def same_tree(a, b) -> bool:
    def raw(leaf):
        is_key = jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)
        return np.asarray(jax.random.key_data(leaf) if is_key else leaf)

    pairs = zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    same = [raw(u).dtype == raw(v).dtype and np.array_equal(raw(u), raw(v)) for u, v in pairs]
    return jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b) and all(same)


def test_round_trip_of_params_optimizer_state_step_and_keys(tmp_path, key):
    _, params, _, opt_state = model_and_state(key)
    tree = {
        "params": params,
        "opt_state": opt_state,
        "key": jax.random.PRNGKey(7),
        "typed_key": jax.random.key(8),
        "half": jnp.linspace(0, 1, 5, dtype=jnp.bfloat16),
    }
    path = checkpoint.save(tmp_path / "ckpt", tree, step=120, history={"loss": [0.5, 0.25]})
    assert path.name == "ckpt.npz" and not list(tmp_path.glob(".*tmp"))  # no temporary file left
    restored, meta = checkpoint.load(path, like=tree)
    assert same_tree(restored, tree) and meta == {"step": 120, "history": {"loss": [0.5, 0.25]}}
    assert checkpoint.read_metadata(path)["step"] == 120
    # plain containers come back without a template, in their own types
    plain, _ = checkpoint.load(checkpoint.save(tmp_path / "p", {"a": [params[0], None, (jnp.arange(3),)]}))
    assert same_tree(plain, {"a": [params[0], None, (jnp.arange(3),)]})


def test_the_file_is_plain_npz_with_json_structure(tmp_path, key):
    _, params, _, _ = model_and_state(key)
    path = checkpoint.save(tmp_path / "ckpt", params)
    with np.load(path, allow_pickle=False) as archive:  # readable with pickle off, by NumPy alone
        assert all(archive[name].dtype != object for name in archive.files)
        meta = __import__("json").loads(archive["__meta__"].tobytes())
    assert meta["format"] == "purenet-checkpoint" and meta["leaves"][0]["path"] == "[0]['b']"


def test_a_pickled_object_array_is_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, __meta__=np.frombuffer(b"{}", np.uint8), leaf_0=np.array([object()], dtype=object))
    meta = {"format": "purenet-checkpoint", "version": 1, "structure": {"leaf": 0}, "metadata": {}}
    meta["leaves"] = [{"dtype": "float32", "shape": [1], "path": ""}]
    np.savez(path, __meta__=np.frombuffer(__import__("json").dumps(meta).encode(), np.uint8),
             leaf_0=np.array([object()], dtype=object))  # fmt: skip
    with pytest.raises(pn.CheckpointError, match="holds pickled objects, which purenet never loads"):
        checkpoint.load(path)


def test_truncated_and_corrupted_files_get_clear_errors(tmp_path, key):
    _, params, _, _ = model_and_state(key)
    path = checkpoint.save(tmp_path / "ckpt", params)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(pn.CheckpointError, match=r"load: .*truncated.npz is truncated or corrupted"):
        checkpoint.load(truncated)
    corrupted = tmp_path / "corrupted.npz"
    flipped = bytearray(data)
    offset = data.index(np.asarray(params[0]["w"]).tobytes()[:16]) + 8  # inside the first weight matrix
    flipped[offset] ^= 0xFF
    corrupted.write_bytes(bytes(flipped))
    with pytest.raises(pn.CheckpointError, match="is truncated or corrupted .*CRC"):
        checkpoint.load(corrupted)
    with pytest.raises(pn.CheckpointError, match="load: no checkpoint at"):
        checkpoint.load(tmp_path / "missing.npz")
    other = tmp_path / "other.npz"
    np.savez(other, w=np.ones(3))
    with pytest.raises(pn.CheckpointError, match="is not a purenet checkpoint"):
        checkpoint.load(other)


def test_a_tree_that_does_not_fit_the_model_is_refused(tmp_path, key):
    _, params, _, _ = model_and_state(key)
    path = checkpoint.save(tmp_path / "ckpt", params)
    _, wider = pn.serial(pn.Dense(9), pn.ReLU(), pn.Dropout(0.1), pn.Dense(3)).init(key, (-1, 4))
    with pytest.raises(
        pn.CheckpointError, match=r"load at .*ckpt.npz\[0\]\['b'\]: expected shape \(9,\), got \(8,\)"
    ):
        checkpoint.load(path, like=wider)
    _, deeper = pn.serial(pn.Dense(8), pn.ReLU(), pn.Dense(8), pn.Dense(3)).init(key, (-1, 4))
    with pytest.raises(pn.CheckpointError, match="holds 4 arrays, but the tree it is loaded into has 6"):
        checkpoint.load(path, like=deeper)
    renamed = [params[0], (), (), {"w": params[3]["w"], "c": params[3]["b"]}]
    with pytest.raises(
        pn.CheckpointError, match=r"expected a leaf at \[3\]\['c'\], the checkpoint has \[3\]\['b'\]"
    ):
        checkpoint.load(path, like=renamed)
    as_half = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), params)
    with pytest.raises(pn.CheckpointError, match=r"\[0\]\['b'\] has dtype float32, expected bfloat16"):
        checkpoint.load(path, like=as_half)
    as_int = jax.tree_util.tree_map(lambda a: a.astype(jnp.int32), params)
    with pytest.raises(
        pn.CheckpointError, match=r"ckpt.npz\[0\]\['b'\]: expected an integer dtype like int32, got float32"
    ):
        checkpoint.load(path, like=as_int)
    with pytest.raises(pn.CheckpointError, match="save: metadata must be JSON-serializable"):
        checkpoint.save(tmp_path / "x", params, when=object())


WRITER = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    from purenet import checkpoint

    path, mode = sys.argv[1], sys.argv[2]
    big = lambda v: {"w": np.full((1024, 1024, 8), v, np.float32), "v": np.full(3, v, np.float32)}  # 32 MiB
    if mode == "stall":  # stop for good inside the save, after the data is written, before the rename
        def stall(fd):
            print("in fsync", flush=True)
            time.sleep(600)
        os.fsync = stall
    print("ready", flush=True)
    for version in range(1, 10**6):
        checkpoint.save(path, big(float(version)), version=version)
    """
)


def start_writer(path, mode):
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), mode], stdout=subprocess.PIPE, text=True, env=env
    )
    assert child.stdout.readline().strip() == "ready"
    return child


def assert_whole(path, versions_at_least: int = 0):
    tree, meta = checkpoint.load(path)
    version = meta["version"]
    assert version >= versions_at_least
    assert np.all(tree["w"] == version) and np.all(tree["v"] == version)  # one version throughout, not torn
    return version


def test_sigkill_in_the_middle_of_a_save_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "ckpt.npz"
    checkpoint.save(
        path, {"w": np.zeros((1024, 1024, 8), np.float32), "v": np.zeros(3, np.float32)}, version=0
    )
    child = start_writer(path, "stall")
    assert child.stdout.readline().strip() == "in fsync"  # the new file is written, not yet renamed
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    assert list(tmp_path.glob(".ckpt.npz.*.tmp")), "the kill did not land inside a save"
    assert assert_whole(path) == 0  # the previous checkpoint, intact
    checkpoint.save(path, {"w": np.ones((2, 2)), "v": np.ones(3)}, version=1)  # and the next save works
    assert checkpoint.read_metadata(path)["version"] == 1


@pytest.mark.parametrize("delay", [0.3, 0.9, 1.7])
def test_sigkill_at_any_moment_leaves_a_whole_checkpoint(tmp_path, delay):
    path = tmp_path / "ckpt.npz"
    checkpoint.save(
        path, {"w": np.zeros((1024, 1024, 8), np.float32), "v": np.zeros(3, np.float32)}, version=0
    )
    child = start_writer(path, "run")
    time.sleep(delay)  # 32 MiB saves take ~0.1-0.3 s each: the kill lands somewhere in the loop
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert_whole(path)


def fit_small(key, epochs, **kwargs):
    model = pn.serial(pn.Dense(32), pn.ReLU(), pn.Dropout(0.2), pn.Dense(10))
    return fit_digits(model, key, epochs=epochs, **kwargs)[0]


def test_resuming_gives_bit_identical_params(tmp_path, key):
    straight = fit_small(key, 4)
    fit_small(key, 2, checkpoint_path=tmp_path / "run")  # "interrupted" after two epochs
    assert checkpoint.read_metadata(tmp_path / "run.npz")["epoch"] == 2
    resumed = fit_small(key, 4, checkpoint_path=tmp_path / "run")  # picks up at epoch 3
    assert same_tree(straight.params, resumed.params)
    assert same_tree(straight.opt_state, resumed.opt_state)
    assert straight.history["loss"] == resumed.history["loss"]
    assert straight.history["val_loss"] == resumed.history["val_loss"]
    assert checkpoint.read_metadata(tmp_path / "run.npz")["epoch"] == 4


def test_resuming_into_another_model_is_refused(tmp_path, key):
    fit_small(key, 1, checkpoint_path=tmp_path / "run")
    data = pn.load_digits()
    other = pn.serial(pn.Dense(16), pn.ReLU(), pn.Dense(10))
    _, params = other.init(key, (-1, 64))
    with pytest.raises(
        pn.ResumeError,
        match=r"fit: resuming from .*run' refused: this run differs in the params tree .*"
        r"first at params\[0\]\['b'\]: \(32,\) float32 saved, \(16,\) float32 now",
    ):
        pn.fit(
            other, params, data.x_train, data.y_train, loss=pn.softmax_cross_entropy, optimizer=optax.adam(1e-3),
            epochs=2, batch_size=64, key=key, checkpoint_path=tmp_path / "run",
        )  # fmt: skip
