"""convkern.distributed and data-parallel ``convkern train`` on a world of two on localhost.

MPI comes from the test extra (``pip install -e ".[test]"`` brings mpi4py and the mpich wheel);
the tests start ranks with ``distributed.find_mpiexec()``: the ``mpiexec`` the mpich wheel put
beside this Python (``.venv/bin/mpiexec``), else ``$CONVKERN_MPIEXEC``, else the one on PATH.
Without MPI these tests skip, except under CI (``CI`` set), where they fail. Every subprocess
has a timeout; runs are tiny LeNet-5 trainings on the embedded data.
"""
import importlib.util
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import convkern as ck
from convkern import cli, distributed, load, nn, train

MPIEXEC = distributed.find_mpiexec()
MISSING = (None if MPIEXEC and importlib.util.find_spec("mpi4py") else
           f"needs mpi4py and mpiexec: {distributed.INSTALL_HINT}, e.g. pip install -e '.[test]'")
CHECKS = Path(__file__).with_name("mpi_checks.py")
CLI = [sys.executable, "-m", "convkern.cli"]
SMALL = ["--train-size", "251", "--test-size", "101", "--batch-size", "32"]  # uneven last batch and eval shards
SMALL_KW = dict(train_size=251, test_size=101, batch_size=32, progress=False, log=None)
TIMEOUT = 300  # a cold Numba cache compiles the kernels in both ranks first; a warm run takes seconds


@pytest.fixture
def mpi():
    if MISSING:
        if os.environ.get("CI"):
            pytest.fail(MISSING)
        pytest.skip(MISSING)


def env():
    # One BLAS thread per rank (init() already splits Numba's threads); unbuffered for the kill test.
    return dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def run(command, timeout=TIMEOUT):
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env())


def mpiexec(*command):
    return run([MPIEXEC, "-n", "2", *command])


def json_line(result):
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def one_process():
    """The reference: LeNet-5 for 2 epochs in this process (a world of one)."""
    return train.train("lenet5", epochs=2, **SMALL_KW)


def assert_same_training(record, reference, epochs=2):
    assert record["final_train_loss"] == pytest.approx(reference["history"][epochs - 1]["loss"], rel=1e-3)
    assert abs(record["test_accuracy"] - reference["history"][epochs - 1]["test_accuracy"]) <= 0.01


# ---------------------------------------------------------------- a world of one (no launcher)

def test_world_of_one_without_a_launcher():
    assert not distributed.launched_by_mpi()
    assert (distributed.size(), distributed.rank(), distributed.local_rank(), distributed.where()) == (1, 0, 0, "")
    assert len(distributed.processes()) == 1 and distributed.broadcast_object("x") == "x"
    a = np.arange(5.0)
    total = distributed.allreduce(a, op="mean")
    assert total is not a and np.array_equal(total, a)
    distributed.barrier()
    with pytest.raises(ValueError, match=r"broadcast_parameters: root must be a rank in 0..0, got 1"):
        distributed.broadcast_parameters(nn.Linear(2, 2), root=1)
    with pytest.raises(TypeError, match="DistributedOptimizer: optimizer must be a convkern.optim optimizer"):
        distributed.DistributedOptimizer([])
    with pytest.raises(ValueError, match="bucket_bytes must be a positive int"):
        distributed.DistributedOptimizer(ck.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1), bucket_bytes=0)


def test_launcher_detection(monkeypatch):
    for name in distributed.LAUNCHER_VARIABLES + ("CONVKERN_MPI",):
        monkeypatch.delenv(name, raising=False)
    assert not distributed.launched_by_mpi()
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert distributed.launched_by_mpi()
    monkeypatch.setenv("CONVKERN_MPI", "0")
    assert not distributed.launched_by_mpi()


def test_sync_batchnorm_is_batchnorm_in_a_world_of_one():
    x = np.random.default_rng(0).standard_normal((4, 3, 5, 5)).astype(np.float32)
    plain = nn.Sequential(nn.BatchNorm2d(3))
    sync = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3)))
    assert type(sync[0]) is nn.SyncBatchNorm and sync[0].num_features == 3
    outputs = []
    for model in (plain, sync):
        t = ck.tensor(x, requires_grad=True)
        y = model(t)
        y.backward(np.ones(x.shape, np.float32))
        outputs.append((y.numpy(), t.grad.numpy(), model[0].running_var.numpy()))
    for a, b in zip(*outputs):
        np.testing.assert_array_equal(a, b)


def test_info_shows_the_mpi_library_and_world(capsys, mpi):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^mpi +MPICH Version: \S+ \(mpi4py \S+\); mpiexec \S*mpiexec$", out, re.M), out
    assert "world    1 process (not started by an MPI launcher)" in out


# ---------------------------------------------------------------- a world of two

def test_collectives_on_two_ranks(mpi):
    """mpi_checks.py: allreduce over odd shapes and dtypes (host and, on the simulator, device
    arrays), bitwise broadcast of parameters and buffers, bucketed gradient averaging, and
    SyncBatchNorm against one BatchNorm over the whole batch."""
    result = mpiexec(sys.executable, str(CHECKS))
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("world", "allreduce_host", "broadcast_cpu", "optimizer_cpu", "sync_batchnorm", "all"):
        for r in (0, 1):
            assert f"PASS {name} {r}" in result.stdout, result.stdout + result.stderr
    if ck.cuda_available():
        assert "PASS allreduce_device 1" in result.stdout and "PASS optimizer_cuda 0" in result.stdout


def test_one_and_two_processes_train_alike(one_process, mpi):
    """The same global batch gives the same training under mpiexec -n 2 and --nproc 2."""
    under_mpiexec = json_line(mpiexec(*CLI, "train", "lenet5", "--epochs", "2", "--json", *SMALL))
    started = json_line(run([*CLI, "train", "lenet5", "--epochs", "2", "--json", "--nproc", "2", *SMALL]))
    assert one_process["world_size"] == 1
    for record in (under_mpiexec, started):
        assert record["world_size"] == 2 and list(record) == list(train.RESULT_KEYS)
        assert_same_training(record, one_process)


def test_resume_across_world_sizes(one_process, tmp_path, mpi):
    """A 1-process checkpoint resumed by 2 processes, and a 2-process one by 1 process."""
    train.train("lenet5", epochs=1, checkpoint=tmp_path / "one.npz", **SMALL_KW)
    resumed = json_line(mpiexec(*CLI, "train", "lenet5", "--epochs", "2", "--json", "--resume",
                                str(tmp_path / "one.npz"), *SMALL))
    assert resumed["world_size"] == 2
    assert_same_training(resumed, one_process)
    first = json_line(run([*CLI, "train", "lenet5", "--epochs", "1", "--json", "--nproc", "2", "--checkpoint",
                           str(tmp_path / "two.npz"), *SMALL]))
    assert_same_training(first, one_process, epochs=1)
    assert load(tmp_path / "two.npz")["world_size"] == 2
    alone = train.train("lenet5", epochs=2, resume=tmp_path / "two.npz", **SMALL_KW)
    assert alone["world_size"] == 1
    assert_same_training(alone, one_process)


def test_killed_rank_ends_every_rank(tmp_path, mpi):
    """SIGKILL to rank 1 mid-training: both ranks end within 30 s, the message names rank 1, and
    the checkpoint rank 0 wrote is whole."""
    checkpoint, errors = tmp_path / "k.npz", tmp_path / "stderr.txt"
    with open(errors, "w") as stderr:
        proc = subprocess.Popen([*CLI, "train", "lenet5", "--epochs", "1000", "--nproc", "2", "--checkpoint",
                                 str(checkpoint), *SMALL], stdout=subprocess.PIPE, stderr=stderr, text=True,
                                env=env())
    try:
        pids, deadline, lines = None, time.monotonic() + TIMEOUT, []
        while not (pids and any(line.startswith("epoch 1/") for line in lines)):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines) + errors.read_text()
            if select.select([proc.stdout], [], [], 1.0)[0]:
                lines.append(proc.stdout.readline())
                found = re.search(r"rank 0 pid (\d+) on \S+, rank 1 pid (\d+)", lines[-1])
                pids = pids or (found and [int(found[1]), int(found[2])])
        killed_at = time.monotonic()
        os.kill(pids[1], signal.SIGKILL)
        proc.communicate(timeout=30)
        assert time.monotonic() - killed_at < 30
    finally:
        proc.kill()
    err = errors.read_text()
    assert proc.returncode != 0
    assert f"rank 1 of 2 (pid {pids[1]} on" in err and "killed by signal 9 (SIGKILL)" in err, err
    assert not running(pids[0], within=10), f"rank 0 (pid {pids[0]}) outlived the job"
    assert load(checkpoint)["epochs_done"] >= 1


def running(pid, within):
    """Whether ``pid`` is still a live process (not gone, not a zombie) after up to ``within`` s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return False
        if state == "Z":
            return False
        time.sleep(0.1)
    return True


def test_raising_rank_ends_every_rank(tmp_path, mpi):
    """An exception on one rank, in a script (uncaught) and in convkern train (rank 0 cannot read
    the checkpoint to resume while rank 1 waits for it): every rank exits non-zero, promptly, naming
    the rank."""
    script = ("from convkern import distributed as d\n"
              "d.init()\n"
              "if d.rank() == 1:\n"
              "    raise RuntimeError('rank 1 fails on purpose')\n"
              "d.barrier()\n")
    start = time.monotonic()
    result = run([MPIEXEC, "-n", "2", sys.executable, "-c", script], timeout=60)
    assert time.monotonic() - start < 30
    assert result.returncode != 0
    assert "uncaught exception on rank 1 of 2" in result.stderr and "rank 1 fails on purpose" in result.stderr
    (tmp_path / "junk.npz").write_text("not a checkpoint")
    result = mpiexec(*CLI, "train", "lenet5", "--epochs", "3", "--resume", str(tmp_path / "junk.npz"), *SMALL)
    assert result.returncode != 0
    assert "convkern train: error on rank 0 of 2:" in result.stderr, result.stderr
    assert "not a convkern save file" in result.stderr, result.stderr


def test_world_size_must_divide_the_batch(mpi):
    result = mpiexec(*CLI, "train", "lenet5", "--epochs", "1", "--batch-size", "33", "--train-size", "64")
    assert result.returncode != 0
    assert "--batch-size 33 is the global batch and must be divisible by the world size 2" in result.stderr
