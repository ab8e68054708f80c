"""Issue 15: every hostile checkpoint the issue lists is refused by name, never believed.

Each test builds the hostile file by rewriting a good checkpoint's zip
members (the JSON header, an .npy member) the way an attacker or a broken
disk would, and asserts a CheckpointError naming the file and the problem.
"""

from __future__ import annotations

import io
import json
import os
import threading
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import purenet as pn
from purenet import checkpoint

TREE = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1.0, 2.0, 3.0], np.float32)}


def good(tmp_path) -> os.PathLike:
    return checkpoint.save(tmp_path / "good", TREE, epoch=1)


def members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def write(path, contents: dict[str, bytes], compression=zipfile.ZIP_STORED) -> os.PathLike:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in contents.items():
            archive.writestr(name, data)
    return path


def header(path) -> dict:
    return json.loads(np.load(io.BytesIO(members(path)["__meta__.npy"])).tobytes())


def with_header(path, meta: dict | str, target) -> os.PathLike:
    contents = members(path)
    text = meta if isinstance(meta, str) else json.dumps(meta)
    contents["__meta__.npy"] = npy(np.frombuffer(text.encode(), np.uint8))
    return write(target, contents)


def leaf_index(path, name: str) -> int:
    return next(i for i, info in enumerate(header(path)["leaves"]) if info["path"] == f"['{name}']")


def with_member(path, name: str, array: np.ndarray, target) -> os.PathLike:
    contents = members(path)
    contents[f"leaf_{leaf_index(path, name)}.npy"] = npy(array)
    return write(target, contents)


def refused(path, fragment: str, like=None):
    with pytest.raises(pn.CheckpointError) as caught:
        checkpoint.load(path, like=like)
    message = str(caught.value)
    assert os.path.basename(os.fspath(path)) in message, message
    assert fragment in message, message


# --------------------------------------------------------------------------
# Data that disagrees with its JSON entry
# --------------------------------------------------------------------------


@pytest.mark.parametrize("like", [None, TREE])
def test_data_of_another_shape_under_an_entry_is_refused(tmp_path, like):
    hostile = with_member(good(tmp_path), "b", np.zeros(1000, np.float32), tmp_path / "shape.npz")
    refused(hostile, "holds <f4 data of shape (1000,), but the header declares <f4 of shape (3,)", like)


@pytest.mark.parametrize(
    "array, fragment",
    [
        (np.array([0.0, 1.0, 2.0]), "holds <f8 data"),
        (np.array([0.0, 1.0, 2.0], ">f4"), "holds >f4 data"),
        (np.array([0, 1, 2], np.int32), "holds <i4 data"),
    ],
)
def test_data_of_another_dtype_or_byte_order_is_never_reinterpreted(tmp_path, array, fragment):
    hostile = with_member(good(tmp_path), "b", array, tmp_path / "dtype.npz")
    refused(hostile, fragment)


@pytest.mark.parametrize("dtype", ["int32", "uint8", "float16", "int64", "bool"])
def test_an_edited_dtype_string_is_refused(tmp_path, dtype):
    path = good(tmp_path)
    meta = header(path)
    meta["leaves"][leaf_index(path, "b")]["dtype"] = dtype
    refused(with_header(path, meta, tmp_path / "edited.npz"), "refused, never reinterpreted")


@pytest.mark.parametrize("dtype", ["object", "complex64", "S3", 5, None])
def test_a_dtype_string_outside_the_numeric_ones_is_refused(tmp_path, dtype):
    path = good(tmp_path)
    meta = header(path)
    meta["leaves"][0]["dtype"] = dtype
    fragment = "pickled objects" if dtype == "object" else f"declares dtype {dtype!r}"
    refused(with_header(path, meta, tmp_path / "edited.npz"), fragment)


@pytest.mark.parametrize("index", [-2, 2, 7, True, "0", 1.0])
def test_a_leaf_index_that_aliases_or_escapes_is_refused(tmp_path, index):
    path = good(tmp_path)
    meta = header(path)
    meta["structure"]["dict"]["w"] = {"leaf": index}
    refused(with_header(path, meta, tmp_path / "alias.npz"), "not a distinct index in [0, 2)")


@pytest.mark.parametrize("depth", [100, 900])
def test_a_structure_900_levels_deep_is_refused_not_a_recursion_error(tmp_path, depth):
    path = good(tmp_path)
    meta = header(path)
    meta["structure"] = "DEEP"
    deep = '{"list": [' * depth + '{"leaf": 0}' + "]}" * depth  # json.dumps itself could not write 900
    text = json.dumps(meta).replace('"DEEP"', '{"dict": {"w": ' + deep + ', "b": {"leaf": 1}}}')
    target = with_header(path, text, tmp_path / "deep.npz")
    with pytest.raises(
        pn.CheckpointError, match=r"deep.npz: (its structure nests deeper than 64|its header is not valid)"
    ):
        checkpoint.load(target)


def test_a_zip_bomb_is_refused_before_inflating(tmp_path):
    path = good(tmp_path)
    meta = header(path)
    meta["leaves"][leaf_index(path, "b")]["shape"] = [16 * 2**20]
    contents = members(with_header(path, meta, tmp_path / "meta.npz"))
    contents[f"leaf_{leaf_index(path, 'b')}.npy"] = npy(np.zeros(16 * 2**20, np.float32))
    bomb = write(tmp_path / "bomb.npz", contents, compression=zipfile.ZIP_DEFLATED)
    assert os.path.getsize(bomb) < 2**17  # 64 MiB of zeros deflate to ~64 KiB
    refused(bomb, "more than the")


def test_a_header_declaring_two_to_the_forty_elements_allocates_nothing(tmp_path):
    path = good(tmp_path)
    meta = header(path)
    meta["leaves"][leaf_index(path, "b")]["shape"] = [2**40]
    refused(with_header(path, meta, tmp_path / "huge.npz"), "more than the")


# --------------------------------------------------------------------------
# Files that are not checkpoints
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda p: p.write_bytes(b"\x00garbag"), "truncated or corrupted"),
        (lambda p: p.write_text("epoch 3: loss 0.1\n"), "truncated or corrupted"),
    ],
)
def test_garbage_and_text_are_called_corrupt_not_pickled(tmp_path, make, fragment):
    target = tmp_path / "bad.npz"
    make(target)
    refused(target, fragment)
    with pytest.raises(pn.CheckpointError) as caught:
        checkpoint.load(target)
    assert "pickle" not in str(caught.value)


def test_a_one_byte_truncation_is_called_corrupt(tmp_path):
    data = good(tmp_path).read_bytes()
    target = tmp_path / "cut.npz"
    target.write_bytes(data[:-1])
    refused(target, "truncated or corrupted")


def test_dev_zero_is_refused_as_a_device_at_once():
    with pytest.raises(pn.CheckpointError, match="/dev/zero: is a device or socket, not a checkpoint file"):
        checkpoint.load("/dev/zero")


def test_a_directory_is_refused(tmp_path):
    (tmp_path / "dir.npz").mkdir()
    refused(tmp_path / "dir.npz", "is a directory")


def test_a_fifo_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    outcome: list = []

    def attempt():
        try:
            checkpoint.load(fifo)
        except pn.CheckpointError as error:
            outcome.append(str(error))

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive(), "load hung on a FIFO"
    assert outcome and "is a FIFO, not a checkpoint file" in outcome[0]


def test_a_text_file_at_the_bare_path_never_hides_the_checkpoint(tmp_path):
    checkpoint.save(tmp_path / "run", TREE, epoch=2)
    (tmp_path / "run").write_text("notes about the run")
    assert checkpoint.exists(tmp_path / "run")
    tree, _ = checkpoint.load(tmp_path / "run")
    np.testing.assert_array_equal(tree["w"], TREE["w"])
    (tmp_path / "alone").write_text("not a checkpoint")
    assert not checkpoint.exists(tmp_path / "alone")


# --------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    checkpoint.save(tmp_path / "run", TREE)
    stale = [tmp_path / ".run.npz.999999999.abc.tmp", tmp_path / ".run.npz.xyz.tmp"]
    for path in stale:
        path.write_bytes(b"\x00" * 1000)
    other = tmp_path / ".other.npz.999999999.abc.tmp"
    other.write_bytes(b"keep")
    checkpoint.save(tmp_path / "run", TREE)
    assert not any(path.exists() for path in stale)
    assert other.exists()  # another checkpoint's temporaries are not ours to remove


def test_save_into_an_impossible_place_is_a_checkpoint_error_naming_it(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(pn.CheckpointError, match=r"save: cannot write .*a_file/sub/run.npz"):
        checkpoint.save(blocker / "sub" / "run", TREE)
    (tmp_path / "run.npz").mkdir()
    with pytest.raises(
        pn.CheckpointError, match=r"save: cannot write .*run.npz.*previous checkpoint, if any, is intact"
    ):
        checkpoint.save(tmp_path / "run", TREE)


def test_keys_and_bfloat16_still_round_trip(tmp_path):
    tree = {"key": jax.random.key(3), "old": jax.random.PRNGKey(1), "h": jnp.ones(3, jnp.bfloat16)}
    path = checkpoint.save(tmp_path / "k", tree)
    loaded, _ = checkpoint.load(path, like=tree)
    assert loaded["h"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(jax.random.key_data(loaded["key"]), jax.random.key_data(tree["key"]))


# --------------------------------------------------------------------------
# A fuzz: any mutation is either harmless or refused by name
# --------------------------------------------------------------------------


@given(st.data())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_mutated_bytes_load_exactly_or_are_refused(tmp_path, data):
    original = good(tmp_path).read_bytes()
    mutated = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        mutated[data.draw(st.integers(0, len(mutated) - 1))] = data.draw(st.integers(0, 255))
    target = tmp_path / "mutated.npz"
    target.write_bytes(bytes(mutated))
    try:
        tree, _ = checkpoint.load(target)
    except pn.CheckpointError:
        return
    for name in TREE:  # a mutation that loads must have touched nothing that matters
        np.testing.assert_array_equal(tree[name], TREE[name])


@given(st.sampled_from(["format", "version", "structure", "leaves", "metadata"]), st.data())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_mutated_header_fields_are_refused(tmp_path, field, data):
    path = good(tmp_path)
    meta = header(path)
    meta[field] = data.draw(
        st.one_of(st.none(), st.integers(), st.text(max_size=4), st.lists(st.integers(), max_size=2))
    )
    target = with_header(path, meta, tmp_path / "fields.npz")
    try:
        tree, _ = checkpoint.load(target)
    except pn.CheckpointError:
        return
    assert field == "metadata" and isinstance(meta["metadata"], dict)  # only metadata may change harmlessly
    np.testing.assert_array_equal(tree["w"], TREE["w"])
