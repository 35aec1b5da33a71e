"""Reading an ``.npz`` archive without trusting it (what :meth:`cdred_fast.data.Demonstrations.load` uses).

``numpy.load`` on an untrusted archive can fail with errors that do not say what is wrong
(a member that is not a ``.npy`` is returned as ``bytes``) or try to allocate whatever an
``.npy`` header declares. Here every member is checked before anything is allocated:

* the member's name ends in ``.npy`` and appears once; it is stored or deflated;
* its ``.npy`` header (format 1.0 or 2.0, read with ``numpy.lib.format``) declares a
  plain dtype (no Python objects: nothing is unpickled) and a shape whose byte size
  equals the data the member holds (its uncompressed size minus the header);
* that uncompressed size is within what its compressed bytes can hold (equal for a
  stored member, at most :data:`MAX_DEFLATE_RATIO` times for deflate) and the
  compressed bytes are within the file, so a file of ``n`` bytes never makes this
  allocate more than ``MAX_DEFLATE_RATIO * n`` bytes;
* the data is read into an array of that size and the member's CRC-32 is checked.

Every problem raises :class:`NpzError` (a ``ValueError``) naming the member.
"""

from __future__ import annotations

import math
import os
import tokenize
import zipfile
import zlib
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

__all__ = ["MAX_DEFLATE_RATIO", "NPY_MAGIC", "NpzError", "read_npz"]

NPY_MAGIC = b"\x93NUMPY"
MAX_DEFLATE_RATIO = 1032  # deflate cannot compress by more than about 1032 : 1

# what zipfile, zlib and numpy's header parser raise on damaged or crafted bytes
_READ_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    TypeError,
    KeyError,
    SyntaxError,
    tokenize.TokenError,
    NotImplementedError,
)


class NpzError(ValueError):
    """The archive or one of its members is unreadable or not a plain ``.npy`` array."""


def _unreadable(exc: BaseException) -> NpzError:
    return NpzError(f"is not a readable .npz archive (truncated or corrupt?): {type(exc).__name__}: {exc}")


def _read_header(f, name: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = npy_format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = npy_format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = npy_format.read_array_header_2_0(f)
    else:
        raise NpzError(f"member {name!r} has .npy format version {version}; only 1.0 and 2.0 are read")
    return shape, fortran, dtype


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, file_size: int) -> np.ndarray:
    name = info.filename
    if info.compress_type == zipfile.ZIP_STORED:
        limit = info.compress_size
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        limit = info.compress_size * MAX_DEFLATE_RATIO + 1024
    else:
        raise NpzError(f"member {name!r} uses zip compression method {info.compress_type}; only stored or deflate")
    if info.compress_size > file_size or info.file_size > limit:
        raise NpzError(
            f"member {name!r} declares {info.file_size} bytes ({info.compress_size} compressed), more than "
            f"the {file_size}-byte file can hold"
        )
    with zf.open(info) as f:
        shape, fortran, dtype = _read_header(f, name)
        if dtype.hasobject:
            raise NpzError(
                f"is not a readable .npz archive: member {name!r} holds Python objects (dtype {dtype}), "
                "which are never unpickled"
            )
        count = math.prod(int(d) for d in shape)  # Python ints: no overflow
        nbytes = count * dtype.itemsize
        available = info.file_size - f.tell()
        if nbytes != available:
            raise NpzError(
                f"member {name!r} declares shape {tuple(shape)} of {dtype} ({nbytes} bytes) but holds "
                f"{available} bytes of data"
            )
        arr = np.empty(count, dtype=dtype)
        got = f.readinto(arr.view(np.uint8)) if nbytes else 0
        if got != nbytes or f.read(1):  # reading to the end also checks the CRC-32
            raise NpzError(f"member {name!r} holds {got} bytes of data, expected {nbytes}")
    if fortran:
        return arr.reshape(shape[::-1]).T
    return arr.reshape(shape)


def read_npz(path: str | os.PathLike, keys) -> tuple[set[str], dict[str, np.ndarray]]:
    """``(names, arrays)``: the names of all members (without ``.npy``) and the arrays of
    those in ``keys`` that the archive holds. Raises :class:`NpzError` (messages start
    with what is wrong, for the caller to prefix with the file)."""
    path = Path(path)
    with open(path, "rb") as f:
        if f.read(len(NPY_MAGIC)) == NPY_MAGIC:
            raise NpzError("holds a single .npy array, not an .npz archive")
    file_size = path.stat().st_size
    try:
        zf = zipfile.ZipFile(path)
    except _READ_ERRORS as exc:
        raise _unreadable(exc) from exc
    with zf:
        members: dict[str, zipfile.ZipInfo] = {}
        for info in zf.infolist():
            if info.is_dir() or not info.filename.endswith(".npy"):
                raise NpzError(
                    f"member {info.filename!r} is not a .npy array (an .npz archive holds only .npy members)"
                )
            key = info.filename[: -len(".npy")]
            if key in members:
                raise NpzError(f"member {info.filename!r} appears more than once")
            members[key] = info
        arrays = {}
        for key in keys:
            if key in members:
                try:
                    arrays[key] = _read_member(zf, members[key], file_size)
                except NpzError:
                    raise
                except _READ_ERRORS as exc:
                    raise _unreadable(exc) from exc
    return set(members), arrays
