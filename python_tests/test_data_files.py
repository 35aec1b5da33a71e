"""Crafted demonstration files the loader must refuse with a DemonstrationError naming the problem:
members that are not .npy arrays, .npy headers declaring more data than the file holds,
episode lengths whose int64 sum wraps around, actions outside [-1, 1]."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from numpy.lib import format as npy_format

from cdred_fast import _npz
from cdred_fast.data import DemonstrationError, Demonstrations


def _demos(action_scale=1.0):
    rng = np.random.default_rng(0)
    eps = []
    for length in (4, 7, 3):
        states = rng.normal(size=(length + 1, 5)).astype(np.float32)
        eps.append(
            {
                "obs": states[:-1],
                "action": action_scale * rng.uniform(-1, 1, (length, 2)).astype(np.float32),
                "reward": rng.normal(size=length).astype(np.float32),
                "next_obs": states[1:],
            }
        )
    return Demonstrations.from_episodes(eps, task="mw-reach")


def _members(demos) -> dict[str, bytes]:
    """The .npy bytes of each member save() writes."""
    payload = {
        "obs": demos.obs,
        "action": demos.action,
        "reward": demos.reward,
        "next_obs": demos.next_obs,
        "episode_lengths": demos.episode_lengths,
        "success": demos.success,
        "format_version": np.int64(1),
        "task": np.str_(demos.task),
        "obs_dim": np.int64(demos.obs_dim),
        "action_dim": np.int64(demos.action_dim),
    }
    out = {}
    for key, value in payload.items():
        buf = io.BytesIO()
        np.save(buf, value, allow_pickle=False)
        out[f"{key}.npy"] = buf.getvalue()
    return out


def _zip(path, members: dict[str, bytes], compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, raw in members.items():
            zf.writestr(name, raw)
    return path


def _npy_with_header(shape, descr="<f4", data=b"\0" * 64) -> bytes:
    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


def test_crafted_valid_archive_loads(tmp_path):
    demos = _demos()
    for compression in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        loaded = Demonstrations.load(_zip(tmp_path / "d.npz", _members(demos), compression))
        np.testing.assert_array_equal(loaded.obs, demos.obs)
        np.testing.assert_array_equal(loaded.action, demos.action)


def test_member_that_is_not_npy(tmp_path):
    members = _members(_demos())
    members["obs"] = members.pop("obs.npy")[128:]  # raw bytes under the key's bare name
    with pytest.raises(DemonstrationError, match=r"d\.npz': member 'obs' is not a \.npy array"):
        Demonstrations.load(_zip(tmp_path / "d.npz", members))
    members = _members(_demos())
    members["README.txt"] = b"hello"
    with pytest.raises(DemonstrationError, match=r"member 'README\.txt' is not a \.npy array"):
        Demonstrations.load(_zip(tmp_path / "e.npz", members))


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
@pytest.mark.parametrize("shape", [(10**12, 5), (2**62, 2**62), (3, 5)])
def test_header_declaring_more_data_than_the_member_holds(tmp_path, compression, shape):
    members = _members(_demos())
    members["obs.npy"] = _npy_with_header(shape)
    with pytest.raises(DemonstrationError, match=rf"member 'obs\.npy' declares shape \({shape[0]}, {shape[1]}\)"):
        Demonstrations.load(_zip(tmp_path / "d.npz", members, compression))


def test_header_garbage_and_object_dtype(tmp_path):
    members = _members(_demos())
    members["obs.npy"] = b"\x93NUMPY\x01\x00\x10\x00{'descr': 'zz!!'}\n" + b"\0" * 32
    with pytest.raises(DemonstrationError, match="not a readable .npz"):
        Demonstrations.load(_zip(tmp_path / "d.npz", members))
    members["obs.npy"] = _npy_with_header((2,), descr="|O")
    with pytest.raises(DemonstrationError, match="not a readable .npz archive: member 'obs.npy' holds Python objects"):
        Demonstrations.load(_zip(tmp_path / "e.npz", members))


def test_declared_uncompressed_size_beyond_the_file(tmp_path):
    """A central directory entry claiming more bytes than the member's compressed data can hold."""
    path = _zip(tmp_path / "d.npz", _members(_demos()))
    raw = bytearray(path.read_bytes())
    central = -1
    name = b"obs.npy"
    at = raw.find(b"PK\x01\x02")
    while at >= 0:  # patch the uncompressed size (offset 24) of obs.npy's central directory entry
        name_len = int.from_bytes(raw[at + 28 : at + 30], "little")
        if raw[at + 46 : at + 46 + name_len] == name:
            raw[at + 24 : at + 28] = (2**31).to_bytes(4, "little")
            central = at
        at = raw.find(b"PK\x01\x02", at + 4)
    assert central >= 0
    path.write_bytes(bytes(raw))
    with pytest.raises(DemonstrationError, match=r"member 'obs\.npy' declares 2147483648 bytes"):
        Demonstrations.load(path)


def test_episode_lengths_whose_int64_sum_wraps_around(tmp_path):
    members = _members(_demos())
    lengths = np.array([2**63 - 1, 2**63 - 1, 16], np.int64)  # int64 sum wraps to 14 = the transitions
    assert int(lengths.sum()) == 14
    buf = io.BytesIO()
    np.save(buf, lengths)
    members["episode_lengths.npy"] = buf.getvalue()
    with pytest.raises(DemonstrationError, match=f"episode lengths sum to {2**64 + 14} but there are 14 transitions"):
        Demonstrations.load(_zip(tmp_path / "d.npz", members))


@pytest.mark.parametrize("value", [100.0, 3e38, -1.001, 1.0 + 1e-4])
def test_actions_outside_the_unit_box_are_refused(tmp_path, value):
    demos = _demos()
    members = _members(demos)
    action = demos.action.copy()
    action[5, 1] = value
    buf = io.BytesIO()
    np.save(buf, action)
    members["action.npy"] = buf.getvalue()
    message = r"action .* at index \(5, 1\) is outside the normalised action range \[-1, 1\]"
    with pytest.raises(DemonstrationError, match=message):
        Demonstrations.load(_zip(tmp_path / "d.npz", members))
    with pytest.raises(DemonstrationError, match=message):
        Demonstrations(demos.obs, action, demos.reward, demos.next_obs, demos.episode_lengths, demos.success, "t")


def test_actions_at_the_bounds_and_within_tolerance_are_kept():
    demos = _demos()
    action = demos.action.copy()
    action[0] = [1.0, -1.0]
    action[1] = [1.0 + 5e-6, -1.0 - 5e-6]
    d = Demonstrations(demos.obs, action, demos.reward, demos.next_obs, demos.episode_lengths, demos.success, "t")
    assert d.action[1, 0] > 1.0


def test_single_npy_and_truncated_member(tmp_path):
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(_npz.NpzError, match="single .npy array"):
        _npz.read_npz(tmp_path / "one.npy", ["x"])
    members = _members(_demos())
    path = _zip(tmp_path / "d.npz", members)
    raw = path.read_bytes()
    at = raw.find(b"obs.npy") + 7 + 140  # inside obs's data (after its header): CRC mismatch
    path.write_bytes(raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1 :])
    with pytest.raises(DemonstrationError, match="not a readable .npz archive.*CRC"):
        Demonstrations.load(path)
