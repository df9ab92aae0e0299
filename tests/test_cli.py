import json
import shutil

import pytest

from fxsurgeon.cli import main


def test_inspect_prints_table_and_writes_json_and_dot(tmp_path, capsys):
    js, dot = tmp_path / "g.json", tmp_path / "g.dot"
    assert main(["inspect", "zoo:vgg19_cifar", "--json", str(js), "--dot", str(dot)]) == 0
    out = capsys.readouterr().out
    assert "features.0" in out and "parameters: 20,035,018 (20.04M)" in out
    assert "multiply-accumulates" in out and "input 1x3x32x32" in out
    data = json.loads(js.read_text())
    assert data["totals"]["params"] == 20_035_018
    first = data["dimensions"][1]
    assert first["name"] == "features.0" and first["free"] and first["width"] == 64
    assert {m["role"] for m in first["members"]} >= {"out", "in", "param", "source"}
    assert dot.read_text().startswith("digraph channels {")


def test_inspect_torchvision_with_input_shape_and_only(tmp_path, capsys):
    dot = tmp_path / "g.dot"
    assert main(["inspect", "torchvision:resnet18", "--input-shape", "1,3,64,64",
                 "--dot", str(dot), "--only", "layer1*"]) == 0
    assert "input 1x3x64x64" in capsys.readouterr().out
    text = dot.read_text()
    assert '"dim:layer1.0.conv1"' in text and "layer2" not in text


def test_inspect_factory_spec(capsys):
    assert main(["inspect", "fxsurgeon.zoo:resnet164_cifar", "--input-shape", "1,3,32,32"]) == 0
    assert "residual trunk" in capsys.readouterr().out


@pytest.mark.parametrize("spec, message", [
    ("resnet50", "needs the form KIND:NAME"),
    ("torchvision:resnet51", "torchvision has no model 'resnet51'"),
    ("zoo:nope", "fxsurgeon.zoo has no model 'nope'"),
    ("no_such_pkg:factory", "cannot load factory 'factory' from module 'no_such_pkg'"),
])
def test_inspect_bad_specs_exit_2_with_the_cause(spec, message, capsys):
    assert main(["inspect", spec]) == 2
    assert message in capsys.readouterr().err


def test_svg_needs_graphviz_or_draws(tmp_path, capsys):
    svg = tmp_path / "g.svg"
    rc = main(["inspect", "zoo:vgg19_cifar", "--svg", str(svg)])
    if shutil.which("dot"):
        assert rc == 0 and "<svg" in svg.read_text()
    else:
        assert rc == 2 and "needs graphviz" in capsys.readouterr().err
