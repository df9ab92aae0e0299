import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

import fxsurgeon as fxs
from fxsurgeon.cli import main, parser
from fxsurgeon.zoo import digits_cnn


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


@pytest.mark.parametrize("dot", [False, True])
def test_svg_is_drawn_with_or_without_graphviz(tmp_path, monkeypatch, capsys, dot):
    """--svg draws with matplotlib, never with graphviz's dot (here, when present, a dot
    that fails), and shows the gates inspect would add."""
    path = tmp_path / "bin"
    path.mkdir()
    if dot:
        (path / "dot").write_text("#!/bin/sh\nexit 1\n")
        (path / "dot").chmod(0o755)
    monkeypatch.setenv("PATH", str(path))
    assert (shutil.which("dot") is not None) == dot
    svg = tmp_path / "g.svg"
    assert main(["inspect", "helpers.models:Mixed", "--input-shape", "1,3,8,8", "--svg", str(svg)]) == 0
    assert f"wrote {svg}" in capsys.readouterr().out
    assert svg.read_text().startswith("<?xml") and "free, judged by a gate" in svg.read_text()


def test_svg_without_matplotlib_is_refused_before_the_analysis(tmp_path, monkeypatch, capsys):
    for name in ("matplotlib", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, name, None)
    svg, dot = tmp_path / "g.svg", tmp_path / "g.dot"
    assert main(["inspect", "zoo:digits_cnn", "--svg", str(svg)]) == 2
    out, err = capsys.readouterr()
    assert "pip install matplotlib" in err and "dimensions:" not in out and not svg.exists()
    assert main(["inspect", "zoo:digits_cnn", "--dot", str(dot)]) == 0 and dot.exists()


@pytest.fixture
def files(tmp_path):
    """What the bad-argument table refers to: a plain file, a checkpoint of digits_cnn and
    one of another architecture, a folder holding results, an empty image folder and a
    config that names code."""
    (tmp_path / "file.txt").write_text("not a model")
    torch.save(digits_cnn().state_dict(), tmp_path / "ckpt.pt")
    torch.save(digits_cnn(num_classes=5).state_dict(), tmp_path / "five.pt")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"epoch": 1}\n')
    for split in ("train", "val"):
        (tmp_path / "images" / split).mkdir(parents=True)
    (tmp_path / "code.json").write_text(json.dumps({"model": "os:getcwd", "data": "digits"}))
    return tmp_path


TRAIN = ["train", "zoo:digits_cnn", "--data", "digits", "--out", "{tmp}/new"]
PRUNE = ["prune", "zoo:digits_cnn", "--checkpoint", "{tmp}/ckpt.pt"]
BAD = [
    (["inspect"], "the following arguments are required: model (see fxsurgeon inspect --help)"),
    (["inspect", "resnet50"], "needs the form KIND:NAME"),
    (["inspect", "zoo:digits_cnn", "--input-shape", "1,1,-8,8"], "'1,1,-8,8' is not whole numbers >= 1"),
    (["inspect", "zoo:digits_cnn", "--input-shape", "0,1,8,8"], "'0,1,8,8' is not whole numbers >= 1"),
    (["inspect", "zoo:digits_cnn", "--num-classes", "0"], "'0' is not a whole number of at least 1"),
    (["inspect", "zoo:digits_cnn", "--json", "{tmp}"], "is a folder, not a file"),
    (["inspect", "zoo:digits_cnn", "--dot", "{tmp}/file.txt/g.dot"], "file.txt' is a file, not a folder"),
    (["inspect", "zoo:digits_cnn", "--leaf", "no_such.Block"], "cannot import leaf module class"),
    (["inspect", "zoo:digits_cnn", "--bogus"], "unrecognized arguments: --bogus"),
    (["plan", "zoo:digits_cnn", "--target", "nan"], "'nan' is not a positive number"),
    (["plan", "zoo:digits_cnn", "--target", "0"], "'0' is not a positive number"),
    (["plan", "zoo:digits_cnn", "--threshold", "1.5"], "'1.5' is not a number between 0 and 1"),
    (["plan", "zoo:digits_cnn", "--round-to", "0"], "'0' is not a whole number of at least 1"),
    (["plan", "zoo:digits_cnn", "--scheme", "magic"], "invalid choice: 'magic'"),
    (["plan", "zoo:digits_cnn", "--checkpoint", "{tmp}/file.txt"], "cannot read checkpoint"),
    (["plan", "zoo:digits_cnn", "--checkpoint", "{tmp}/five.pt"], "does not match the model: "),
    (["plan", "zoo:digits_cnn", "--checkpoint", "{tmp}/missing.pt"], "does not exist"),
    (PRUNE, "the following arguments are required: --out"),
    ([*PRUNE, "--out", "{tmp}/ckpt.pt"], "is the --checkpoint: write the pruned model elsewhere"),
    ([*PRUNE, "--out", "{tmp}/file.txt"], "exists: pass --overwrite to replace it"),
    ([*PRUNE, "--out", "{tmp}"], "is a folder, not a file"),
    ([*PRUNE, "--out", "{tmp}/file.txt/p.pt"], "is a file, not a folder"),
    ([*PRUNE, "--out", "{tmp}/p.pt", "--target", "1.5"], "--target"),
    ([*PRUNE, "--out", "{tmp}/p.pt", "--importance", "taylor"], "invalid choice: 'taylor'"),
    (["train", "zoo:digits_cnn"], "train needs a MODEL and --data"),
    ([*TRAIN, "--epochs", "0"], "recipe: epochs must be a whole number of at least 1, not 0"),
    ([*TRAIN, "--batch-size", "0"], "recipe: batch_size must be a whole number of at least 1, not 0"),
    ([*TRAIN, "--batch-size", "1400", "--method", "demp"], "batch size 1400 is more than the 1309 training"),
    ([*TRAIN, "--lr", "nan"], "recipe: lr is nan, not float"),
    ([*TRAIN, "--metric", "time"], "recipe: metric must be params or flops, not 'time'"),
    ([*TRAIN, "--threshold", "5"], "recipe: threshold must be in (0, 1]"),
    ([*TRAIN, "--threshold", "0"], "recipe: threshold must be in (0, 1]"),
    ([*TRAIN, "--target", "1e9"], "recipe: target must be a positive number, at most 100"),
    ([*TRAIN, "--method", "magic"], "unknown methods ['magic']"),
    ([*TRAIN, "--device", "tpu"], "unknown device 'tpu': use cpu, cuda or cuda:N"),
    ([*TRAIN, "--amp", "fp8"], "'fp8' is not bf16 or fp16"),
    ([*TRAIN, "--events", "0"], "'0' is not a whole number of at least 1"),
    ([*TRAIN, "--lr-steps", "60,30"], "'60,30' is not increasing whole numbers"),
    ([*TRAIN, "--death-set", "test"], "'test' is not train or held-out"),
    ([*TRAIN, "--equal-epochs", "--method", "nr"], "--method needs baseline and one of nr"),
    ([*TRAIN, "--seeds", "0,x"], "'0,x' is not whole numbers like 0,1,2"),
    ([*TRAIN, "--num-classes", "5"], "--num-classes 5 does not match digits, which has 10 classes"),
    ([*TRAIN, "--resume", "--overwrite"], "not allowed with argument"),
    ([*TRAIN[:-1], "{tmp}/file.txt"], "is a file, not a folder"),
    ([*TRAIN[:-1], "{tmp}/run"], "already holds results: pass --resume to continue its run, or --overwrite"),
    ([*TRAIN[:-1], "{tmp}/run", "--resume"], "holds no run of fxsurgeon train to resume"),
    (["train", "zoo:digits_cnn", "--data", "imagefolder:{tmp}/images"], "Couldn't find any class folder"),
    (["train", "zoo:digits_cnn", "--data", "mnist"], "unknown data 'mnist'"),
    (["train", "zoo:vgg19_cifar", "--data", "digits"], "does not run on the 1x1x8x8 inputs of digits"),
    (["train", "--config", "{tmp}/code.json"], "names the model 'os:getcwd', which would import code"),
    (["train", "--config", "{tmp}/file.txt"], "cannot read config"),
    (["demo", "--epochs", "-1", "--out", "{tmp}/new"], "epochs must be a whole number of at least 1, not -1"),
    (["demo", "--out", "{tmp}/run"], "already holds results"),
    (["magic"], "invalid choice: 'magic'"),
]


def _tree(root):
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_arguments_are_one_line_exit_2_and_leave_no_file(argv, message, files, capsys):
    before = _tree(files)
    assert main([a.format(tmp=files) for a in argv]) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("fxsurgeon: error: ") and message in err, err
    assert "Traceback" not in out + err
    assert _tree(files) == before


def test_the_installed_command_fails_the_same_way():
    done = subprocess.run([sys.executable, "-m", "fxsurgeon", "prune", "zoo:digits_cnn"],
                          capture_output=True, text=True, cwd=Path(fxs.__file__).parents[1], timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == ("fxsurgeon: error: the following arguments are required: --out "
                           "(see fxsurgeon prune --help)\n")


def _subcommands():
    top = parser()
    subs = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return top, subs.choices


def test_help_explains_every_option_of_every_subcommand():
    top, subs = _subcommands()
    assert "``" not in top.format_help() and "package.module:factory" in top.format_help()
    for name, sub in subs.items():
        for action in sub._actions:
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)
    assert "--importance" in subs["prune"].format_help() and "--round-to" in subs["plan"].format_help()
    demo, train = " ".join(subs["demo"].format_help().split()), " ".join(subs["train"].format_help().split())
    assert "follows NR's search (default 20)" in demo and "(default baseline,nr)" in demo
    assert "follows NR's search (default 160)" in train and "--events N|unlimited" in train


def test_prune_to_a_budget_prints_costs_and_latency_and_writes_the_model(tmp_path, capsys):
    out = tmp_path / "pruned.fxs"
    assert main(["prune", "torchvision:resnet18", "--input-shape", "1,3,32,32", "--target", "0.5",
                 "--importance", "magnitude", "--round-to", "8", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "to 0.5 of its flops by magnitude" in text and "latency" in text and "x faster" in text
    model = fxs.load(out)
    graph = fxs.analyze(model, torch.randn(1, 3, 32, 32))
    full = fxs.analyze(torchvision.models.resnet18(), torch.randn(1, 3, 32, 32))
    assert graph.count("flops") <= 0.5 * full.count("flops")


def test_only_matching_no_dimension_draws_nothing_and_says_so(tmp_path, capsys):
    dot = tmp_path / "g.dot"
    assert main(["inspect", "zoo:digits_cnn", "--dot", str(dot), "--only", "nothing*"]) == 2
    assert "--only 'nothing*' matches no dimension" in capsys.readouterr().err and not dot.exists()
