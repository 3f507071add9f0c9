"""Learning-rate schedules (PyTorch's): call ``scheduler.step()`` once per epoch after the
optimizer's steps; each parameter group's ``lr`` is set from its ``initial_lr``."""
import abc
import math
import numbers


class LRScheduler(abc.ABC):
    """Base class: ``step()`` advances ``last_epoch`` and sets each group's lr to ``lr_at(initial_lr, epoch)``."""

    def __init__(self, optimizer, last_epoch=-1):
        if not hasattr(optimizer, "param_groups"):
            raise TypeError(f"{type(self).__name__}: optimizer must be a convkern.optim optimizer, "
                            f"got {type(optimizer).__name__}")
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            if last_epoch == -1:
                group.setdefault("initial_lr", group["lr"])
            elif "initial_lr" not in group:
                raise ValueError(f"{type(self).__name__}: resuming with last_epoch={last_epoch} needs "
                                 "'initial_lr' in every parameter group")
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self.step()

    @abc.abstractmethod
    def lr_at(self, base_lr, epoch):
        """The learning rate of a group with initial lr ``base_lr`` at epoch ``epoch``."""

    def step(self):
        self.last_epoch += 1
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = self.lr_at(base, self.last_epoch)

    def get_last_lr(self):
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self):
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state):
        """Restore what ``state_dict`` saved; a state without a non-negative int "last_epoch" and a
        list of finite "base_lrs", one per parameter group, raises ValueError."""
        op = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state, dict) or "last_epoch" not in state or "base_lrs" not in state:
            raise ValueError(f"{op}: expected a dict with 'last_epoch' and 'base_lrs' (from state_dict())")
        last_epoch, base_lrs = state["last_epoch"], state["base_lrs"]
        last_epoch = last_epoch.item() if hasattr(last_epoch, "item") else last_epoch
        if isinstance(last_epoch, bool) or not isinstance(last_epoch, int) or last_epoch < 0:
            raise ValueError(f"{op}: last_epoch must be a non-negative int, got {last_epoch!r}")
        base_lrs = base_lrs.tolist() if hasattr(base_lrs, "tolist") else base_lrs
        if not isinstance(base_lrs, (list, tuple)) or not all(_finite(b) for b in base_lrs):
            raise ValueError(f"{op}: base_lrs must be a list of finite numbers, got {base_lrs!r}")
        base_lrs = [float(b) for b in base_lrs]
        if len(base_lrs) != len(self.optimizer.param_groups):
            raise ValueError(f"{type(self).__name__}.load_state_dict: the saved state has {len(base_lrs)} parameter "
                             f"groups, the optimizer {len(self.optimizer.param_groups)}")
        self.last_epoch = last_epoch
        self.base_lrs = base_lrs
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = self.lr_at(base, self.last_epoch)


def _finite(value):
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)


def _gamma(value, op):
    """A decay factor: a finite number >= 0 (a NaN or negative gamma would train with a NaN or
    negative learning rate)."""
    if not _finite(value) or value < 0:
        raise ValueError(f"{op}: gamma must be a finite number >= 0, got {value!r}")
    return float(value)


class StepLR(LRScheduler):
    """``lr = initial_lr * gamma ** (epoch // step_size)``."""

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        if isinstance(step_size, bool) or not isinstance(step_size, int) or step_size < 1:
            raise ValueError(f"StepLR: step_size must be a positive int, got {step_size!r}")
        self.step_size, self.gamma = step_size, _gamma(gamma, "StepLR")
        super().__init__(optimizer, last_epoch)

    def lr_at(self, base_lr, epoch):
        return base_lr * self.gamma ** (epoch // self.step_size)


class ExponentialLR(LRScheduler):
    """``lr = initial_lr * gamma ** epoch``."""

    def __init__(self, optimizer, gamma, last_epoch=-1):
        self.gamma = _gamma(gamma, "ExponentialLR")
        super().__init__(optimizer, last_epoch)

    def lr_at(self, base_lr, epoch):
        return base_lr * self.gamma ** epoch
