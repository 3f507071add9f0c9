"""convkern bench --model: the whole-model profile on a quick model, its PyTorch mirror in a
separate worker process, the JSON output and bad arguments."""
import json

import pytest

from convkern import cli
from convkern.bench import model as M


@pytest.fixture(autouse=True)
def _heuristic(monkeypatch):
    """The untimed heuristic: autotuning every layer would dominate these tests (it has its own)."""
    monkeypatch.setenv("CONVKERN_AUTOTUNE", "0")


def test_profile_covers_every_layer_and_adds_up():
    p = M.profile_model("lenet5", 4, steps=2)
    names = [r["layer"] for r in p["layers"]]
    assert names[:4] == ["c1", "act1", "s2", "c3"] and names[-1] == "loss"
    assert {"c1", "c3", "f5", "f6", "out"} <= set(names)
    assert sum(r["share"] for r in p["layers"]) == pytest.approx(1.0)
    conv = next(r for r in p["layers"] if r["layer"] == "c3")
    assert conv["kind"] == "Conv2d" and conv["output_shape"] == [4, 16, 10, 10]
    assert conv["fwd_ms"] > 0 and conv["bwd_ms"] > 0 and conv["fwd_gflops"] > 0 and conv["bwd_gflops"] > 0
    assert p["train_images_per_s"] > 0 and p["inference_images_per_s"] > 0 and p["peer_timing"] is None
    text = M.format_profile(p)
    assert "c3" in text and "images/s" in text and "torch fwd ms" not in text


def test_residual_blocks_get_their_own_ops_row():
    p = M.profile_model("resnet18", 2, steps=1, input_size=(32, 32))
    assert p["input_shape"] == [3, 32, 32]
    own = [r for r in p["layers"] if r["layer"].endswith("(own ops)")]
    assert own and all(r["kind"] == "BasicBlock" and r["bwd_ms"] > 0 for r in own)


def test_pytorch_mirror_in_its_own_process_matches_layer_for_layer():
    pytest.importorskip("torch")
    p = M.profile_model("lenet5", 4, peers=True, steps=2)
    assert p["peer"].startswith("PyTorch") and p["peer_timing"].startswith("PyTorch mirror in a separate worker")
    assert all("peer_fwd_ms" in r for r in p["layers"])
    assert p["peer_train_images_per_s"] > 0 and p["train_ratio_vs_peer"] > 0
    assert "torch fwd ms" in M.format_profile(p)


def test_mirror_computes_what_the_convkern_model_computes():
    torch = pytest.importorskip("torch")
    import numpy as np

    from convkern import models
    from convkern.random import manual_seed
    for name in ("lenet5", "cifar10_cnn", "resnet18"):
        manual_seed(0)
        factory, shape = models.REGISTRY[name]
        ck_model = factory(dtype=np.float64)
        ck_model.eval()
        mirror = M._torch_mirror(ck_model, torch).double().eval()
        x = np.random.default_rng(0).standard_normal((2,) + shape)
        want = ck_model(x).numpy()
        got = mirror(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9, err_msg=name)


def test_cli_model_writes_json(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert cli.main(["bench", "--model", "lenet5", "--batch-size", "2", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["model"] == "lenet5" and data["batch_size"] == 2 and data["layers"]
    assert "training step" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--model", "nope"], "--model: unknown model 'nope'"),
    (["--model", "lenet5", "--batch-size", "0"], "--batch-size must be a positive int"),
    (["--model", "lenet5", "--layers", "x"], "--layers does not apply to --model"),
    (["--batch-size", "4"], "--batch-size and --input-size apply to --model only"),
    (["--model", "lenet5", "--input-size", "3x"], "--input-size must be H or HxW"),
    (["--model", "lenet5", "--json", "/no/such/dir/p.json"], "--json: cannot write"),
])
def test_bad_model_arguments(argv, message, capsys):
    assert cli.main(["bench"] + argv) != 0
    assert message in capsys.readouterr().err
