"""convkern train: a short LeNet-5 run on a subset of the embedded data learns (loss falls,
accuracy far above chance — not a timed test), checkpoints resume exactly, the CLI's --json
line, and clear errors."""
import json

import numpy as np
import pytest

from convkern import cli, data, train

SMALL = dict(train_size=512, test_size=256, batch_size=32, progress=False, log=None)


def test_lenet5_short_run_learns():
    result = train.train("lenet5", epochs=3, **SMALL)
    losses = [h["loss"] for h in result["history"]]
    assert losses[-1] < 0.6 * losses[0]
    assert result["test_accuracy"] > 0.6          # chance is 0.1
    assert set(train.RESULT_KEYS) <= set(result)


def test_resume_continues_exactly(tmp_path):
    straight = train.train("lenet5", epochs=2, checkpoint=tmp_path / "a.npz", **SMALL)
    train.train("lenet5", epochs=1, checkpoint=tmp_path / "b.npz", **SMALL)
    resumed = train.train("lenet5", epochs=2, resume=tmp_path / "b.npz", checkpoint=tmp_path / "b.npz", **SMALL)
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in straight["history"]]
    assert resumed["test_accuracy"] == straight["test_accuracy"]
    from convkern import load
    a, b = load(tmp_path / "a.npz"), load(tmp_path / "b.npz")
    for key, value in a["model"].items():
        np.testing.assert_array_equal(value, b["model"][key], err_msg=key)


def test_tf_mnist_cnn_with_dropout_resumes_exactly(tmp_path):
    kw = dict(SMALL, train_size=128, test_size=64)
    straight = train.train("tf_mnist_cnn", epochs=2, **kw)
    train.train("tf_mnist_cnn", epochs=1, checkpoint=tmp_path / "c.npz", **kw)
    resumed = train.train("tf_mnist_cnn", epochs=2, resume=tmp_path / "c.npz", **kw)
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in straight["history"]]


def test_cli_json_last_line(capsys):
    rc = cli.main(["train", "lenet5", "--epochs", "1", "--train-size", "256", "--test-size", "128", "--json"])
    assert rc == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    record = json.loads(last)
    assert list(record) == list(train.RESULT_KEYS)
    assert record["model"] == "lenet5" and record["dataset"] == "default" and record["epochs"] == 1
    assert 0 <= record["test_accuracy"] <= 1 and record["images_per_second"] > 0
    assert record["world_size"] == 1 and record["final_train_loss"] > 0


@pytest.mark.parametrize("kwargs, exc, message", [
    (dict(model="vgg11"), ValueError, "model must be one of"),
    (dict(model="cifar10_cnn"), ValueError, "cifar10_cnn has no embedded data set"),
    (dict(model="lenet5", epochs=0), ValueError, "epochs must be a positive int"),
    (dict(model="lenet5", optimizer="rmsprop"), ValueError, "optimizer must be 'sgd' or 'adam'"),
    (dict(model="lenet5", data="/nonexistent/dir"), (FileNotFoundError, ValueError), "/nonexistent/dir"),
])
def test_bad_arguments(kwargs, exc, message):
    with pytest.raises(exc, match=message):
        train.train(**kwargs, progress=False, log=None)


def test_resume_refuses_other_model_or_settings(tmp_path):
    train.train("lenet5", epochs=1, checkpoint=tmp_path / "l.npz", **SMALL)
    with pytest.raises(ValueError, match="is for model 'lenet5', not 'tf_mnist_cnn'"):
        train.train("tf_mnist_cnn", resume=tmp_path / "l.npz", **SMALL)
    with pytest.raises(ValueError, match="batch_size"):
        train.train("lenet5", epochs=2, resume=tmp_path / "l.npz", **dict(SMALL, batch_size=64))


def test_cli_reports_errors_without_traceback(capsys):
    rc = cli.main(["train", "cifar10_cnn"])
    assert rc == 2
    assert "has no embedded data set" in capsys.readouterr().err


def test_embedded_default_is_used(monkeypatch):
    seen = []
    real = data.load_dataset

    def spy(name, split, **kw):
        seen.append(name)
        return real(name, split, **kw)
    monkeypatch.setattr(data, "load_dataset", spy)
    train.train("lenet5", epochs=1, **dict(SMALL, train_size=64, test_size=64))
    assert seen == ["default", "default"]
