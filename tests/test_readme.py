"""The README's Python examples run as written."""
import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _blocks():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 2, "README.md should have the conv2d and the training example"
    return blocks


def test_readme_conv2d_example_runs(capsys):
    scope = {}
    exec(compile(_blocks()[0], str(README), "exec"), scope)
    assert scope["y"].shape == (8, 16, 16, 16)
    assert scope["x"].grad.shape == (8, 3, 32, 32) and np.isfinite(scope["w"].grad.numpy()).all()
    assert "implicit_gemm" in capsys.readouterr().out


def test_readme_training_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(_blocks()[1], str(README), "exec"), scope)
    assert scope["accuracy"] > 0.7                        # chance is 0.1
    assert "test accuracy" in capsys.readouterr().out
    import convkern as ck
    saved = ck.load(tmp_path / "small_cnn.npz")
    assert set(saved) == {name for name, _ in scope["model"].named_parameters()}
