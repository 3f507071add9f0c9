"""convkern.save / convkern.load: exact round trips without pickle, atomic writes, clear errors."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import convkern as ck


def test_round_trip_keeps_structure_and_values(tmp_path, device):
    obj = {"w": ck.tensor(np.arange(6, dtype=np.float32).reshape(2, 3), device=device),
           "b": np.array([1.5, -2.0]), "count": np.zeros((), np.int64),
           "opt": {"lr": 0.1, "betas": (0.9, 0.999), "name": "adam", "flag": True, "none": None,
                   "params": [np.array([0, 1])]}}
    ck.save(obj, tmp_path / "state.npz")
    got = ck.load(tmp_path / "state.npz")
    np.testing.assert_array_equal(got["w"], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert got["w"].dtype == np.float32
    np.testing.assert_array_equal(got["b"], obj["b"])
    assert got["count"].shape == () and got["count"].dtype == np.int64
    assert got["opt"]["lr"] == 0.1 and got["opt"]["betas"] == (0.9, 0.999)
    assert got["opt"]["name"] == "adam" and got["opt"]["flag"] is True and got["opt"]["none"] is None
    np.testing.assert_array_equal(got["opt"]["params"][0], [0, 1])


def test_file_is_a_plain_npz_without_pickle(tmp_path):
    ck.save({"a": np.ones(3)}, tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz", allow_pickle=False) as z:
        np.testing.assert_array_equal(z["a"], np.ones(3))


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    ck.save({"a": np.ones(3)}, path)

    def broken(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(np.lib.format, "write_array", broken)
    with pytest.raises(OSError, match="disk full"):
        ck.save({"a": np.zeros(3)}, path)
    np.testing.assert_array_equal(ck.load(path)["a"], np.ones(3))
    assert os.listdir(tmp_path) == ["ckpt.npz"]


def test_save_killed_mid_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "ckpt.npz"
    ck.save({"a": np.ones(3)}, path)
    script = textwrap.dedent(f"""
        import os, signal
        import numpy as np
        import convkern as ck
        def dying(member, array, **kwargs):
            member.write(b"partial bytes")
            os.kill(os.getpid(), signal.SIGKILL)
        np.lib.format.write_array = dying
        ck.save({{"a": np.zeros(10**6)}}, {str(path)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    np.testing.assert_array_equal(ck.load(path)["a"], np.ones(3))


@pytest.mark.parametrize("obj, exc, message", [
    ({"a/b": np.ones(1)}, ValueError, "without '/'"),
    ({"a": object()}, TypeError, "unsupported type object"),
    ({"a": np.array([object()])}, TypeError, "dtype object"),
])
def test_save_bad_objects(tmp_path, obj, exc, message):
    with pytest.raises(exc, match=message):
        ck.save(obj, tmp_path / "x.npz")
    assert not os.listdir(tmp_path)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        ck.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="junk.npz.*not a convkern save file"):
        ck.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "plain.npz", a=np.ones(2))
    with pytest.raises(ValueError, match="plain.npz.*not a convkern save file"):
        ck.load(tmp_path / "plain.npz")


def test_any_key_name_and_file_permissions(tmp_path):
    ck.save({"file": np.ones(2), "allow_pickle": np.zeros(1)}, tmp_path / "k.npz")
    got = ck.load(tmp_path / "k.npz")
    np.testing.assert_array_equal(got["file"], np.ones(2))
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(tmp_path / "k.npz").st_mode & 0o777 == 0o666 & ~umask


def test_load_truncated_and_npy_files(tmp_path):
    ck.save({"a": np.ones(100)}, tmp_path / "t.npz")
    data = (tmp_path / "t.npz").read_bytes()
    (tmp_path / "t.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="t.npz.*not a convkern save file"):
        ck.load(tmp_path / "t.npz")
    np.save(tmp_path / "single.npy", np.ones(3))
    with pytest.raises(ValueError, match="single.npy.*single array"):
        ck.load(tmp_path / "single.npy")
