"""`fxsurgeon plan` / `fxsurgeon prune`, checkpoints and pruned models that load weights-only."""
import sys

import pytest
import torch

import fxsurgeon as fxs
from fxsurgeon.cli import main
from fxsurgeon.zoo import digits_cnn, resnet164_cifar
from helpers.surgery import kill, randomise_norms
from helpers.training import saved_surgery


def _checkpoint(tmp_path):
    model = resnet164_cifar()
    randomise_norms(model)
    kill(fxs.analyze(model, torch.randn(1, 3, 32, 32)), 0.3)
    path = tmp_path / "model.pt"
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, path)
    return model.eval(), path


def test_prune_command_saves_a_model_that_loads_weights_only(tmp_path, capsys):
    model, ckpt = _checkpoint(tmp_path)
    out = tmp_path / "sub" / "pruned.pt"
    assert main(["prune", "zoo:resnet164_cifar", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    out_text = capsys.readouterr().out
    assert "1,704,154" in out_text and "828,225" in out_text
    torch.load(out, weights_only=True)                 # data only: no pickled code
    net = fxs.load(out)
    x = torch.randn(2, 3, 32, 32)
    y = model(x)
    assert (y - net(x)).abs().max() <= 1e-5 * y.abs().max()
    assert sum(p.numel() for p in net.parameters()) == 828_225


def test_plan_command_prints_the_plan(tmp_path, capsys):
    _, ckpt = _checkpoint(tmp_path)
    assert main(["plan", "zoo:resnet164_cifar", "--checkpoint", str(ckpt), "--scheme", "cr",
                 "--metric", "flops"]) == 0
    out = capsys.readouterr().out
    assert "scheme cr, metric flops" in out and "alpha = 2.0" in out


def test_bad_checkpoints_are_clear_errors(tmp_path, capsys):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a torch file")
    assert main(["plan", "zoo:vgg19_cifar", "--checkpoint", str(corrupt)]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err
    other = tmp_path / "other.pt"
    torch.save(resnet164_cifar().state_dict(), other)
    assert main(["plan", "zoo:vgg19_cifar", "--checkpoint", str(other)]) == 2
    assert "does not match the model" in capsys.readouterr().err
    assert main(["plan", "zoo:vgg19_cifar", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["plan", "zoo:vgg19_cifar", "--target", "0.1"]) == 2
    assert "impossible budget" in capsys.readouterr().err


def test_pruned_model_keeps_its_class_count(tmp_path):
    model = resnet164_cifar(num_classes=100)
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    out = tmp_path / "pruned.pt"
    assert main(["prune", "zoo:resnet164_cifar", "--num-classes", "100", "--checkpoint", str(path),
                 "--out", str(out)]) == 0
    assert fxs.load(out)(torch.randn(1, 3, 32, 32)).shape == (1, 100)


def _tamper(path, **changes):
    data = torch.load(path, weights_only=True)
    torch.save({**data, **changes}, path)


def test_a_python_model_saves_and_loads_with_the_callers_model(tmp_path):
    path, pruned = saved_surgery(tmp_path, model=digits_cnn(width=8))
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(fxs.load(path, model=digits_cnn(width=8))(x), pruned(x))
    with pytest.raises(fxs.FxSurgeonError, match=r"does not name its model .* model=YourModel\(\)"):
        fxs.load(path)
    with pytest.raises(fxs.FxSurgeonError, match=r"another architecture than this model's: dimension "
                                                 r"'features.0' is 8 wide in the file, 16 wide in the model"):
        fxs.load(path, model=digits_cnn())


def test_a_file_never_makes_fxsurgeon_import_what_it_names(tmp_path, monkeypatch):
    trap = tmp_path / "fxs_trap.py"
    trap.write_text("import sys\nsys.modules['fxs_trap_sprung'] = sys\n\n"
                    "def factory(**kw):\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path, pruned = saved_surgery(tmp_path, spec="zoo:digits_cnn")
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(fxs.load(path)(x), pruned(x))                   # a known source: built by name
    for spec in ("fxs_trap:factory", "os:getpid", "this:x"):
        _tamper(path, spec=spec)
        with pytest.raises(fxs.FxSurgeonError, match=rf"made from '{spec}', and fxsurgeon never imports"):
            fxs.load(path)
    assert "fxs_trap" not in sys.modules and "fxs_trap_sprung" not in sys.modules
    assert torch.equal(fxs.load(path, model=digits_cnn())(x), pruned(x))   # the caller's model: fine


def test_files_of_other_kinds_and_versions_say_what_they_are(tmp_path):
    path, _ = saved_surgery(tmp_path, spec="zoo:digits_cnn")
    _tamper(path, format="fxsurgeon.pruned/4")
    with pytest.raises(fxs.FxSurgeonError, match=r"written by a newer fxsurgeon \(format fxsurgeon.pruned/4; "
                                                 r"this one reads fxsurgeon.pruned/3\): upgrade"):
        fxs.load(path)
    _tamper(path, format="fxsurgeon.nr/2")
    with pytest.raises(fxs.FxSurgeonError, match="not a model saved by fxsurgeon.save: it is a Neural"):
        fxs.load(path)
