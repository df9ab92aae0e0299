"""Inputs a tester found giving raw tracebacks or misleading words: each is handled, or
refused with one line that names its cause, before any work."""
import errno
import json
import os
import re

import pytest
import torch
from torch import nn

import fxsurgeon as fxs
from helpers.training import interrupt_at


class BatchDict(nn.Module):
    """A forward that takes one dict, as data pipelines hand batches over."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)

    def forward(self, batch):
        x = self.bn(self.conv(batch["image"])).relu()
        x = self.bn2(self.conv2(x)).relu() * batch["scale"]
        return self.head(x.mean((2, 3)))


def _batch(n=1):
    return {"image": torch.randn(n, 3, 8, 8), "scale": torch.rand(n, 1, 1, 1) + 0.5}


@pytest.mark.parametrize("scheme", ["nr", "cr"])
def test_a_dict_argument_is_analysed_and_rewritten_keeping_the_function(scheme):
    torch.manual_seed(0)
    model, batch = BatchDict().eval(), _batch()
    with torch.no_grad():
        model.bn.weight[:3] = 0
        model.bn2.weight[:2] = 0
    graph = fxs.analyze(model, (batch,), frontend="fx")
    assert {d.name: d.free for d in graph.dims if d.kind == "input"} == {"batch['image']": False,
                                                                         "batch['scale']": False}
    assert graph.input_shapes == [(1, 3, 8, 8), (1, 1, 1, 1)]
    plan = fxs.plan(graph, fxs.liveliness(graph), scheme=scheme)
    assert (len(plan.dims["conv"].survivors), len(plan.dims["conv2"].survivors)) == (5, 6)
    surgery = fxs.rewrite(graph, plan)
    five = _batch(5)
    torch.testing.assert_close(surgery.module(five), model(five))


def test_a_dict_as_the_example_inputs_is_refused_saying_how_to_pass_it():
    with pytest.raises(fxs.FxSurgeonError, match=r"a dict \(keys \['image', 'scale'\]\) is not taken as "
                                                 r"keyword arguments: pass \(inputs,\)"):
        fxs.analyze(BatchDict(), _batch())


@pytest.mark.parametrize("build", [
    lambda m, x: fxs.analyze(m, x),
    lambda m, x: fxs.NeuralRejuvenation(m, x, torch.optim.SGD(m.parameters(), lr=0.1)),
    lambda m, x: fxs.DemP(m, x, torch.optim.SGD(m.parameters(), lr=0.1), [(x,)], total_steps=10),
], ids=["analyze", "nr", "demp"])
def test_a_compiled_model_is_refused_saying_what_to_compile(build):
    from fxsurgeon.zoo import digits_cnn
    compiled = torch.compile(digits_cnn(), backend="eager")
    with pytest.raises(fxs.UntraceableModelError, match=r"compiled \(torch.compile\): pass the model itself "
                                                        r"\(its ._orig_mod\).*torch.compile\(nr.model\)"):
        build(compiled, torch.randn(1, 1, 8, 8))


def _few_digits(n=128):
    from torch.utils.data import Subset

    from fxsurgeon.experiments.data import Data, load_data
    data = load_data("digits")
    return Data(Subset(data.train, range(n)), Subset(data.test, range(64)), data.input_shape, 10)


def _train(tmp_path, epochs=3):
    from fxsurgeon.experiments.devices import Hardware
    from fxsurgeon.experiments.loop import train
    from fxsurgeon.experiments.recipe import Recipe
    from fxsurgeon.zoo import digits_cnn
    torch.manual_seed(0)
    recipe = Recipe(epochs=epochs, batch_size=64)
    return train(digits_cnn(), _few_digits(), "baseline", recipe, tmp_path / "m.jsonl", progress=False,
                 checkpoint=tmp_path / "ck.pt", hardware=Hardware("cpu"))[1]


def _epoch_of(checkpoint):
    from fxsurgeon.persistence.checkpoint import read
    return read(checkpoint)["extra"]["run"]["epoch"]


full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")


@full
def test_a_full_disk_while_checkpointing_says_so_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import fxsurgeon.persistence.history as history
    saves = []

    def second_to_full_disk(fd, mode, buffering):      # torch.save really writes to a full device
        saves.append(fd)
        if len(saves) < 2:
            return open(fd, mode, buffering=buffering)
        os.close(fd)
        return open("/dev/full", mode, buffering=buffering)
    monkeypatch.setattr(history, "open", second_to_full_disk, raising=False)
    with pytest.raises(fxs.FxSurgeonError) as err:
        _train(tmp_path)
    assert str(err.value) == (f"no space left on device writing {str(tmp_path / 'ck.pt')!r}; the last good "
                              f"checkpoint, {str(tmp_path / 'ck.pt')!r} of epoch 1, is kept")
    assert _epoch_of(tmp_path / "ck.pt") == 1 and sorted(os.listdir(tmp_path)) == ["ck.pt", "m.jsonl"]
    monkeypatch.undo()
    assert _train(tmp_path).epochs == 3 and _epoch_of(tmp_path / "ck.pt") == 3


class _FillsUp:
    """A log file on a disk that fills up after ``room`` bytes, halfway through a line."""

    def __init__(self, path, room):
        self.file, self.room = open(path, "ab", buffering=0), room

    def write(self, data):
        if self.room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = self.file.write(data[:self.room])
        self.room -= n
        return n

    def __getattr__(self, name):
        return getattr(self.file, name)


def _logged(path):
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines()]


def test_a_full_disk_while_logging_leaves_whole_lines_and_the_last_good_checkpoint(tmp_path, monkeypatch):
    import fxsurgeon.experiments.loop as loop
    monkeypatch.setattr(loop, "open_file", lambda path, *_, **__: _FillsUp(path, 300))
    with pytest.raises(fxs.FxSurgeonError) as err:
        _train(tmp_path)
    assert str(err.value) == (f"no space left on device writing {str(tmp_path / 'm.jsonl')!r}; the last good "
                              f"checkpoint, {str(tmp_path / 'ck.pt')!r} of epoch 1, is kept")
    assert _logged(tmp_path / "m.jsonl") == [1]
    monkeypatch.undo()
    _train(tmp_path)
    assert _logged(tmp_path / "m.jsonl") == [1, 2, 3]


@full
def test_saving_a_model_to_a_full_disk_names_the_file_and_leaves_it(tmp_path, monkeypatch):
    import fxsurgeon.persistence.history as history

    def full_disk(fd, mode, buffering):
        os.close(fd)
        return open("/dev/full", mode, buffering=buffering)
    (tmp_path / "w.pt").write_bytes(b"old")
    monkeypatch.setattr(history, "open", full_disk, raising=False)
    with pytest.raises(fxs.FxSurgeonError, match=r"^no space left on device writing '.*w.pt'; the file there "
                                                 r"is left as it was$"):
        history.write_atomic({"w": torch.zeros(1000)}, tmp_path / "w.pt")
    assert os.listdir(tmp_path) == ["w.pt"] and (tmp_path / "w.pt").read_bytes() == b"old"


class _Sprung:
    """Pickles as a call to os.system: a hostile checkpoint."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def test_a_hostile_checkpoint_is_refused_for_fxsurgeons_reason_without_torchs_advice(tmp_path, capsys):
    from fxsurgeon.cli import main
    hostile = tmp_path / "hostile.pt"
    torch.save({"state_dict": _Sprung(tmp_path / "sprung")}, hostile)
    assert main(["plan", "zoo:digits_cnn", "--checkpoint", str(hostile)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(r"GLOBAL \w+\.system", err), err
    assert "which fxsurgeon refuses: it reads files with torch.load(weights_only=True) and never runs" in err
    with pytest.raises(fxs.FxSurgeonError) as load:
        fxs.load(hostile)
    for text in (err, str(load.value)):
        assert "weights_only` set to `False`" not in text and "will likely succeed" not in text, text
    assert not (tmp_path / "sprung").exists()


@pytest.mark.parametrize("config, message", [
    ({"paper": {"error": {"baseline": "6.1%"}}}, r"paper.error\['baseline'\] is '6.1%', not float"),
    ({"paper": {"table": 4}}, "paper.table is 4, not str"),
    ({"paper": {"error_per_event": [5.4, None]}}, r"paper.error_per_event\[1\] is None, not float"),
    ({"paper": {"note": ["a"]}}, r"paper.note is \['a'\], not str"),
    ({"seeds": [2 ** 64]}, r"seeds must be whole numbers in \[0, 2\*\*63\).*got \[18446744073709551616\]"),
    ({"seeds": [-1]}, r"seeds must be whole numbers in \[0, 2\*\*63\).*got \[-1\]"),
    ({"seeds": []}, r"seeds must be .* at least one: got none"),
    ({"methods": []}, "no method to run"),
])
def test_a_bad_config_is_refused_before_anything_is_written(tmp_path, capsys, config, message):
    from fxsurgeon.cli import main
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model": "zoo:digits_cnn", "data": "digits", "methods": ["baseline"],
                                "recipe": {"epochs": 1, "batch_size": 256}, **config}))
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 2
    assert re.search(f"^fxsurgeon: error: .*{message}", capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_a_huge_seed_on_the_command_line_is_refused_before_anything_is_written(tmp_path, capsys):
    from fxsurgeon.cli import main
    out = tmp_path / "out"
    argv = ["train", "zoo:digits_cnn", "--data", "digits", "--seeds", f"0,{2 ** 63}", "--out", str(out)]
    assert main(argv) == 2
    assert "seeds must be whole numbers in [0, 2**63)" in capsys.readouterr().err and not out.exists()
    with pytest.raises(fxs.FxSurgeonError, match=r"recipe: seed must be a whole number in \[0, 2\*\*63\)"):
        from fxsurgeon.experiments.recipe import Recipe
        Recipe(seed=2 ** 64)


def test_every_shipped_config_passes_the_checks():
    from importlib import resources

    from fxsurgeon.experiments.runs import load_config
    for path in (resources.files("fxsurgeon") / "configs").iterdir():
        assert load_config("paper:" + path.name[:-5])["paper"]["error"], path.name


@pytest.mark.parametrize("change, message", [
    ({"done": True, "history": [], "epoch": 0}, r"its run's history is \[\], and must be optimizer steps"),
    ({"epoch": 3}, r"its run's epoch is 3, and must be the number of epochs its history records"),
    ({"history": [{"epoch": 1}]}, r".*run.history\[0\] has no 'step'"),
])
def test_a_crafted_run_state_is_refused_before_any_work(tmp_path, change, message):
    from fxsurgeon.persistence.checkpoint import read
    _train(tmp_path, epochs=1)
    state = read(tmp_path / "ck.pt")
    state["extra"]["run"].update(change)
    torch.save(state, tmp_path / "ck.pt")
    log = (tmp_path / "m.jsonl").read_bytes()
    with pytest.raises(fxs.FxSurgeonError, match=f"^cannot resume from '.*ck.pt': {message}"):
        _train(tmp_path, epochs=2)
    assert (tmp_path / "m.jsonl").read_bytes() == log


RUN = ["train", "zoo:digits_cnn", "--data", "digits", "--method", "baseline", "--epochs", "2", "--batch-size",
       "256", "--quiet", "--device", "cpu"]


@full
def test_what_an_interrupted_or_failed_run_says_is_left_to_resume(tmp_path, monkeypatch, capsys):
    import fxsurgeon.persistence.history as history
    from fxsurgeon.cli import main
    out = tmp_path / "run"
    interrupt_at(monkeypatch, 2)
    assert main([*RUN, "--out", str(out)]) == 130
    assert capsys.readouterr().err == "fxsurgeon: interrupted (continue it with --resume)\n"
    monkeypatch.undo()
    assert main([*RUN, "--out", str(out), "--resume"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    kept = (f"--overwrite discarded the new run: {str(out)!r} holds its old results as they were, and there "
            f"is nothing to resume\n")
    interrupt_at(monkeypatch, 1)
    assert main([*RUN, "--out", str(out), "--overwrite"]) == 130
    assert capsys.readouterr().err == "fxsurgeon: interrupted: " + kept
    monkeypatch.undo()
    monkeypatch.setattr(history, "open", lambda fd, mode, buffering: os.close(fd) or
                        open("/dev/full", mode, buffering=buffering), raising=False)
    assert main([*RUN, "--out", str(out), "--overwrite"]) == 2
    checkpoint = "checkpoints/baseline-seed0.pt"
    assert re.fullmatch(f"fxsurgeon: error: no space left on device writing '.*{checkpoint}'; {kept}",
                        capsys.readouterr().err)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert os.listdir(tmp_path) == ["run"]


def test_overwrite_refuses_a_mount_point_before_training(tmp_path, monkeypatch, capsys):
    import fxsurgeon.experiments.runs as runs
    from fxsurgeon.cli import main
    out = tmp_path / "mnt"
    out.mkdir()
    (out / "results.json").write_text("old")
    real = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: os.fspath(p) == str(out) or real(p))
    monkeypatch.setattr(runs, "train", lambda *a, **k: pytest.fail("trained"))
    assert main([*RUN, "--out", str(out), "--overwrite"]) == 2
    assert capsys.readouterr().err == (f"fxsurgeon: error: --out {str(out)!r} is a mount point, which "
                                       f"--overwrite cannot replace: pass a folder inside it, or empty it "
                                       f"first\n")
    assert os.listdir(tmp_path) == ["mnt"] and os.listdir(out) == ["results.json"]
