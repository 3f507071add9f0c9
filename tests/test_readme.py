"""The README's Python example runs as written."""
import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README.md has no python example"
    scope = {}
    exec(compile(blocks[0], str(README), "exec"), scope)
    assert scope["y"].shape == (8, 16, 16, 16)
    assert scope["x"].grad.shape == (8, 3, 32, 32) and np.isfinite(scope["w"].grad.numpy()).all()
    assert "implicit_gemm" in capsys.readouterr().out
