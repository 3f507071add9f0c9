"""The hardening contract for files, optimizers and the command line (issue 15), one table per class.

- Command-line arguments: every bad value, output path or input file is refused while the command
  line is parsed (exit status 2, a message naming the argument, no traceback), before any work:
  the training step, the layer benchmark and the GEMM-peak measurement fail the test if reached,
  and no file appears.
- Bench suite files: a row that is not an object, a size that is null, fractional or negative, a
  bad stride/pad pair, an unknown key, a layer too big for memory: refused before any timing.
- Damaged save files: ``ck.load`` raises ValueError naming the file and what is damaged, and never
  allocates what a damaged header declares; ``train --resume`` of one exits 2 without training.
- Damaged checkpoints and optimizer / scheduler states: ValueError naming the entry; nothing changes.
- Failures (OSError, MemoryError, RuntimeError) exit 1 and Ctrl-C 130, in one line; subpackages
  are reachable after ``import convkern``; ``train --help`` shows what a bare run uses.
"""
import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import convkern as ck
from convkern import bench, cli, nn, optim, train

TINY = ["--train-size", "64", "--test-size", "32", "--batch-size", "32"]


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if training or benchmarking starts."""
    def reached(*args, **kwargs):
        pytest.fail("work started although the arguments were bad")
    monkeypatch.setattr(train, "_eager_step", reached)
    monkeypatch.setattr(bench, "_bench_layers", reached)
    monkeypatch.setattr(bench, "measure_peak_gflops", reached)
    monkeypatch.setattr("convkern.bench.model.profile_model", reached)


def run_cli(argv, capsys):
    """(exit status, stderr) of ``convkern argv`` run in this process; it must print no traceback."""
    status = cli.main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, out + err
    return status, err


# ---- command-line arguments: (id, argv with {tmp} for a scratch directory, regex of the message)
ARGS = [
    ("train-lr-nan", ["train", "lenet5", "--lr", "nan"], r"--lr must be a finite number > 0, got 'nan'"),
    ("train-lr-inf", ["train", "lenet5", "--lr", "inf"], r"--lr must be a finite number > 0, got 'inf'"),
    ("train-lr-negative", ["train", "lenet5", "--lr", "-1"], r"--lr must be a finite number > 0, got '-1'"),
    ("train-lr-text", ["train", "lenet5", "--lr", "fast"], r"--lr must be a finite number > 0, got 'fast'"),
    ("train-lr-decay-nan", ["train", "lenet5", "--lr-decay", "nan"], r"--lr-decay must be a finite number > 0"),
    ("train-lr-decay-negative", ["train", "lenet5", "--lr-decay", "-1"], r"--lr-decay must be a finite number > 0"),
    ("train-lr-decay-zero", ["train", "lenet5", "--lr-decay", "0"], r"--lr-decay must be a finite number > 0"),
    ("train-epochs-zero", ["train", "lenet5", "--epochs", "0"], r"--epochs must be a positive int, got '0'"),
    ("train-epochs-fraction", ["train", "lenet5", "--epochs", "2.5"], r"--epochs must be a positive int, got '2.5'"),
    ("train-batch-zero", ["train", "lenet5", "--batch-size", "0"], r"--batch-size must be a positive int"),
    ("train-size-negative", ["train", "lenet5", "--train-size", "-3"],
     r"--train-size must be a positive int, got '-3'"),
    ("train-size-zero", ["train", "lenet5", "--train-size", "0"], r"--train-size must be a positive int, got '0'"),
    ("test-size-negative", ["train", "lenet5", "--test-size", "-1"], r"--test-size must be a positive int, got '-1'"),
    ("train-seed-negative", ["train", "lenet5", "--seed", "-1"], r"--seed must be a non-negative int, got '-1'"),
    ("train-nproc-zero", ["train", "lenet5", "--nproc", "0"], r"--nproc must be a positive int, got '0'"),
    ("train-model", ["train", "vgg99"], r"argument MODEL: invalid choice: 'vgg99'"),
    ("train-checkpoint-dir", ["train", "lenet5", "--checkpoint", "{tmp}"],
     r"--checkpoint: cannot write '.*': it is a directory; name a file in it"),
    ("train-checkpoint-under-file", ["train", "lenet5", "--checkpoint", "{tmp}/a-file/ckpt.npz"],
     r"--checkpoint: cannot write '.*a-file/ckpt.npz': '.*a-file' is not a directory"),
    ("train-checkpoint-no-dir", ["train", "lenet5", "--checkpoint", "{tmp}/no/ckpt.npz"],
     r"--checkpoint: cannot write '.*no/ckpt.npz': the directory '.*no' does not exist"),
    ("train-resume-missing", ["train", "lenet5", "--resume", "{tmp}/none.npz"],
     r"--resume: cannot read '.*none.npz': no such file"),
    ("train-resume-dir", ["train", "lenet5", "--resume", "{tmp}"], r"--resume: cannot read '.*': it is a directory"),
    ("bench-json-dir", ["bench", "--quick", "--json", "{tmp}"], r"--json: cannot write '.*': it is a directory"),
    ("bench-csv-under-file", ["bench", "--quick", "--csv", "{tmp}/a-file/r.csv"],
     r"--csv: cannot write '.*r.csv': '.*a-file' is not a directory"),
    ("bench-plot-dir", ["bench", "--quick", "--plot", "{tmp}"], r"--plot (needs matplotlib|: cannot write)"),
    ("bench-model-batch-zero", ["bench", "--model", "lenet5", "--batch-size", "0"],
     r"--batch-size must be a positive int, got '0'"),
    ("bench-input-size", ["bench", "--model", "lenet5", "--input-size", "0x3"],
     r"--input-size must be H or HxW with positive sizes, got '0x3'"),
    ("bench-model-json-dir", ["bench", "--model", "lenet5", "--json", "{tmp}"], r"--json: cannot write"),
    ("summary-batch-zero", ["summary", "lenet5", "--batch-size", "0"], r"--batch-size must be a positive int"),
    ("summary-batch-too-big", ["summary", "lenet5", "--batch-size", str(10**12)],
     r"--batch-size 1000000000000 with lenet5 needs about .* for its forward pass, more than the .* of host memory "
     r"available; a training step would need about"),
]


@pytest.mark.parametrize("argv, message", [row[1:] for row in ARGS], ids=[row[0] for row in ARGS])
def test_bad_arguments_are_refused_before_any_work(argv, message, tmp_path, capsys, no_work):
    (tmp_path / "a-file").write_text("")
    before = sorted(os.listdir(tmp_path))
    status, err = run_cli([a.replace("{tmp}", str(tmp_path)) for a in argv], capsys)
    assert status == 2
    assert err.strip().splitlines()[-1].startswith(f"convkern {argv[0]}: error: "), err
    assert re.search(message, err), err
    assert sorted(os.listdir(tmp_path)) == before


def test_under_mpi_rank_0_alone_checks_the_checkpoint_paths(tmp_path, monkeypatch, no_work):
    """Only rank 0's host writes checkpoints and reads --resume (docs/distributed.md): under an MPI
    launcher the parser leaves both paths to ``train``, which checks them on rank 0 before any work."""
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    monkeypatch.setattr("convkern.distributed.launched_by_mpi", lambda: True)
    args = parser.parse_args(["lenet5", "--checkpoint", str(tmp_path), "--resume", str(tmp_path / "none.npz")])
    assert args.checkpoint == str(tmp_path)
    with pytest.raises(ValueError, match=r"train: checkpoint: cannot write '.*': it is a directory"):
        train.train("lenet5", checkpoint=tmp_path, progress=False, log=None)
    with pytest.raises(ValueError, match=r"train: resume: cannot read '.*none.npz': no such file"):
        train.train("lenet5", resume=tmp_path / "none.npz", progress=False, log=None)


def test_every_train_and_bench_option_with_a_value_is_checked():
    """Guard: a new option that takes a value must have a row above or be free text by design."""
    free_text = {"--data", "--suite", "--layers", "--algorithms", "--passes", "--model", "--optimizer", "--device",
                 "--dtype"}  # names or lists checked against what exists before any work (rows in test_bench.py)
    tested = {a for _, argv, _ in ARGS for a in argv if a.startswith("--")}
    for add in (train.add_arguments, bench.add_arguments):
        parser = argparse.ArgumentParser()
        add(parser)
        for action in parser._actions:
            flag = action.option_strings[-1] if action.option_strings else None
            if flag is None or action.nargs == 0 or flag in free_text:
                continue
            assert flag in tested, f"{flag} has no row in ARGS"


# ---- bench suite files: (id, JSON content, regex of the message)
SUITES = [
    ("null-size", [{"N": None, "C": 1, "H": 4, "W": 4, "K": 1, "R": 1, "S": 1}], r"layer 0 \(layer0\) .*: N must be a "
     r"positive int, got None"),
    ("fraction", [{"N": 2.5, "C": 1, "H": 4, "W": 4, "K": 1, "R": 1, "S": 1}], r"N must be a positive int, got 2.5"),
    ("negative", [{"N": 1, "C": -1, "H": 4, "W": 4, "K": 1, "R": 1, "S": 1}], r"C must be a positive int, got -1"),
    ("bool", [{"N": True, "C": 1, "H": 4, "W": 4, "K": 1, "R": 1, "S": 1}], r"N must be a positive int, got True"),
    ("row-not-object", [5], r"layer 0 of .* must be an object with keys \['N', 'C', 'H', 'W', 'K', 'R', 'S'\], got "
     r"int 5"),
    ("row-list", [[1, 2, 3]], r"layer 0 of .* must be an object"),
    ("stride-triple", [{"N": 1, "C": 1, "H": 4, "W": 4, "K": 1, "R": 1, "S": 1, "stride": [1, 2, 3]}],
     r"stride must be an int or an \[h, w\] pair, got \[1, 2, 3\]"),
    ("pad-negative", [{"N": 1, "C": 1, "H": 4, "W": 4, "K": 1, "R": 1, "S": 1, "pad": [0, -1]}],
     r"pad must be a non-negative int, got -1"),
    ("dilation-zero", [{"N": 1, "C": 1, "H": 4, "W": 4, "K": 1, "R": 1, "S": 1, "dilation": 0}],
     r"dilation must be a positive int, got 0"),
    ("unknown-key", [{"N": 1, "C": 1, "H": 4, "W": 4, "K": 1, "R": 1, "S": 1, "stide": 2}],
     r"unknown keys \['stide'\]"),
    ("empty-name", [{"name": "", "N": 1, "C": 1, "H": 4, "W": 4, "K": 1, "R": 1, "S": 1}],
     r"name must be a non-empty string"),
    ("groups", [{"N": 1, "C": 3, "H": 4, "W": 4, "K": 4, "R": 1, "S": 1, "groups": 2}], r"groups"),
    ("second-layer-bad", {"layers": [{"N": 1, "C": 1, "H": 4, "W": 4, "K": 1, "R": 1, "S": 1},
                                     {"N": 1, "C": 1, "H": 2, "W": 2, "K": 1, "R": 5, "S": 5}]}, r"bench"),
    ("too-big", [{"name": "huge", "N": 100000, "C": 512, "H": 512, "W": 512, "K": 512, "R": 3, "S": 3}],
     r"--suite: layer 'huge' \(100000x512x512x512 -> 512 3x3\) needs about .* TiB for its operands, output and "
     r"float64 reference, more than the .* of host memory available"),
]


@pytest.mark.parametrize("content, message", [row[1:] for row in SUITES], ids=[row[0] for row in SUITES])
def test_bad_suite_files_are_refused_before_any_timing(content, message, tmp_path, capsys, no_work):
    path = tmp_path / "suite.json"
    path.write_text(json.dumps(content))
    status, err = run_cli(["bench", "--suite", str(path), "--json", str(tmp_path / "out.json")], capsys)
    assert status == 2
    assert "convkern bench: error: " in err and re.search(message, err), err
    assert not (tmp_path / "out.json").exists()


# ---- damaged save files: (id, archive members {name: bytes or array}, regex of the message)
def npy(array=None, header=None, data=b""):
    """The bytes of a .npy member: ``array`` written by NumPy, or a v1.0 ``header`` dict and raw ``data``."""
    import io
    f = io.BytesIO()
    if array is not None:
        np.lib.format.write_array(f, np.asarray(array), allow_pickle=False)
    else:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(data)
    return f.getvalue()


def index(root, fmt=1):
    return npy(np.array(json.dumps({"format": fmt, "root": root})))


GOOD = {"dict": {"w": {"array": "w"}}}
HUGE = {"descr": "<f4", "fortran_order": False, "shape": (10**7, 10**7)}
IDX = "__convkern_index__.npy"
DAMAGED = [
    ("index-not-json", {IDX: npy(np.array("{not json"))}, r"its index is not valid JSON"),
    ("index-a-list", {IDX: npy(np.array("[1, 2]"))}, r"its index is not an object with 'format'"),
    ("index-no-root", {IDX: npy(np.array('{"format": 1}'))}, r"its index is not an object with 'format'"),
    ("index-not-a-string", {IDX: npy(np.zeros(3))}, r"its index is a float64 array of shape \(3,\)"),
    ("index-header-garbage", {IDX: b"\x93NUMPY\x01\x00garbage"},
     r"member '__convkern_index__.npy': EOF: reading array header"),
    ("node-two-kinds", {IDX: index({"dict": {}, "list": []})},
     r"the index entry at the top level is .*, not one of \{kind: payload\}"),
    ("node-unknown-kind", {IDX: index({"pickle": "x"})}, r"the index entry at the top level is .*, not one of"),
    ("node-not-a-dict", {IDX: index({"dict": {"a": [1]}})}, r"the index entry at the top level\['a'\]"),
    ("dict-payload-list", {IDX: index({"dict": [1]})}, r"the 'dict' entry at the top level must hold an object, got \[1\]"),
    ("array-payload-number", {IDX: index({"array": 5})}, r"the 'array' entry at the top level must hold a member name, got 5"),
    ("value-payload-list", {IDX: index({"value": [1, 2]})}, r"the 'value' entry .* must hold a number or a string, got \[1, 2\]"),
    ("array-missing", {IDX: index(GOOD)}, r"array 'w' named in its index is missing"),
    ("absurd-shape", {IDX: index(GOOD), "w.npy": npy(header=HUGE, data=b"\0" * 16)},
     r"member 'w.npy' declares shape \(10000000, 10000000\) of float32 \(400000000000000 bytes\) but holds 16 bytes"),
    ("negative-shape", {IDX: index(GOOD), "w.npy": npy(header=dict(HUGE, shape=(-2, 2)), data=b"")},
     r"member 'w.npy' declares a negative shape"),
    ("truncated-data", {IDX: index(GOOD), "w.npy": npy(np.ones(100, np.float32))[:-40]},
     r"member 'w.npy' declares shape \(100,\) of float32 \(400 bytes\) but holds 360 bytes"),
    ("object-dtype", {IDX: index(GOOD), "w.npy": npy(header=dict(HUGE, descr="|O", shape=(1,)), data=b"\0" * 8)},
     r"member 'w.npy' declares dtype object, which save\(\) never writes"),
    ("format", {IDX: index(GOOD, fmt=7)}, r"in save-file format 7; this convkern reads format 1"),
]


def write_archive(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


@pytest.mark.parametrize("members, message", [row[1:] for row in DAMAGED], ids=[row[0] for row in DAMAGED])
def test_damaged_files_raise_a_clear_error(members, message, tmp_path):
    path = write_archive(tmp_path / "bad.npz", members)
    with pytest.raises(ValueError, match=r"load: '.*bad.npz' (is a damaged file: |is )" + message):
        ck.load(path)


def test_a_directory_and_a_huge_member_of_a_real_save(tmp_path):
    with pytest.raises(ValueError, match=r"is a directory, not a convkern save file"):
        ck.load(tmp_path)
    ck.save({"w": np.ones(4, np.float32), "b": [np.zeros(2), 3, None]}, tmp_path / "ok.npz")
    got = ck.load(tmp_path / "ok.npz")
    assert got["w"].flags.writeable and got["b"][1:] == [3, None]
    # the same file with w's header rewritten to claim 10**14 elements: refused, nothing allocated
    with zipfile.ZipFile(tmp_path / "ok.npz") as z:
        members = {n: z.read(n) for n in z.namelist()}
    members["w.npy"] = npy(header=HUGE, data=members["w.npy"][-16:])
    with pytest.raises(ValueError, match=r"damaged file: member 'w.npy' declares shape"):
        ck.load(write_archive(tmp_path / "huge.npz", members))


# ---- damaged checkpoints: (id, what to do to a real one, regex of the message)
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "lenet5.npz"
    train.train("lenet5", epochs=1, checkpoint=path, progress=False, log=None, train_size=64, test_size=32,
                batch_size=32)
    return path


def _drop(key):
    return lambda s: s.pop(key)


def _set(*path_and_value):
    *path, value = path_and_value

    def mutate(state):
        node = state
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return mutate


CHECKPOINTS = [
    ("no-random-state", _drop("random_state"), r"it has no 'random_state' entry"),
    ("no-optimizer", _drop("optimizer"), r"it has no 'optimizer' entry"),
    ("epochs-done-text", _set("epochs_done", "one"), r"'epochs_done' is a str"),
    ("random-state-not-json", _set("random_state", "{oops"), r".*Expecting"),
    ("random-state-other-generator", _set("random_state", json.dumps({"bit_generator": "MT19937"})),
     r".*PCG64"),
    ("history-not-a-list", _set("history", "{}"), r"its history must be a JSON list"),
    ("optimizer-group-keys", lambda s: s["optimizer"].__setitem__("param_groups", {"7": s["optimizer"]["param_groups"]
                                                                                    ["0"]}),
     r"Adam.load_state_dict: the saved parameter groups are \['7'\], this optimizer has 1: \['0'\]"),
    ("optimizer-group-without-params", lambda s: s["optimizer"]["param_groups"]["0"].pop("params"),
     r"Adam.load_state_dict: parameter group 0 must be a dict with a 'params' entry"),
    ("optimizer-group-lr-nan", _set("optimizer", "param_groups", "0", "lr", float("nan")),
     r"Adam.load_state_dict: parameter group 0: Adam: lr must be a number, got nan"),
    ("optimizer-state-not-a-dict", _set("optimizer", "state", "0", 3),
     r"Adam.load_state_dict: the state of parameter 0 must be a dict, got int"),
    ("optimizer-state-wrong-size", _set("optimizer", "state", "0", "exp_avg", np.zeros(3, np.float32)),
     r"Adam.load_state_dict: state 'exp_avg' of parameter 0 has 3 elements, the parameter 150"),
    ("scheduler-without-base-lrs", lambda s: s["scheduler"].pop("base_lrs"),
     r"ExponentialLR.load_state_dict: expected a dict with 'last_epoch' and 'base_lrs'"),
    ("model-wrong-shape", lambda s: s["model"].__setitem__(next(iter(s["model"])), np.zeros(2, np.float32)),
     r"load_state_dict into Sequential: c1.weight: expected shape \(6, 1, 5, 5\), got \(2,\)"),
]


@pytest.mark.parametrize("mutate, message", [row[1:] for row in CHECKPOINTS], ids=[row[0] for row in CHECKPOINTS])
def test_resume_of_a_damaged_checkpoint_exits_2_without_training(mutate, message, checkpoint, tmp_path, capsys,
                                                                 no_work):
    state = ck.load(checkpoint)
    mutate(state)
    ck.save(state, tmp_path / "bad.npz")
    status, err = run_cli(["train", "lenet5", "--epochs", "2", "--resume", str(tmp_path / "bad.npz"), *TINY], capsys)
    assert status == 2
    assert re.search(r"convkern train: error: train: checkpoint .*bad.npz is damaged: " + message, err), err


def test_resume_of_a_damaged_file_exits_2_without_training(checkpoint, tmp_path, capsys, no_work):
    with zipfile.ZipFile(checkpoint) as z:
        members = {n: z.read(n) for n in z.namelist()}
    name = next(n for n in members if n.startswith("model/"))
    members[name] = npy(header=HUGE, data=b"")
    write_archive(tmp_path / "bad.npz", members)
    status, err = run_cli(["train", "lenet5", "--epochs", "2", "--resume", str(tmp_path / "bad.npz"), *TINY], capsys)
    assert status == 2 and f"is a damaged file: member '{name}' declares shape" in err, err


# ---- optimizer and scheduler states: (id, what to do to a real state_dict, regex of the message)
def _sgd():
    p = nn.Parameter(np.ones(4, np.float32))
    opt = optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = ck.tensor(np.ones(4, np.float32))
    opt.step()
    return opt


OPTIMIZER_STATES = [
    ("not-a-dict", lambda s: [1], r"expected a dict with 'state' and 'param_groups' dicts"),
    ("groups-a-list", lambda s: dict(s, param_groups=[s["param_groups"]["0"]]), r"expected a dict with"),
    ("state-a-list", lambda s: dict(s, state=[]), r"expected a dict with"),
    ("odd-group-keys", lambda s: dict(s, param_groups={"a": s["param_groups"]["0"]}),
     r"the saved parameter groups are \['a'\], this optimizer has 1: \['0'\]"),
    ("extra-group", lambda s: dict(s, param_groups=dict(s["param_groups"], **{"1": s["param_groups"]["0"]})),
     r"the saved parameter groups are \['0', '1'\]"),
    ("group-without-params", lambda s: dict(s, param_groups={"0": {"lr": 0.1}}),
     r"parameter group 0 must be a dict with a 'params' entry"),
    ("group-not-a-dict", lambda s: dict(s, param_groups={"0": 0.1}), r"parameter group 0 must be a dict"),
    ("group-unknown-option", lambda s: dict(s, param_groups={"0": dict(s["param_groups"]["0"], betas=(0.9, 0.9))}),
     r"parameter group 0 has unknown option\(s\) \['betas'\]"),
    ("group-negative-lr", lambda s: dict(s, param_groups={"0": dict(s["param_groups"]["0"], lr=-1.0)}),
     r"parameter group 0: SGD: lr must be >= 0, got -1.0"),
    ("group-params-count", lambda s: dict(s, param_groups={"0": dict(s["param_groups"]["0"], params=[0, 1])}),
     r"parameter group 0 has 1 parameters, the saved one 2"),
    ("state-not-a-dict", lambda s: dict(s, state={"0": np.zeros(4)}), r"the state of parameter 0 must be a dict, got "
     r"ndarray"),
    ("state-key", lambda s: dict(s, state={"x": {}}), r"state for parameter 'x', but the optimizer has 1 parameters"),
    ("state-text", lambda s: dict(s, state={"0": {"momentum_buffer": "zeros"}}),
     r"state 'momentum_buffer' of parameter 0 must be a number or an array, got 'zeros'"),
    ("state-strings", lambda s: dict(s, state={"0": {"momentum_buffer": np.array(["a"] * 4)}}),
     r"state 'momentum_buffer' of parameter 0 must be a numeric array"),
    ("state-size", lambda s: dict(s, state={"0": {"momentum_buffer": np.zeros(5)}}),
     r"state 'momentum_buffer' of parameter 0 has 5 elements, the parameter 4"),
]


@pytest.mark.parametrize("mutate, message", [row[1:] for row in OPTIMIZER_STATES],
                         ids=[row[0] for row in OPTIMIZER_STATES])
def test_bad_optimizer_states_are_refused_and_change_nothing(mutate, message):
    opt = _sgd()
    before = opt.state_dict()
    with pytest.raises(ValueError, match=r"SGD.load_state_dict: " + message):
        opt.load_state_dict(mutate(opt.state_dict()))
    after = opt.state_dict()
    assert after["param_groups"]["0"]["lr"] == before["param_groups"]["0"]["lr"]
    np.testing.assert_array_equal(after["state"]["0"]["momentum_buffer"], before["state"]["0"]["momentum_buffer"])


SCHEDULER_STATES = [
    ("not-a-dict", [0], r"expected a dict with 'last_epoch' and 'base_lrs'"),
    ("negative-epoch", {"last_epoch": -3, "base_lrs": [0.1]}, r"last_epoch must be a non-negative int, got -3"),
    ("nan-lr", {"last_epoch": 1, "base_lrs": [float("nan")]}, r"base_lrs must be a list of finite numbers"),
    ("lr-text", {"last_epoch": 1, "base_lrs": "0.1"}, r"base_lrs must be a list of finite numbers"),
    ("groups", {"last_epoch": 1, "base_lrs": [0.1, 0.2]}, r"the saved state has 2 parameter groups"),
]


@pytest.mark.parametrize("state, message", [row[1:] for row in SCHEDULER_STATES],
                         ids=[row[0] for row in SCHEDULER_STATES])
def test_bad_scheduler_states_are_refused(state, message):
    scheduler = optim.lr_scheduler.ExponentialLR(_sgd(), 0.5)
    with pytest.raises(ValueError, match=r"ExponentialLR.load_state_dict: " + message):
        scheduler.load_state_dict(state)
    assert scheduler.last_epoch == 0


@pytest.mark.parametrize("gamma", [float("nan"), -1.0, float("inf"), "0.5"])
def test_schedulers_refuse_a_bad_gamma(gamma):
    with pytest.raises(ValueError, match="gamma must be a finite number >= 0"):
        optim.lr_scheduler.ExponentialLR(_sgd(), gamma)
    with pytest.raises(ValueError, match="gamma must be a finite number >= 0"):
        optim.lr_scheduler.StepLR(_sgd(), 1, gamma)


# ---- read-only arrays: the optimizers' in-place updates need writable parameters
@pytest.mark.parametrize("make", [lambda a: nn.Parameter(a), lambda a: nn.Parameter(ck.Tensor(a)),
                                  lambda a: ck.tensor(a, requires_grad=True)], ids=["array", "Tensor", "tensor"])
@pytest.mark.parametrize("opt_cls", [optim.SGD, optim.Adam])
def test_parameters_from_read_only_arrays_train(make, opt_cls):
    source = np.ones(4, np.float32)
    source.flags.writeable = False
    p = make(source)
    opt = opt_cls([p], lr=0.5)
    p.grad = ck.tensor(np.ones(4, np.float32))
    opt.step()
    assert (p.numpy() < 1).all() and (source == 1).all()


def test_a_read_only_parameter_array_is_a_clear_step_error():
    p = nn.Parameter(np.ones(4, np.float32))
    opt = optim.SGD([p], lr=0.5)
    p.data = np.ones(4, np.float32)
    p.data.flags.writeable = False
    p.grad = ck.tensor(np.ones(4, np.float32))
    with pytest.raises(ValueError, match=r"SGD.step: a parameter of shape \(4,\) holds a read-only NumPy array"):
        opt.step()


# ---- failures: (exception the command raises, exit status, regex of the one line printed)
FAILURES = [
    (ValueError("bad value"), 2, r"convkern info: error: bad value"),
    (TypeError("bad type"), 2, r"convkern info: error: bad type"),
    (FileNotFoundError("no such file 'x'"), 2, r"convkern info: error: no such file 'x'"),
    (PermissionError(13, "Permission denied"), 1, r"convkern info: error: \[Errno 13\] Permission denied"),
    (OSError(28, "No space left on device"), 1, r"convkern info: error: \[Errno 28\] No space left on device"),
    (MemoryError("Unable to allocate 54.8 TiB"), 1,
     r"convkern info: error: out of memory: Unable to allocate 54.8 TiB"),
    (MemoryError(), 1, r"convkern info: error: out of memory: MemoryError"),
    (RuntimeError("kernel failed"), 1, r"convkern info: error: kernel failed"),
    (ck.GradcheckError("mismatch"), 1, r"convkern info: error: mismatch"),
    (KeyboardInterrupt(), 130, r"convkern info: interrupted"),
]


@pytest.mark.parametrize("error, status, message", FAILURES, ids=[type(row[0]).__name__ + str(row[1])
                                                                  for row in FAILURES])
def test_failures_are_one_line_with_their_exit_status(error, status, message, monkeypatch, capsys):
    def command(args):
        raise error
    monkeypatch.setattr(cli, "_info", command)
    got, err = run_cli(["info"], capsys)
    assert got == status
    assert re.fullmatch(message, err.strip()), err


def test_a_bug_keeps_its_traceback(monkeypatch):
    def command(args):
        raise KeyError("a bug")
    monkeypatch.setattr(cli, "_info", command)
    with pytest.raises(KeyError):
        cli.main(["info"])


def test_usage_and_help_return_their_status(capsys):
    assert cli.main([]) == 2
    assert "the following arguments are required" in capsys.readouterr().err
    assert cli.main(["train", "--help"]) == 0


# ---- the package and the help text
def test_subpackages_are_reachable_without_importing_torch():
    code = ("import sys\n"
            "import convkern as ck\n"
            "for name in ('models', 'data', 'train', 'bench', 'cli', 'suites', 'reference', 'optim', 'nn', "
            "'functional', 'kernels'):\n"
            "    assert getattr(ck, name).__name__.startswith('convkern'), name\n"
            "assert 'models' in dir(ck)\n"
            "assert 'torch' not in sys.modules, 'a subpackage imported torch'\n"
            "try:\n"
            "    ck.no_such_thing\n"
            "except AttributeError as e:\n"
            "    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "module 'convkern' has no attribute 'no_such_thing'" in out.stdout


def test_train_help_shows_what_a_bare_run_uses(capsys):
    assert cli.main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--device {cpu,cuda}   default: cpu" in out
    rows = {line.split()[0]: line.split() for line in out.split("defaults per model")[1].splitlines()[2:] if line}
    for name, cfg in train.DEFAULTS.items():
        assert rows[name][-3:] == [cfg["optimizer"], str(cfg["lr"]), str(cfg["lr_decay"])], name
        assert rows[name][-5:-3] == [str(cfg["epochs"]), str(cfg["batch_size"])], name


def test_docs_cli_md_shows_the_defaults_table():
    text = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    for line in train._defaults_table().splitlines()[1:]:
        assert line in text, f"docs/cli.md lacks {line!r}; copy it from `convkern train --help`"
