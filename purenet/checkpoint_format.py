"""Reading a checkpoint as a hostile file: every byte is checked against what the JSON declares first.

A checkpoint's ``__meta__`` JSON says what each ``leaf_i`` holds (shape,
dtype); a file that lies must be refused before it is believed.  So the
reader:

* opens regular files only (a FIFO would hang, ``/dev/zero`` never ends);
* reads the JSON from a member of bounded size and validates every node of
  it: known kinds, a bounded depth, each leaf index used once, known dtypes;
* reads each member's ``.npy`` header before its data and refuses a shape,
  dtype or byte order that disagrees with the JSON, and a member whose size
  in the zip directory is not exactly header plus declared data, or larger
  than the file itself (a zip bomb, a 2**40-element declaration);
* then reads exactly the declared bytes, and to the member's end, so the
  zip CRC is checked.

Corruption is called corruption; "pickled objects" is said only of a member
that really declares the object dtype.
"""

from __future__ import annotations

import json
import os
import pathlib
import stat
import zipfile
from typing import Any, BinaryIO

import jax
import numpy as np

from purenet.core import PurenetError

FORMAT = "purenet-checkpoint"
VERSION = 1
MAX_DEPTH = 64  # nesting of the stored structure; a params tree is a few levels deep
MAX_META_BYTES = 64 * 2**20
NUMERIC_DTYPES = frozenset(
    {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}
    | {"float16", "bfloat16", "float32", "float64"}
)
KEY_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")


class CheckpointError(PurenetError, ValueError):
    """A checkpoint could not be written or read, or does not fit the tree it is loaded into."""


def _refuse(path: Any, message: str) -> CheckpointError:
    return CheckpointError("load", f"{os.fspath(path)}: {message}")


def require_regular_file(path: pathlib.Path) -> None:
    """A regular file, or a refusal naming what is there instead (never open a FIFO or a device)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise CheckpointError("load", f"no checkpoint at {path}") from None
    except OSError as error:
        raise _refuse(path, f"cannot be read ({error.strerror or error})") from None
    if not stat.S_ISREG(mode):
        kind = (
            "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
        )
        raise _refuse(path, f"is {kind}, not a checkpoint file")


# --------------------------------------------------------------------------
# The JSON
# --------------------------------------------------------------------------


def _validate_structure(path, node: Any, count: int, seen: set, depth: int = 0) -> None:
    """Every node one of the kinds ``save`` writes, at most ``MAX_DEPTH`` deep, each leaf index once."""
    if depth > MAX_DEPTH:
        raise _refuse(path, f"its structure nests deeper than {MAX_DEPTH} levels: corrupt or hostile")
    if not (isinstance(node, dict) and len(node) in (1, 2)):
        raise _refuse(path, f"its structure holds a malformed node {str(node)[:60]!r}")
    if "node" in node:
        children = node.get("children")
        if not (isinstance(node["node"], str) and isinstance(children, list) and len(node) == 2):
            raise _refuse(path, "its structure holds a malformed pytree node")
        for child in children:
            _validate_structure(path, child, count, seen, depth + 1)
        return
    ((kind, body),) = node.items()
    if kind == "leaf":
        if isinstance(body, bool) or not isinstance(body, int) or not 0 <= body < count or body in seen:
            raise _refuse(path, f"its structure names leaf {body!r}, not a distinct index in [0, {count})")
        seen.add(body)
    elif kind == "dict" and isinstance(body, dict):
        for child in body.values():
            _validate_structure(path, child, count, seen, depth + 1)
    elif kind in ("tuple", "list") and isinstance(body, list):
        for child in body:
            _validate_structure(path, child, count, seen, depth + 1)
    elif not (kind == "none" and body is None):
        raise _refuse(path, f"its structure holds an unknown node kind {kind!r}")


def _validate_leaf_info(path, index: int, info: Any) -> None:
    if not isinstance(info, dict) or not isinstance(info.get("path"), str):
        raise _refuse(path, f"leaf {index}'s entry is malformed")
    shape = info.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise _refuse(path, f"leaf {index} declares shape {shape!r}, not a list of sizes >= 0")
    dtype = info.get("dtype")
    if dtype == "key":
        if info.get("impl") not in KEY_IMPLS:
            raise _refuse(path, f"leaf {index} declares an unknown PRNG key impl {info.get('impl')!r}")
    elif dtype == "object":
        raise _refuse(path, f"leaf {index} holds pickled objects, which purenet never loads")
    elif dtype not in NUMERIC_DTYPES:
        raise _refuse(path, f"leaf {index} declares dtype {dtype!r}, not one of {sorted(NUMERIC_DTYPES)}")


def validate_meta(path, meta: Any) -> dict:
    """The decoded ``__meta__`` JSON, refused unless every field is what ``save`` writes."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _refuse(path, "is not a purenet checkpoint (its __meta__ is not a purenet header)")
    if meta.get("version") != VERSION:
        raise _refuse(path, f"is format version {meta.get('version')!r}, expected {VERSION}")
    leaves, metadata = meta.get("leaves"), meta.get("metadata")
    if not isinstance(leaves, list) or not isinstance(metadata, dict):
        raise _refuse(path, "its header lacks the leaf list or the metadata")
    for index, info in enumerate(leaves):
        _validate_leaf_info(path, index, info)
    seen: set = set()
    _validate_structure(path, meta.get("structure"), len(leaves), seen)
    if len(seen) != len(leaves):
        raise _refuse(path, f"its structure uses {len(seen)} of its {len(leaves)} leaves")
    return meta


# --------------------------------------------------------------------------
# The members
# --------------------------------------------------------------------------


def stored_layout(info: dict) -> tuple[np.dtype, tuple]:
    """The dtype (native byte order) and shape ``save`` writes for a leaf of this JSON entry."""
    shape = tuple(info["shape"])
    if info["dtype"] == "key":
        data = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0, impl=info["impl"])))
        return np.dtype(data.dtype), shape + tuple(data.shape)
    dtype = jax.numpy.dtype(info["dtype"])
    if dtype.kind in "biuf" and str(dtype) != "bfloat16":
        return np.dtype(dtype), shape
    return np.dtype(f"uint{8 * dtype.itemsize}"), shape  # raw bits


def _read_header(stream: BinaryIO) -> tuple[tuple, bool, np.dtype, int]:
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        raise ValueError(f"npy format version {version}")
    return shape, fortran, dtype, stream.tell()


def read_member(
    path, archive: zipfile.ZipFile, name: str, dtype: np.dtype, shape: tuple, file_size: int
) -> np.ndarray:
    """Member ``name`` as an array of exactly ``dtype`` and ``shape``, checked before its data is read."""
    try:
        entry = archive.getinfo(f"{name}.npy")
    except KeyError:
        raise _refuse(path, f"has no member {name}: truncated or corrupt") from None
    declared = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if entry.compress_size > file_size or entry.file_size > file_size + 2**16 or declared > file_size:
        raise _refuse(
            path, f"member {name} declares {declared} bytes, more than the {file_size}-byte file holds"
        )
    with archive.open(entry) as stream:
        try:
            got_shape, fortran, got_dtype, header = _read_header(stream)
        except ValueError as error:
            if "object" in str(error) or "pickle" in str(error):
                raise _refuse(
                    path, f"member {name} holds pickled objects, which purenet never loads"
                ) from None
            raise _refuse(path, f"member {name} is not an npy array ({error}): corrupt") from None
        if got_dtype.hasobject:
            raise _refuse(path, f"member {name} holds pickled objects, which purenet never loads")
        if got_dtype != dtype or tuple(got_shape) != shape or fortran:
            raise _refuse(
                path,
                f"member {name} holds {got_dtype.str} data of shape {tuple(got_shape)}, but the header "
                f"declares {dtype.str} of shape {shape}: refused, never reinterpreted",
            )
        if entry.file_size != header + declared:
            raise _refuse(
                path, f"member {name} is {entry.file_size} bytes, not its header and {declared} bytes"
            )
        data = stream.read(declared)
        if len(data) != declared or stream.read(1):  # the read to the end checks the zip CRC
            raise _refuse(path, f"member {name} is truncated")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def read_meta(path, archive: zipfile.ZipFile, file_size: int) -> dict:
    """The validated ``__meta__`` JSON of an open archive."""
    try:
        entry = archive.getinfo("__meta__.npy")
    except KeyError:
        raise _refuse(path, "is not a purenet checkpoint (no __meta__ member)") from None
    with archive.open(entry) as stream:
        try:
            shape, _, dtype, _ = _read_header(stream)
        except ValueError as error:
            raise _refuse(path, f"its __meta__ member is not an npy array ({error}): corrupt") from None
    if dtype != np.uint8 or len(shape) != 1 or not 0 < shape[0] <= MAX_META_BYTES:
        raise _refuse(path, f"its __meta__ member is {dtype} of shape {shape}: corrupt")
    raw = read_member(path, archive, "__meta__", np.dtype(np.uint8), tuple(shape), file_size)
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise _refuse(path, f"its header is not valid JSON ({type(error).__name__}): corrupt") from None
    return validate_meta(path, meta)
