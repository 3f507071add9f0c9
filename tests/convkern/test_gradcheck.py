"""convkern.gradcheck: passes correct gradients, catches wrong ones, refuses bad arguments."""
import numpy as np
import pytest

import convkern as ck
from convkern.autograd import Function


class WrongSquare(Function):
    """y = x*x with a deliberately wrong backward (x instead of 2x)."""

    def forward(self, x):
        self.save_for_backward(x)
        return x * x

    def backward(self, g):
        (x,) = self.saved
        return (g * x,)


def test_gradcheck_passes_on_correct_ops(device):
    rng = np.random.default_rng(0)
    a = ck.tensor(rng.uniform(0.5, 2.0, (3, 4)), requires_grad=True, device=device)
    b = ck.tensor(rng.uniform(0.5, 2.0, (3, 4)), requires_grad=True, device=device)
    assert ck.gradcheck(lambda x, y: x * y / (x + 2.0) - y ** 3, [a, b])


def test_gradcheck_catches_wrong_backward():
    x = ck.tensor(np.linspace(0.5, 1.5, 6), requires_grad=True)
    with pytest.raises(ck.GradcheckError, match="gradient of input 0 at index"):
        ck.gradcheck(lambda t: WrongSquare.apply(t), [x])
    assert ck.gradcheck(lambda t: WrongSquare.apply(t), [x], raise_exception=False) is False


def test_gradcheck_max_checks_and_passthrough_args():
    x = ck.tensor(np.linspace(-1, 1, 50).reshape(5, 10), requires_grad=True)
    assert ck.gradcheck(lambda t, k: t * k, [x, 3.0], max_checks=5)


@pytest.mark.parametrize("inputs, exc, message", [
    (lambda: [ck.tensor(np.ones(3))], ValueError, "at least one Tensor with requires_grad=True"),
    (lambda: [ck.tensor(np.ones(3, np.float32), requires_grad=True)], TypeError, "must be float64"),
])
def test_gradcheck_bad_arguments(inputs, exc, message):
    with pytest.raises(exc, match=message):
        ck.gradcheck(lambda t: t * 2.0, inputs())
