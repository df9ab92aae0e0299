"""`fxsurgeon plan` / `fxsurgeon prune`, checkpoints and pruned models that load weights-only."""
import torch
from test_planner import kill
from test_rewrite import randomise_norms

import fxsurgeon as fxs
from fxsurgeon.cli import main
from fxsurgeon.zoo import resnet164_cifar


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
    assert "1,704,154 -> 828,225 parameters" in capsys.readouterr().out
    torch.load(out, weights_only=True)                 # data only: no pickled code
    net = fxs.load_pruned(out)
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
    assert fxs.load_pruned(out)(torch.randn(1, 3, 32, 32)).shape == (1, 100)
