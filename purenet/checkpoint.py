"""Checkpoints without pickle: arrays in one .npz, the tree structure as JSON, written atomically.

A checkpoint is one ``.npz`` file (a zip archive with a CRC-32 per member)
holding ``leaf_0 ... leaf_{n-1}`` and a member ``__meta__``: UTF-8 JSON with
the format version, each leaf's key path, shape and dtype, the nested
structure of plain containers, and user metadata (step, epoch, history).
``numpy.load(..., allow_pickle=False)`` reads it, so loading never runs code
from the file.  dtypes NumPy cannot store natively (bfloat16) travel as their
raw bits with the dtype named in the JSON; JAX PRNG keys as their key data.

``save`` writes to a temporary file in the same directory, flushes and
fsyncs it, renames it over the target (``os.replace``, atomic on POSIX) and
fsyncs the directory: a process killed at any point leaves either the
previous checkpoint or the new one, never a torn file
(tests/test_checkpoint.py kills a writer with SIGKILL mid-save).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import tempfile
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from purenet.checkpoint_format import (
    FORMAT,
    VERSION,
    CheckpointError,
    read_member,
    read_meta,
    require_regular_file,
    stored_layout,
)
from purenet.core import check_like

_NATIVE_KINDS = "biuf"  # bool, signed, unsigned and float dtypes numpy stores as themselves


# --------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------


def _structure(tree: Any, leaves: list) -> Any:
    """The JSON form of ``tree``: dicts, lists, tuples and None as themselves, arrays as leaf indices.

    Other pytree nodes (optax's NamedTuple states) are recorded by type name
    only; such a tree is rebuilt from the template given to ``load``.
    """
    if type(tree) is dict and all(isinstance(k, str) for k in tree):
        return {"dict": {k: _structure(tree[k], leaves) for k in sorted(tree)}}  # jax's order: sorted keys
    if type(tree) is tuple:
        return {"tuple": [_structure(c, leaves) for c in tree]}
    if type(tree) is list:
        return {"list": [_structure(c, leaves) for c in tree]}
    if tree is None:
        return {"none": None}
    children, treedef = jax.tree_util.tree_flatten(tree, is_leaf=lambda t: t is not tree)
    if treedef.num_leaves == 1 and treedef.num_nodes == 1:  # an array or a scalar: a leaf
        leaves.append(tree)
        return {"leaf": len(leaves) - 1}
    return {"node": type(tree).__name__, "children": [_structure(c, leaves) for c in children]}


def _rebuild(structure: Any, leaves: list) -> Any:
    if "node" in structure:
        raise CheckpointError(
            "load",
            f"the checkpoint holds a {structure['node']} node, which only a template can rebuild: "
            "pass like=<a tree of the same structure> (e.g. optimizer.init(params))",
        )
    ((kind, body),) = structure.items()
    if kind == "dict":
        return {k: _rebuild(v, leaves) for k, v in body.items()}
    if kind in ("tuple", "list"):
        items = [_rebuild(v, leaves) for v in body]
        return tuple(items) if kind == "tuple" else items
    if kind == "none":
        return None
    return leaves[body]  # kind == "leaf"


def _encode_leaf(leaf: Any) -> tuple[np.ndarray, dict]:
    if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        data = np.asarray(jax.random.key_data(leaf))
        return data, {"dtype": "key", "impl": str(jax.random.key_impl(leaf)), "shape": list(leaf.shape)}
    array = np.asarray(leaf)
    info = {"dtype": str(array.dtype), "shape": list(array.shape)}
    if array.dtype.kind in _NATIVE_KINDS and array.dtype.isnative and str(array.dtype) != "bfloat16":
        return array, info
    if array.dtype.itemsize not in (1, 2, 4, 8):
        raise CheckpointError("save", f"cannot store dtype {array.dtype}")
    return array.view(f"uint{8 * array.dtype.itemsize}"), info  # the raw bits; the JSON names the dtype


def _decode_leaf(data: np.ndarray, info: dict) -> Any:
    if info["dtype"] == "key":
        return jax.random.wrap_key_data(data, impl=info["impl"])
    dtype = jnp.dtype(info["dtype"])  # jnp knows bfloat16 (ml_dtypes)
    return data if data.dtype == dtype else data.view(dtype)


# --------------------------------------------------------------------------
# Save
# --------------------------------------------------------------------------


def save(path: str | os.PathLike, tree: Any, **metadata: Any) -> pathlib.Path:
    """Write ``tree`` (any pytree of arrays: params, optimizer state, PRNG key...) to ``path``, atomically.

    Args:
      path: the file to write; ``.npz`` is appended when missing.
      tree: the pytree to store.
      **metadata: JSON-serializable extras stored beside it (step, epoch, history...).

    Returns:
      The path written.  On any failure the previous file at ``path`` is left
      as it was and the temporary file is removed.
    """
    path = _npz_path(path)
    leaves: list = []
    structure = _structure(tree, leaves)
    arrays, infos = {}, []
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    assert len(paths) == len(leaves), "the JSON structure walked the leaves in another order than jax"
    for i, (leaf, leaf_path) in enumerate(zip(leaves, paths)):
        arrays[f"leaf_{i}"], info = _encode_leaf(leaf)
        infos.append(info | {"path": leaf_path})
    try:
        meta = json.dumps(
            {
                "format": FORMAT,
                "version": VERSION,
                "structure": structure,
                "leaves": infos,
                "metadata": metadata,
            }
        )
    except TypeError as error:
        raise CheckpointError("save", f"metadata must be JSON-serializable: {error}") from None
    arrays["__meta__"] = np.frombuffer(meta.encode(), dtype=np.uint8)
    try:
        _write_atomically(path, arrays)
    except OSError as error:
        raise CheckpointError(
            "save",
            f"cannot write {path}: {error.strerror or error}; the previous checkpoint, if any, is intact",
        ) from None
    return path


def _write_atomically(path: pathlib.Path, arrays: dict) -> None:
    """Write to a temporary file beside ``path``, fsync, rename over it, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _remove_stale_temporaries(path: pathlib.Path) -> None:
    """Remove temporaries of earlier saves of ``path`` whose writer is gone (a SIGKILL mid-save)."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(?:(\d+)\.)?[^.]*\.tmp$")
    for candidate in path.parent.iterdir():
        match = pattern.match(candidate.name)
        if match and not _alive(int(match.group(1)) if match.group(1) else None):
            candidate.unlink(missing_ok=True)


def _alive(pid: int | None) -> bool:
    """Whether process ``pid`` still runs (a temporary without a pid is from an older purenet: stale)."""
    if pid is None or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _npz_path(path: str | os.PathLike) -> pathlib.Path:
    """Where ``save`` writes ``path``: with ``.npz`` appended when it has another suffix or none."""
    path = pathlib.Path(path)
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def _existing_path(path: str | os.PathLike) -> pathlib.Path:
    """Where a checkpoint saved as ``path`` is: ``path.npz`` (where ``save`` writes) if there, else ``path``.

    A file of another kind at the bare ``path`` (notes, a log) never hides
    the checkpoint beside it.
    """
    path = pathlib.Path(path)
    npz = _npz_path(path)
    return npz if npz.exists() or not path.exists() else path


def exists(path: str | os.PathLike) -> bool:
    """Whether a checkpoint saved as ``path`` is there: ``path.npz``, or ``path`` if it is a zip file."""
    found = _existing_path(path)
    return found.is_file() and (found.suffix == ".npz" or zipfile.is_zipfile(found))


def _fsync_directory(directory: pathlib.Path) -> None:
    """Make the rename itself durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata stored with a checkpoint (step, epoch, history...), without reading its arrays."""
    return _read(path, arrays=False)[1]["metadata"]


def load(path: str | os.PathLike, like: Any = None) -> tuple[Any, dict]:
    """Read a checkpoint written by ``save``.

    Args:
      path: the file.
      like: a template tree (e.g. freshly initialized params and optimizer
        state).  When given, the checkpoint must have its structure, leaf
        paths, shapes and dtypes, and the result is built in its tree type;
        without it, trees of dicts, lists and tuples are rebuilt from the JSON.

    Returns:
      ``(tree, metadata)``.

    Raises:
      CheckpointError: a missing, truncated or corrupted file (bad CRC), a
        file that is not a purenet checkpoint, or one that does not fit ``like``.
    """
    path, meta, leaves = _read(path, arrays=True, like=like)
    if like is None:
        return _rebuild(meta["structure"], leaves), meta["metadata"]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), leaves), meta["metadata"]


def _read(path: str | os.PathLike, arrays: bool, like: Any = None) -> tuple[pathlib.Path, dict, list]:
    """The validated header and, when asked, the leaves: each checked against the header before it is read."""
    path = _existing_path(path)
    require_regular_file(path)
    file_size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            meta = read_meta(path, archive, file_size)
            if like is not None:
                _check_fits(path, meta["leaves"], like)  # before any data is read
            leaves = []
            if arrays:
                for i, info in enumerate(meta["leaves"]):
                    dtype, shape = stored_layout(info)
                    leaves.append(
                        _decode_leaf(read_member(path, archive, f"leaf_{i}", dtype, shape, file_size), info)
                    )
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, NotImplementedError) as error:
        raise CheckpointError(
            "load",
            f"{path} is truncated or corrupted ({type(error).__name__}: {error}), or not a checkpoint",
        ) from None
    return path, meta, leaves


def _check_fits(path, infos: list[dict], like: Any) -> None:
    """The checkpoint must hold ``like``'s leaf paths, shapes and exact dtypes.

    Shapes and dtype kinds go through the library's one tree check,
    ``check_like``, on a tree of ``jax.ShapeDtypeStruct`` built from the
    stored leaf infos in ``like``'s structure, so a model of another size is
    named by its first leaf of another shape.  Then the leaf paths, which the
    checkpoint stores (leaves of one shape under other names), and last the
    exact dtype, since a resumed run must get back the precision it saved.
    """
    expected, treedef = jax.tree_util.tree_flatten_with_path(like)
    if len(expected) != len(infos):
        raise CheckpointError(
            "load", f"{path} holds {len(infos)} arrays, but the tree it is loaded into has {len(expected)}"
        )
    # like's leaves as specs too: a Python scalar is then a leaf to check_like, and no array leaves the device
    wanted = [_leaf_spec(leaf) for _, leaf in expected]
    stored = [_stored_spec(info) for info in infos]
    template = jax.tree_util.tree_unflatten(treedef, wanted)
    held = jax.tree_util.tree_unflatten(treedef, stored)
    check_like(held, template, layer="load", what=str(path), error=CheckpointError)
    for (key_path, _), info in zip(expected, infos):
        name = jax.tree_util.keystr(key_path)
        if info["path"] != name:
            raise CheckpointError(
                "load", f"{path}: expected a leaf at {name}, the checkpoint has {info['path']}"
            )
    for (key_path, _), want, got in zip(expected, wanted, stored):
        if want.dtype != got.dtype:
            raise CheckpointError(
                "load",
                f"{path}: the leaf at {jax.tree_util.keystr(key_path)} has dtype {got.dtype}, "
                f"expected {want.dtype}",
            )


def _leaf_spec(leaf: Any) -> jax.ShapeDtypeStruct:
    """A leaf of ``like`` as its shape and the dtype ``save`` stores it in (a Python scalar's is NumPy's)."""
    dtype = leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
    return jax.ShapeDtypeStruct(np.shape(leaf), dtype)


def _stored_spec(info: dict) -> jax.ShapeDtypeStruct:
    """A stored leaf's shape and dtype, from its JSON info (a PRNG key's dtype from its impl)."""
    if info["dtype"] == "key":
        key_dtype = jax.eval_shape(lambda: jax.random.key(0, impl=info["impl"])).dtype  # no key is made
        return jax.ShapeDtypeStruct(tuple(info["shape"]), key_dtype)
    return jax.ShapeDtypeStruct(tuple(info["shape"]), jnp.dtype(info["dtype"]))


__all__ = ["FORMAT", "VERSION", "CheckpointError", "exists", "load", "read_metadata", "save"]
