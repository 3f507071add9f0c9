"""Learning-rate schedules (PyTorch's): call ``scheduler.step()`` once per epoch after the
optimizer's steps; each parameter group's ``lr`` is set from its ``initial_lr``."""
import abc


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
        base_lrs = [float(b) for b in state["base_lrs"]]
        if len(base_lrs) != len(self.optimizer.param_groups):
            raise ValueError(f"{type(self).__name__}.load_state_dict: the saved state has {len(base_lrs)} parameter "
                             f"groups, the optimizer {len(self.optimizer.param_groups)}")
        self.last_epoch = int(state["last_epoch"])
        self.base_lrs = base_lrs
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = self.lr_at(base, self.last_epoch)


class StepLR(LRScheduler):
    """``lr = initial_lr * gamma ** (epoch // step_size)``."""

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        if isinstance(step_size, bool) or not isinstance(step_size, int) or step_size < 1:
            raise ValueError(f"StepLR: step_size must be a positive int, got {step_size!r}")
        self.step_size, self.gamma = step_size, float(gamma)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, base_lr, epoch):
        return base_lr * self.gamma ** (epoch // self.step_size)


class ExponentialLR(LRScheduler):
    """``lr = initial_lr * gamma ** epoch``."""

    def __init__(self, optimizer, gamma, last_epoch=-1):
        self.gamma = float(gamma)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, base_lr, epoch):
        return base_lr * self.gamma ** epoch
