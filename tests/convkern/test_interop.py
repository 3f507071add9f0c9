"""Interop: NumPy in and out, CUDA arrays from other libraries through __cuda_array_interface__
(zero copy, both directions; under the simulator "device" memory is host memory, which lets the
test check that no copy was made), DLPack on the CPU."""
import numpy as np
import pytest
from numba import cuda

import convkern as ck
import convkern.functional as F
from convkern import backend


class ForeignCudaArray:
    """Stands in for a CuPy array / PyTorch CUDA tensor: it only exposes __cuda_array_interface__."""

    def __init__(self, device_array):
        self._keep = device_array
        self.__cuda_array_interface__ = backend.cuda_array_interface(device_array)


def test_numpy_round_trip_shares_memory():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    t = ck.tensor(a)
    assert np.shares_memory(t.numpy(), a)
    np.testing.assert_array_equal(np.asarray(t), a)


def test_cuda_array_interface_in_without_copy():
    host = np.arange(6, dtype=np.float64).reshape(2, 3)
    dev = cuda.to_device(host)
    foreign = ForeignCudaArray(dev)
    t = ck.tensor(foreign)
    assert t.device == "cuda" and t.shape == (2, 3) and t.dtype == np.float64
    assert backend.cuda_array_interface(t.data)["data"][0] == foreign.__cuda_array_interface__["data"][0]
    np.testing.assert_array_equal(t.numpy(), host)


def test_functional_ops_accept_cuda_array_interface_objects():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    y = F.conv2d(ForeignCudaArray(cuda.to_device(x)), ForeignCudaArray(cuda.to_device(w)))
    assert y.device == "cuda"
    np.testing.assert_allclose(y.numpy(), F.conv2d(x, w).numpy(), rtol=1e-5, atol=1e-5)


def test_tensor_exports_cuda_array_interface():
    t = ck.tensor(np.arange(4, dtype=np.float32), device="cuda")
    iface = t.__cuda_array_interface__
    assert iface["shape"] == (4,) and iface["typestr"] == np.dtype(np.float32).str and iface["version"] == 3
    back = ck.tensor(ForeignCudaArray(t.data))
    assert backend.cuda_array_interface(back.data)["data"][0] == iface["data"][0]
    with pytest.raises(AttributeError, match="only CUDA tensors"):
        ck.tensor(np.ones(2)).__cuda_array_interface__
    assert not hasattr(ck.tensor(np.ones(2)), "__cuda_array_interface__")


def test_non_contiguous_cuda_array_is_refused_clearly():
    dev = cuda.to_device(np.arange(12, dtype=np.float32).reshape(3, 4))
    iface = dict(backend.cuda_array_interface(dev))
    iface.update(shape=(3, 2), strides=(16, 8))

    class Strided:
        __cuda_array_interface__ = iface
    with pytest.raises(ValueError, match="must be C-contiguous"):
        ck.tensor(Strided())


def test_dlpack_round_trip_on_cpu():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = ck.from_dlpack(a)
    assert np.shares_memory(t.numpy(), a)
    b = np.from_dlpack(t)
    assert np.shares_memory(b, a)
    assert t.__dlpack_device__() == (1, 0)


def test_dlpack_with_pytorch_when_installed():
    torch = pytest.importorskip("torch")
    tt = torch.arange(6, dtype=torch.float32)
    t = ck.from_dlpack(tt)
    tt[0] = 42.0
    assert t.numpy()[0] == 42.0
    back = torch.from_dlpack(t)
    assert back.data_ptr() == tt.data_ptr()


def test_dlpack_errors():
    with pytest.raises(TypeError, match="from_dlpack: expected an object with __dlpack__"):
        ck.from_dlpack([1, 2])
    with pytest.raises(BufferError, match="__cuda_array_interface__"):
        ck.tensor(np.ones(2), device="cuda").__dlpack__()


def test_non_native_byte_order_is_made_native():
    a = np.arange(4, dtype=">f4")
    t = ck.tensor(a)
    assert t.dtype.isnative and t.dtype == np.float32
    np.testing.assert_array_equal(t.numpy(), [0, 1, 2, 3])


def test_foreign_array_stays_alive_while_viewed():
    import gc
    t = ck.tensor(ForeignCudaArray(cuda.to_device(np.arange(1 << 16, dtype=np.float64))))
    gc.collect()
    np.testing.assert_array_equal(t.numpy()[:3], [0, 1, 2])
