"""convkern.torch: convkern's kernels inside PyTorch. Every drop-in against its torch module
(forward, input and parameter gradients, running statistics) in float64, the zero-copy hand-over,
torch's autograd contract (freed graphs, retain_graph, in-place checks, no_grad), the bad-input
messages, and a few SGD steps of a small CNN with convkern layers against the same run in pure torch.

Only the CPU path runs here (PyTorch is a CPU build on the development machines); the CUDA test
needs a CUDA build of PyTorch and a GPU."""
import copy
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ckt = pytest.importorskip("convkern.torch")

import convkern as ck  # noqa: E402
from convkern.data import load_dataset  # noqa: E402
from convkern.ops import lrn as lrn_ops  # noqa: E402

# torch's note that its own "same" padding of an even kernel copies the input
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")

tnn = torch.nn
TOL = dict(rtol=1e-10, atol=1e-12)
PYTORCH_MD = pathlib.Path(__file__).resolve().parents[2] / "docs" / "pytorch.md"


def _close(a, b):
    np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), **TOL)


def _forward_backward(module, x, call):
    out = call(module, x)
    y = out[0] if isinstance(out, tuple) else out
    params = [p for p in module.parameters()]
    grads = torch.autograd.grad(y, [x] + params, torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape))
    return out, grads


# (id, torch module factory, input shape, mode, call)
CASES = [
    ("conv1d", lambda: tnn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2), (2, 4, 9), "train", None),
    ("conv2d", lambda: tnn.Conv2d(3, 4, 3, stride=(2, 1), padding=(1, 2), dilation=(1, 2)), (2, 3, 7, 8), "train", None),
    ("conv2d-same", lambda: tnn.Conv2d(2, 3, (3, 4), padding="same", bias=False), (1, 2, 5, 6), "train", None),
    ("conv2d-unbatched", lambda: tnn.Conv2d(2, 3, 3), (2, 6, 5), "train", None),
    ("conv3d", lambda: tnn.Conv3d(2, 3, (2, 3, 2), padding=1), (2, 2, 4, 5, 4), "train", None),
    ("conv_transpose1d", lambda: tnn.ConvTranspose1d(4, 2, 3, stride=2, output_padding=1, groups=2), (2, 4, 5),
     "train", None),
    ("conv_transpose2d", lambda: tnn.ConvTranspose2d(3, 2, (3, 2), stride=2, padding=1), (2, 3, 4, 5), "train", None),
    ("conv_transpose2d-output_size", lambda: tnn.ConvTranspose2d(2, 3, 3, stride=2), (1, 2, 3, 4), "train",
     lambda m, x: m(x, output_size=[8, 10])),
    ("conv_transpose3d", lambda: tnn.ConvTranspose3d(2, 2, 2, stride=(1, 2, 2), bias=False), (1, 2, 3, 3, 2),
     "train", None),
    ("max_pool1d", lambda: tnn.MaxPool1d(3, 2, padding=1, return_indices=True), (2, 3, 9), "train", None),
    ("max_pool2d", lambda: tnn.MaxPool2d(3, 2, return_indices=True, ceil_mode=True), (2, 3, 8, 9), "train", None),
    ("max_pool2d-dilated", lambda: tnn.MaxPool2d(2, 1, padding=1, dilation=2), (1, 2, 6, 5), "train", None),
    ("max_pool2d-unbatched", lambda: tnn.MaxPool2d(2, return_indices=True), (3, 6, 6), "train", None),
    ("max_pool3d", lambda: tnn.MaxPool3d(2, return_indices=True), (1, 2, 4, 4, 6), "train", None),
    ("avg_pool1d", lambda: tnn.AvgPool1d(3, 2, padding=1, count_include_pad=False), (2, 3, 8), "train", None),
    ("avg_pool2d", lambda: tnn.AvgPool2d(3, 2, padding=1, ceil_mode=True), (2, 3, 8, 7), "train", None),
    ("avg_pool3d", lambda: tnn.AvgPool3d((1, 2, 2)), (1, 2, 3, 4, 4), "train", None),
    ("adaptive_avg_pool1d", lambda: tnn.AdaptiveAvgPool1d(3), (2, 3, 7), "train", None),
    ("adaptive_avg_pool2d", lambda: tnn.AdaptiveAvgPool2d((3, None)), (2, 3, 7, 5), "train", None),
    ("adaptive_avg_pool3d", lambda: tnn.AdaptiveAvgPool3d(2), (1, 2, 3, 5, 4), "train", None),
    ("local_response_norm", lambda: tnn.LocalResponseNorm(5, 1e-2, 0.75, 2.0), (2, 7, 3, 4), "train", None),
    ("local_response_norm-even", lambda: tnn.LocalResponseNorm(4, 0.3, 0.6, 1.5), (2, 6, 5), "train", None),
    ("batch_norm1d", lambda: tnn.BatchNorm1d(4), (5, 4), "train", None),
    ("batch_norm2d", lambda: tnn.BatchNorm2d(3, momentum=0.2), (2, 3, 4, 5), "train", None),
    ("batch_norm2d-eval", lambda: tnn.BatchNorm2d(3), (2, 3, 4, 5), "eval", None),
    ("batch_norm2d-cumulative", lambda: tnn.BatchNorm2d(3, momentum=None), (2, 3, 4, 5), "train", None),
    ("batch_norm2d-untracked", lambda: tnn.BatchNorm2d(3, affine=False, track_running_stats=False), (2, 3, 4, 5),
     "eval", None),
    ("batch_norm3d", lambda: tnn.BatchNorm3d(2), (2, 2, 3, 3, 2), "train", None),
    ("linear", lambda: tnn.Linear(5, 3), (2, 4, 5), "train", None),
    ("linear-nobias", lambda: tnn.Linear(5, 3, bias=False), (5,), "train", None),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_drop_in_matches_torch(case):
    _, make, shape, mode, call = case
    call = call or (lambda m, x: m(x))
    torch.manual_seed(0)
    ref = make().double()
    with torch.no_grad():  # running statistics away from their defaults, so eval mode reads them
        for name, buf in ref.named_buffers():
            if buf.is_floating_point():
                buf.uniform_(0.5, 1.5)
    ours = copy.deepcopy(ref)
    assert ckt.replace_modules(ours) == [""]
    assert type(ours) is ckt.DROP_INS[type(ref)]
    ref.train(mode == "train")
    ours.train(mode == "train")
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    for _ in range(2):  # twice: running statistics evolve from the first step's values
        out_ref, grads_ref = _forward_backward(ref, x, call)
        out, grads = _forward_backward(ours, x, call)
        for a, b in zip(out if isinstance(out, tuple) else (out,), out_ref if isinstance(out_ref, tuple) else (out_ref,)):
            assert a.dtype == b.dtype and a.shape == b.shape
            _close(a, b)
        for a, b in zip(grads, grads_ref):
            _close(a, b)
        for a, b in zip(ours.buffers(), ref.buffers()):  # running statistics and num_batches_tracked
            np.testing.assert_allclose(a.numpy(), b.numpy(), **TOL)


def test_every_drop_in_is_a_subclass_of_its_torch_module():
    for torch_cls, cls in ckt.DROP_INS.items():
        assert issubclass(cls, torch_cls) and cls.__name__ == torch_cls.__name__
        assert cls.__doc__, cls


def test_functional_ops_match_torch_float32():
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.standard_normal((2, 6, 5, 5), dtype=np.float32), requires_grad=True)
    w = torch.tensor(rng.standard_normal((4, 3, 3, 3), dtype=np.float32), requires_grad=True)
    for fn, tfn in [(lambda a: ckt.conv2d(a, w, padding=1, groups=2),
                     lambda a: torch.nn.functional.conv2d(a, w, padding=1, groups=2)),
                    (lambda a: ckt.lrn(a, depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75),
                     lambda a: torch.nn.functional.local_response_norm(a, 5, 5e-4, 0.75, 2.0)),
                    (lambda a: ckt.max_pool2d(a, 2, 1), lambda a: torch.nn.functional.max_pool2d(a, 2, 1))]:
        y, yt = fn(x), tfn(x)
        assert y.dtype == torch.float32
        np.testing.assert_allclose(y.detach().numpy(), yt.detach().numpy(), rtol=1e-5, atol=1e-5)
        g = torch.autograd.grad(y.square().sum(), x)[0]
        gt = torch.autograd.grad(yt.square().sum(), x)[0]
        np.testing.assert_allclose(g.numpy(), gt.numpy(), rtol=1e-4, atol=1e-4)


def test_gradcheck_through_torch():
    rng = np.random.default_rng(1)
    x, w, b = (torch.tensor(rng.standard_normal(s), requires_grad=True) for s in ((1, 2, 4, 5), (3, 2, 2, 3), (3,)))
    assert torch.autograd.gradcheck(lambda x, w, b: ckt.conv2d(x, w, b, stride=(1, 2), padding=1), (x, w, b))
    assert torch.autograd.gradcheck(lambda x: ckt.local_response_norm(x, 2, 0.5, 0.75, 1.0), (x,))
    rm, rv = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x, w, b: ckt.batch_norm(x, rm, rv, w, b, training=True),
                                    (x, w[:2, 0, 0, 0].detach().requires_grad_(), b[:2].detach().requires_grad_()))


def test_batch_norm_functional_updates_the_torch_buffers_in_place():
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    trm, trv = rm.clone(), rv.clone()
    ptr = rm.data_ptr()
    y = ckt.batch_norm(x, rm, rv, training=True, momentum=0.3)
    yt = torch.nn.functional.batch_norm(x, trm, trv, training=True, momentum=0.3)
    _close(y, yt)
    _close(rm, trm)
    _close(rv, trv)
    assert rm.data_ptr() == ptr
    with pytest.raises(ValueError, match="batch_norm: running_mean must be a contiguous tensor"):
        ckt.batch_norm(x, torch.zeros(3, 2, dtype=torch.float64)[:, 0], rv, training=True)


def test_tensors_are_shared_not_copied(monkeypatch):
    """The kernel reads the torch input's own memory and the torch result is the kernel's output array."""
    seen = {}
    forward = lrn_ops.LocalResponseNorm.forward

    def spy(self, x):
        seen["x"] = x
        seen["y"] = forward(self, x)
        return seen["y"]
    monkeypatch.setattr(lrn_ops.LocalResponseNorm, "forward", spy)
    x = torch.rand(2, 4, 3, 3, requires_grad=True)
    y = ckt.local_response_norm(x, 3)
    assert seen["x"].ctypes.data == x.data_ptr()
    assert y.data_ptr() == seen["y"].ctypes.data
    xt = torch.rand(2, 3, 3, 4, dtype=torch.float64).transpose(1, 3)  # non-contiguous: made contiguous first
    _close(ckt.local_response_norm(xt, 3), torch.nn.functional.local_response_norm(xt, 3))


def test_no_graph_and_nothing_kept_under_torch_no_grad(monkeypatch):
    seen = []
    forward = lrn_ops.LocalResponseNorm.forward

    def spy(self, x):
        seen.append(self.needs_input_grad)
        return forward(self, x)
    monkeypatch.setattr(lrn_ops.LocalResponseNorm, "forward", spy)
    x = torch.rand(2, 4, 3, 3, requires_grad=True)
    with torch.no_grad():
        y = ckt.lrn(x, 1)
    assert seen == [(False,)] and y.grad_fn is None and not y.requires_grad
    with torch.no_grad(), ck.no_grad():  # nothing to record, so convkern's own switch does not matter
        ckt.lrn(x, 1)


def test_torch_autograd_contract():
    x = torch.rand(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    loss = ckt.lrn(x, 1).sum()
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    loss.backward()
    _close(x.grad, 2 * first)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        loss.backward()
    z = x * 1.0
    y = ckt.lrn(z, 1)
    z.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()
    with ck.no_grad(), pytest.raises(RuntimeError, match="convkern recorded no graph"):
        ckt.lrn(x, 1)


def test_only_the_needed_gradients():
    x = torch.rand(2, 3, 5, 5, dtype=torch.float64)
    conv = ckt.Conv2d(3, 2, 3).double()
    conv.bias.requires_grad_(False)
    conv(x).sum().backward()
    assert conv.weight.grad is not None and conv.bias.grad is None and x.grad is None


def test_bad_input_names_the_argument():
    x = torch.rand(2, 3, 5, 5)
    with pytest.raises(TypeError, match=r"conv2d: input must be float32 or float64, got torch.float16"):
        ckt.conv2d(x.half(), torch.rand(2, 3, 3, 3).half())
    with pytest.raises(TypeError, match="conv2d: weight must be a torch.Tensor, got ndarray"):
        ckt.conv2d(x, np.zeros((2, 3, 3, 3), np.float32))
    with pytest.raises(TypeError, match="conv2d: weight has dtype float64 but input has dtype float32"):
        ckt.conv2d(x, torch.rand(2, 3, 3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="conv2d: channel mismatch"):
        ckt.conv2d(x, torch.rand(2, 4, 3, 3))
    with pytest.raises(ValueError, match="conv2d: unknown algorithm 'nope'"):
        ckt.conv2d(x, torch.rand(2, 3, 3, 3), algorithm="nope")
    with pytest.raises(ValueError, match="Conv2d: unknown algorithm 'nope'"):
        ckt.Conv2d(3, 2, 3, algorithm="nope")
    with pytest.raises(ValueError, match=r"Conv2d: padding_mode='reflect' is not supported"):
        ckt.Conv2d(3, 2, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match=r"AvgPool2d: divisor_override=2 is not supported"):
        ckt.AvgPool2d(2, divisor_override=2)(x)
    with pytest.raises(ValueError, match="expected 4D input"):  # torch's own check, kept
        ckt.BatchNorm2d(3)(torch.rand(2, 3, 4))
    with pytest.raises(TypeError, match="replace_modules: model must be a torch.nn.Module"):
        ckt.replace_modules([tnn.Conv2d(1, 1, 1)])


def test_replace_modules_swaps_in_place_and_leaves_the_rest():
    class Custom(tnn.Conv2d):  # a subclass may have its own forward: left alone
        pass
    model = tnn.Sequential(tnn.Conv2d(1, 2, 3), tnn.ReLU(), tnn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"),
                           tnn.Sequential(tnn.AvgPool2d(2, divisor_override=3), Custom(2, 2, 1)), tnn.Flatten(),
                           tnn.LazyLinear(3))
    before = [id(p) for p in model.parameters()]
    assert ckt.replace_modules(model, algorithm="direct") == ["0"]
    assert [id(p) for p in model.parameters()] == before
    assert type(model[0]) is ckt.Conv2d and model[0].algorithm == "direct"
    assert type(model[2]) is tnn.Conv2d and type(model[3][0]) is tnn.AvgPool2d and type(model[3][1]) is Custom
    assert ckt.replace_modules(model) == []  # already swapped
    pair = tnn.Sequential(tnn.Conv2d(1, 1, 1), tnn.LocalResponseNorm(2))
    assert ckt.replace_modules(pair, types=[tnn.LocalResponseNorm]) == ["1"] and type(pair[0]) is tnn.Conv2d
    with pytest.raises(ValueError, match="replace_modules: types must be torch module classes with a drop-in"):
        ckt.replace_modules(pair, types=[tnn.ReLU])
    with pytest.raises(ValueError, match=r"replace_modules: layer '1' \(Conv2d\): padding_mode='reflect'"):
        ckt.replace_modules(tnn.Sequential(tnn.Conv2d(1, 1, 1), tnn.Conv2d(1, 1, 1, padding_mode="reflect")),
                            strict=True)


def _small_cnn():
    return tnn.Sequential(tnn.Conv2d(1, 4, 5, padding=2), tnn.BatchNorm2d(4), tnn.ReLU(), tnn.MaxPool2d(2),
                          tnn.LocalResponseNorm(3, alpha=1e-2, beta=0.75, k=2.0), tnn.Conv2d(4, 6, 3, stride=2),
                          tnn.ReLU(), tnn.Flatten(), tnn.Linear(6 * 6 * 6, 10))


def _train(model, batches, swap):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    if swap:  # after the optimizer: it must keep updating the same Parameters
        assert ckt.replace_modules(model) == ["0", "1", "3", "4", "5", "8"]
    losses = []
    for images, labels in batches:
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_small_cnn_trains_like_pure_torch():
    data = load_dataset("default", "train")
    batches = [(torch.tensor(data.images[i:i + 16], dtype=torch.float64), torch.tensor(data.labels[i:i + 16]))
               for i in range(0, 64, 16)]
    torch.manual_seed(0)
    ref = _small_cnn().double()
    ours = copy.deepcopy(ref)
    initial = copy.deepcopy(ref.state_dict())
    ref_losses = _train(ref, batches, swap=False)
    losses = _train(ours, batches, swap=True)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-10)
    assert not np.allclose(ours[0].weight.detach().numpy(), initial["0.weight"].numpy())  # the steps moved it
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        assert a.dtype == b.dtype, name
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


def test_pytorch_md_example_runs():
    scope = {}
    exec(compile(re.findall(r"```python\n(.*?)```", PYTORCH_MD.read_text(), re.S)[0], str(PYTORCH_MD), "exec"), scope)
    assert scope["swapped"] == ["0", "1", "3", "4", "6"]
    assert type(scope["model"][0]) is ckt.Conv2d and scope["model"][0].weight.grad is not None
    assert scope["y"].shape == (2, 96, 13, 13) and torch.isfinite(scope["loss"])


def test_import_convkern_never_imports_torch_and_a_missing_torch_is_explained():
    code = ("import sys\n"
            "import convkern, convkern.functional, convkern.nn\n"
            "assert 'torch' not in sys.modules, 'import convkern imported torch'\n"
            "class NoTorch:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'torch' or name.startswith('torch.'):\n"
            "            raise ImportError('No module named torch')\n"
            "sys.meta_path.insert(0, NoTorch())\n"
            "try:\n"
            "    import convkern.torch\n"
            "except ImportError as e:\n"
            "    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "convkern.torch needs PyTorch (pip install torch)" in out.stdout


@pytest.mark.skipif(not torch.cuda.is_available() or not ck.cuda_available(),
                    reason="needs a CUDA build of PyTorch and a GPU (PyTorch here is a CPU build)")
def test_cuda_tensors_run_on_the_cuda_kernels():
    x = torch.rand(2, 3, 6, 6, device="cuda", requires_grad=True)
    conv = ckt.Conv2d(3, 4, 3, padding=1).cuda()
    y = ckt.lrn(conv(x), 2)
    assert y.device.type == "cuda"
    y.square().sum().backward()
    cpu = copy.deepcopy(conv).cpu()
    xc = x.detach().cpu().requires_grad_()
    yc = ckt.lrn(cpu(xc), 2)
    yc.square().sum().backward()
    np.testing.assert_allclose(y.detach().cpu().numpy(), yc.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(x.grad.cpu().numpy(), xc.grad.numpy(), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(conv.weight.grad.cpu().numpy(), cpu.weight.grad.numpy(), rtol=1e-3, atol=1e-4)
