"""Data loaders on small data the tests make, training runs, and the train command."""
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fxsurgeon as fxs
from fxsurgeon.cli import main
from fxsurgeon.experiments.data import load_data
from fxsurgeon.experiments.loop import train
from fxsurgeon.experiments.recipe import Recipe
from fxsurgeon.zoo import digits_cnn
from helpers.models import dead_digits_cnn
from helpers.training import interrupt_at

FAST = {"epochs": 1, "search_epochs": 1, "batch_size": 64, "lr": 0.05}


def _cifar_archive(root, classes, n=6, protocol=pickle.DEFAULT_PROTOCOL):
    base = root / ("cifar-10-batches-py" if classes == 10 else "cifar-100-python")
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    key = b"labels" if classes == 10 else b"fine_labels"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if classes == 10 else ["train", "test"]
    for name in names:
        with open(base / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         key: rng.integers(0, classes, n).tolist(), b"batch_label": b"batch"}, f, protocol)


@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_archives_load_without_download(tmp_path, classes):
    _cifar_archive(tmp_path, classes)
    data = load_data(f"cifar{classes}:{tmp_path}")
    x, y = data.train[0]
    assert len(data.train) == (30 if classes == 10 else 6) and len(data.test) == 6
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= y < classes
    assert data.num_classes == classes and data.input_shape == (1, 3, 32, 32)
    with pytest.raises(fxs.FxSurgeonError, match="never downloads"):
        load_data(f"cifar{classes}:{tmp_path / 'empty'}")


class _Sprung:
    """Pickles as a call to os.system: a hostile "archive"."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def test_cifar_archives_are_read_as_data_never_run(tmp_path):
    _cifar_archive(tmp_path / "old", 10, protocol=2)           # as Python 2 and torchvision left them
    assert len(load_data(f"cifar10:{tmp_path / 'old'}").train) == 30
    _cifar_archive(tmp_path, 10)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(pickle.dumps({b"data": _Sprung(tmp_path / "sprung"), b"labels": []}))
    with pytest.raises(fxs.FxSurgeonError, match=r"data_batch_3' is not a CIFAR archive: UnpicklingError: "
                                                 r"it names posix.system"):
        load_data(f"cifar10:{tmp_path}")
    assert not (tmp_path / "sprung").exists()


def test_imagefolder_loads_class_folders(tmp_path):
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(2):
                image = Image.fromarray(np.full((40, 50, 3), 60 * i, np.uint8))
                image.save(tmp_path / split / c / f"{i}.png")
    data = load_data(f"imagefolder:{tmp_path}", image_size=32)
    assert data.num_classes == 2 and len(data.train) == 4 and data.test[0][0].shape == (3, 32, 32)
    with pytest.raises(fxs.FxSurgeonError, match="one folder per class"):
        load_data(f"imagefolder:{tmp_path / 'train'}")
    with pytest.raises(fxs.FxSurgeonError, match="unknown data"):
        load_data("mnist")


def test_digits_ship_with_scikit_learn():
    data = load_data("digits")
    assert (len(data.train), len(data.test), data.num_classes) == (1437, 360, 10)
    assert data.train[0][0].shape == (1, 8, 8)


def test_nr_run_fires_its_event_and_keeps_training(tmp_path):
    torch.manual_seed(0)
    data = load_data("digits")
    log = tmp_path / "m.jsonl"
    recipe = Recipe(**FAST, threshold=1.0)       # a quarter is dead: an event at the first check
    net, result = train(dead_digits_cnn(), data, "nr-cr", recipe, log, progress=False)
    assert len(result.events) == 1 and result.epochs == 2        # search epoch, then the schedule
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["epoch"] for r in lines if "accuracy" in r] == [1, 2] and "event" in lines[0]
    assert result.accuracy > 0.2 and result.params == sum(p.numel() for p in net.parameters())


def test_slimming_prunes_what_its_l1_killed_then_fine_tunes():
    torch.manual_seed(0)
    recipe = Recipe(**FAST, slimming_lambda=1e-3, prune_ratio=0.5, finetune_epochs=1)
    _, result = train(digits_cnn(), load_data("digits"), "slimming", recipe, progress=False)
    assert result.epochs == 2 and result.history[-1]["lambda"] == 0   # pruned after epoch 1
    assert result.params < 0.5 * 17754                        # half of all judged channels went


def test_magnitude_pruning_removes_the_smallest_filters_of_every_layer_then_fine_tunes():
    torch.manual_seed(0)
    recipe = Recipe(**FAST, prune_ratio=0.25, finetune_epochs=1)
    net, result = train(digits_cnn(), load_data("digits"), "magnitude", recipe, progress=False)
    assert result.epochs == 2                                  # pruned after epoch 1, then fine-tuned
    convs = [m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [12, 12, 24, 24]                           # a quarter of each layer went
    assert result.history[0]["sparsity"] == result.history[-1]["sparsity"] > 0.25


def test_demp_run_prunes_dead_units_as_it_trains(tmp_path):
    torch.manual_seed(0)
    log = tmp_path / "m.jsonl"
    recipe = Recipe(**{**FAST, "epochs": 3}, demp_reg=0.5, demp_noise=1e-3, death_samples=64)
    net, result = train(digits_cnn(), load_data("digits"), "demp", recipe, log, progress=False)
    assert result.epochs == 3 and result.events and result.params == sum(p.numel() for p in net.parameters())
    sparsity = [h["sparsity"] for h in result.history]
    assert sparsity == sorted(sparsity) and sparsity[-1] > 0.1          # only ever removes
    assert all("sigma" in h and h["seconds"] > 0 for h in result.history)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert any("event" in r and r["event"]["removed"] > 0 for r in lines)


def test_train_command_writes_metrics_results_and_plots(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "helpers.models:dead_digits_cnn", "--data", "digits", "--method", "baseline,nr",
                 "--epochs", "1", "--search-epochs", "1", "--threshold", "1", "--out", str(out), "--quiet",
                 "--tensorboard"]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].split() == ["method", "seeds", "params", "FLOPs", "(MACs)", "sparsity",
                                            "accuracy", "(last)", "best", "epochs", "time", "surgeries"]
    for name in ("metrics.jsonl", "results.json", "training.png", "widths-nr-seed0.png"):
        assert (out / name).stat().st_size > 0, name
    assert not (out / "sparsity.png").exists()                # no pruning method ran
    assert list((out / "tensorboard").rglob("events.out.tfevents*"))
    assert [r["method"] for r in json.loads((out / "results.json").read_text())] == ["baseline", "nr"]


def test_train_command_runs_demp_and_plots_sparsity(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "zoo:digits_cnn", "--data", "digits", "--method", "demp,magnitude", "--epochs", "1",
                 "--finetune-epochs", "1", "--demp-reg", "0.5", "--out", str(out), "--quiet"]) == 0
    assert "demp" in capsys.readouterr().out
    for name in ("training.png", "sparsity.png"):
        assert (out / name).stat().st_size > 0, name


def test_train_command_errors_are_clear(capsys):
    assert main(["train", "zoo:digits_cnn", "--data", "digits", "--method", "magic"]) == 2
    assert "unknown methods ['magic']" in capsys.readouterr().err
    assert main(["train", "--config", "paper:vgg19-imagenet"]) == 2
    assert "paper:vgg19-cifar10" in capsys.readouterr().err
    assert main(["train", "--config", "paper:vgg19-cifar10", "--epochs", "1"]) == 2
    assert "never downloads" in capsys.readouterr().err


def test_demo_runs_with_progress_bars(tmp_path, capsys):
    assert main(["demo", "--epochs", "1", "--search-epochs", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("method") and "baseline" in out and f"plot:    {tmp_path / 'training.png'}" in out


def test_every_shipped_config_names_a_model_and_a_valid_recipe():
    from importlib import resources

    from fxsurgeon.experiments.runs import load_config, recipe_from
    from fxsurgeon.zoo.specs import load_model
    names = sorted(p.name[:-5] for p in (resources.files("fxsurgeon") / "configs").iterdir())
    assert len(names) == 11
    for name in names:
        cfg = load_config(f"paper:{name}")
        recipe = recipe_from(cfg["recipe"])
        assert cfg["paper"]["table"] in ("2", "4", "5") and set(cfg["paper"]["error"]) <= set(cfg["methods"])
        assert ("nr-cr" in cfg["methods"]) == (cfg["paper"]["table"] in ("4", "5"))
        assert (recipe.fixed == "trunk") == ("resnet" in name), name
        load_model(cfg["model"], 10)


#: the paper's numbers (Qiao et al., CVPR 2019), error % (top-1; ImageNet top-5 beside it):
#: Table 2 by (model, the budget NR keeps), Table 4 by (model, dataset), Table 5 per event
PAPER_TABLE_2 = {("resnet50", "flops"): ((24.30, 7.19), (22.79, 6.56)),
                 ("resnet50", "params"): ((24.30, 7.19), (22.93, 6.47)),
                 ("vgg16", "flops"): ((24.26, 7.32), (23.71, 7.01)),
                 ("vgg16", "params"): ((24.26, 7.32), (23.11, 6.69))}
PAPER_TABLE_4 = {("vgg19", "cifar10"): (5.44, 4.19), ("vgg19", "cifar100"): (23.11, 21.53),
                 ("resnet164", "cifar10"): (6.11, 5.13), ("resnet164", "cifar100"): (28.86, 23.84),
                 ("densenet100", "cifar10"): (3.64, 3.40), ("densenet100", "cifar100"): (19.85, 18.59)}
PAPER_TABLE_5 = [5.44, 4.19, 4.03, 3.79, 3.69, 3.62]


def test_every_shipped_config_quotes_the_paper_row_it_reproduces():
    """A config's budget decides its column of Table 2 (the same FLOPs or the same
    parameters); Table 4 is NR-CR at half the parameters; Table 5 per event."""
    from importlib import resources

    from fxsurgeon.experiments.runs import load_config
    for path in sorted((resources.files("fxsurgeon") / "configs").iterdir()):
        cfg = load_config(f"paper:{path.name[:-5]}")
        paper, recipe, model = cfg["paper"], cfg["recipe"], path.name.split("-")[0]
        if paper["table"] == "2":
            (base, base5), (nr, nr5) = PAPER_TABLE_2[(model, recipe["metric"])]
            assert paper["error"] == {"baseline": base, "nr-ca": nr}, path.name
            assert paper["top5_error"] == {"baseline": base5, "nr-ca": nr5}, path.name
            assert recipe["target"] == 1.0 and recipe["round_to"] == 1
        elif paper["table"] == "4":
            dataset = cfg["data"].split(":")[0]
            base, nr = PAPER_TABLE_4[(model, dataset)]
            assert paper["error"] == {"baseline": base, "nr-cr": nr}, path.name
            assert (recipe["metric"], recipe["target"], recipe["threshold"]) == ("params", 0.5, 0.25)
        else:
            assert paper["table"] == "5" and paper["error_per_event"] == PAPER_TABLE_5
            assert paper["error"] == {"baseline": PAPER_TABLE_5[0]}





def _without_seconds(path):
    """The JSON lines or list in ``path``, without their wall-clock times."""
    text = path.read_text()
    records = json.loads(text) if path.suffix == ".json" else [json.loads(line) for line in text.splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


RUN = ["train", "helpers.models:dead_digits_cnn", "--data", "digits", "--method", "baseline,nr",
       "--epochs", "2", "--batch-size", "256", "--search-epochs", "1", "--threshold", "1", "--quiet"]


def test_an_interrupted_run_resumes_to_the_same_results(tmp_path, monkeypatch, capsys):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main([*RUN, "--out", str(straight)]) == 0
    interrupt_at(monkeypatch, 4)                 # baseline ran 2 epochs; nr is in its second
    assert main([*RUN, "--out", str(resumed)]) == 130
    assert "interrupted (continue it with --resume)" in capsys.readouterr().err
    monkeypatch.undo()
    assert main([*RUN, "--out", str(resumed)]) == 2
    assert "already holds results: pass --resume" in capsys.readouterr().err
    assert main([*RUN, "--out", str(resumed), "--epochs", "3", "--resume"]) == 2
    assert "its recipe was" in capsys.readouterr().err
    assert main([*RUN, "--out", str(resumed), "--resume"]) == 0
    for name in ("metrics.jsonl", "results.json"):
        assert _without_seconds(resumed / name) == _without_seconds(straight / name), name
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == ["baseline-seed0.pt", "nr-seed0.pt"]


def test_overwrite_replaces_the_old_results_only_when_the_new_run_has_finished(tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert main([*RUN, "--method", "baseline", "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    interrupt_at(monkeypatch, 2)
    assert main([*RUN, "--method", "nr", "--out", str(out), "--overwrite"]) == 130
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["run"]          # no half-made sibling left
    monkeypatch.undo()
    assert main([*RUN, "--method", "nr", "--out", str(out), "--overwrite"]) == 0
    assert {r["method"] for r in _without_seconds(out / "metrics.jsonl")} == {"nr"}
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def _few_digits(n=256):
    from torch.utils.data import Subset

    from fxsurgeon.experiments.data import Data
    data = load_data("digits")
    return Data(Subset(data.train, range(n)), Subset(data.test, range(128)), data.input_shape, 10)


def test_cpu_training_in_bf16_and_clear_device_errors():
    from fxsurgeon.experiments.devices import Hardware
    torch.manual_seed(0)
    net, result = train(digits_cnn(), _few_digits(), "baseline", Recipe(**FAST), progress=False,
                        hardware=Hardware("cpu", amp="bf16"))
    assert next(net.parameters()).device.type == "cpu" and math.isfinite(result.history[0]["loss"])
    assert result.best == max(h["accuracy"] for h in result.history) >= result.accuracy
    with pytest.raises(fxs.FxSurgeonError, match="unknown device 'tpu'"):
        Hardware("tpu").resolve()
    with pytest.raises(fxs.FxSurgeonError, match="runs on cpu or cuda"):
        Hardware("meta").resolve()
    if not torch.cuda.is_available():
        with pytest.raises(fxs.FxSurgeonError, match="CUDA is not available"):
            Hardware("cuda").resolve()
        assert Hardware().resolve().device.type == "cpu" and Hardware().resolve().workers == 0


def _checkpointed(tmp_path, hardware=None, **recipe):
    """A baseline run of one epoch on 256 digits (at a constant LR: ``lr_steps`` past it),
    checkpointed; its recipe and checkpoint."""
    torch.manual_seed(0)
    recipe = Recipe(**{**FAST, "lr_steps": [5], **recipe})
    path = tmp_path / "run.pt"
    train(digits_cnn(), _few_digits(), "baseline", recipe, tmp_path / "m.jsonl", progress=False,
          checkpoint=path, hardware=hardware)
    return recipe, path


def _group(**changes):
    return lambda data: data["optimizer"]["param_groups"][0].update(changes)


def _run_state(**changes):
    return lambda data: data["extra"]["run"].update(changes)


#: a run's checkpoint changed where the run's recipe says otherwise, and what the refusal says
RESUMED = {
    "lr": (_group(lr=100.0), r"its optimizer's lr is 100.0 \(group 0\), and the run's recipe makes it 0.05: "
                             r"it is not this run's checkpoint"),
    "momentum": (_group(momentum=0.5), "its optimizer's momentum is 0.5 .* makes it 0.9"),
    "initial lr": (_group(initial_lr=100.0), "its optimizer's initial_lr is 100.0"),
    "epoch": (_run_state(epoch=-5), "its run's epoch is -5, and must be the number of epochs its history"),
    "start": (_run_state(start=3), "its run's start is 3, and must be an epoch up to the run's"),
    "length": (_run_state(length=10 ** 9), "its run's length is 1000000000, and must be the recipe's epochs"),
    "pruned": (_run_state(pruned=True), "its run's pruned is True, and must be false but for a method"),
    "done": (_run_state(start=1), "its run's done is True, and must be true once its schedule ran"),
    "seconds": (_run_state(seconds=-1.0), "its run's seconds is -1.0, and must be a duration"),
    "steps": (lambda d: d.update(steps=3), "its run's history is .*, and must be optimizer steps in order"),
    "lam": (lambda d: d.update(lam=1e30), r"its lam is 1e\+30, and must be this wrapper's lam before"),
}


@pytest.mark.parametrize("name", RESUMED)
def test_resume_takes_the_runs_recipe_as_the_truth(name, tmp_path):
    recipe, path = _checkpointed(tmp_path)
    change, message = RESUMED[name]
    data = torch.load(path, weights_only=True)
    change(data)
    torch.save(data, path)
    with pytest.raises(fxs.FxSurgeonError, match=rf"cannot resume from .*run.pt.: {message}"):
        train(digits_cnn(), _few_digits(), "baseline", recipe, progress=False, checkpoint=path)


def test_resume_checks_the_gradient_scaler(tmp_path):
    from fxsurgeon.experiments.devices import Hardware
    fp16 = Hardware("cpu", amp="fp16")
    recipe, path = _checkpointed(tmp_path, hardware=fp16)
    for change, message in [({"scale": math.nan}, "scale is nan"),
                            ({"_growth_tracker": -1}, "_growth_tracker is -1"),
                            ({"growth_factor": 1e9}, "growth_factor is 1000000000.0")]:
        data = torch.load(path, weights_only=True)
        data["extra"]["scaler"].update(change)
        torch.save(data, tmp_path / "tampered.pt")
        with pytest.raises(fxs.FxSurgeonError, match=rf"its gradient scaler's {message}: not one this run"):
            train(digits_cnn(), _few_digits(), "baseline", recipe, progress=False,
                  checkpoint=tmp_path / "tampered.pt", hardware=fp16)


def test_a_diverged_run_logs_strict_json_and_its_checkpoint_is_refused(tmp_path):
    def strict(constant):
        raise ValueError(f"{constant} is not JSON")
    recipe, path = _checkpointed(tmp_path, lr=1e12)
    lines = (tmp_path / "m.jsonl").read_text().splitlines()
    assert [json.loads(line, parse_constant=strict)["loss"] for line in lines] == [None]    # NaN: null
    with pytest.raises(fxs.FxSurgeonError, match=r"cannot resume from .*: its parameter '.*' holds NaN"):
        train(digits_cnn(), _few_digits(), "baseline", recipe, progress=False, checkpoint=path)


def test_fp16_steps_only_on_finite_gradients_and_lowers_the_scale():
    from fxsurgeon.experiments.devices import Hardware
    place = Hardware("cpu", amp="fp16").resolve()
    w = torch.nn.Parameter(torch.ones(3))
    opt, steps = torch.optim.SGD([w], lr=0.1), []
    scale = place.scaler.get_scale()
    place.step((w * float("inf")).sum(), opt, lambda: steps.append(1))
    assert steps == [] and place.scaler.get_scale() < scale
    place.step((2 * w).sum(), opt, lambda: steps.append(1))
    assert steps == [1] and torch.equal(w.grad, torch.full((3,), 2.0))       # unscaled before the step


def test_lr_schedule_is_constant_while_searching_then_a_cosine_or_steps():
    from fxsurgeon.experiments.methods import Method
    from fxsurgeon.experiments.state import Run
    run = Run(start=None, length=6)
    steps, cosine = Method(Recipe(lr_steps=[2, 4])), Method(Recipe())
    assert steps.lr_factor(5, run) == cosine.lr_factor(5, run) == 1.0
    run.start = 3
    assert [round(steps.lr_factor(e, run), 6) for e in range(3, 10)] == [1, 1, 0.1, 0.1, 0.01, 0.01, 0.01]
    assert cosine.lr_factor(3, run) == 1 and cosine.lr_factor(6, run) == pytest.approx(0.5)
    with pytest.raises(fxs.FxSurgeonError, match="lr_steps must be increasing"):
        Recipe(lr_steps=[3, 2])
    with pytest.raises(fxs.FxSurgeonError, match="events must be a whole number of at least 1, or null"):
        Recipe(events=0)


def _four_dead_channels() -> torch.nn.Module:
    torch.manual_seed(0)
    model = digits_cnn()
    with torch.no_grad():
        model.features[1].weight[:4] = 0                      # four dead channels
    return model


def test_nr_ip_regrows_the_dead_channels_in_place_at_the_same_widths():
    model = _four_dead_channels()
    before = sum(p.numel() for p in model.parameters())
    recipe = Recipe(**{**FAST, "lr": 1e-4}, threshold=1.0, check_every=1)
    _, result = train(model, _few_digits(), "nr-ip", recipe, progress=False)
    event, = result.events
    assert event.scheme == "nr" and event.alpha == 1 and event.widths_alive["features.0"] == 12
    assert event.widths_after == event.widths_before
    assert result.params == event.cost_after == event.cost_before == before and result.epochs == 2
    new = event.surgery.index_maps["features.1.weight"][0][1]
    assert (new[:12] >= 4).all() and (new[12:] == -1).all()     # survivors first, 4 fresh channels


def test_nr_prune_prunes_at_the_event_and_reallocates_nothing():
    recipe = Recipe(**{**FAST, "lr": 1e-4}, threshold=1.0, check_every=1)
    _, result = train(_four_dead_channels(), _few_digits(), "nr-prune", recipe, progress=False)
    event, = result.events
    assert event.scheme == "prune" and event.alpha == 1 and event.widths_after["features.0"] == 12
    assert result.params == event.cost_after < event.cost_before and result.epochs == 2


def test_nr_fs_reinitialises_the_found_architecture_and_its_optimizer_state():
    from fxsurgeon.experiments.methods import FromScratch
    from fxsurgeon.experiments.state import Run
    torch.manual_seed(0)
    model = dead_digits_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    how = FromScratch(Recipe(threshold=1.0))
    nr = how.wrapper(model, torch.zeros(1, 1, 8, 8), opt, 1)
    x, y = next(iter(torch.utils.data.DataLoader(load_data("digits").train, 64)))
    for _ in range(3):
        torch.nn.functional.cross_entropy(nr.model(x), y).backward()
        nr.step()
    run = Run(epoch=1, start=None, length=1)
    how.after_epoch(nr, run, 0)                    # the check fires the event; the search ends
    assert len(nr.events) == 1 and run.start == 1 and not opt.state
    norms = [m for m in nr.model.network.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in norms)


def test_demp_death_set_from_the_latest_training_batches():
    from fxsurgeon.experiments.methods import RecentBatches
    recent = RecentBatches(2)
    for i in range(3):
        recent.add(torch.full((1,), float(i)))
    assert [b[0].item() for b, in recent] == [1, 2] and list(recent) == list(recent)
    torch.manual_seed(0)
    recipe = Recipe(**{**FAST, "epochs": 2}, demp_reg=0.5, death_set="train", death_samples=64)
    net, result = train(digits_cnn(), load_data("digits"), "demp", recipe, progress=False)
    assert result.events and result.history[-1]["sparsity"] > 0.05


def _folder(path):
    path.mkdir()
    return path


def test_equal_epochs_give_the_baseline_nr_s_search_and_schedule(tmp_path):
    from fxsurgeon.experiments.runs import Runs, prepare, run
    recipe = Recipe(**{**FAST, "batch_size": 128, "epochs": 3}, threshold=1.0)     # equal by default
    runs = Runs("helpers.models:dead_digits_cnn", "digits", ["baseline", "nr"], [0], recipe, smoke=True)
    results = run(runs, prepare(runs), _folder(tmp_path / "equal"), progress=False)
    assert [(r.method, r.epochs) for r in results] == [("baseline", 4), ("nr", 4)]   # NR: search + 3
    unequal = Runs("helpers.models:dead_digits_cnn", "digits", ["baseline", "nr"], [0],
                   replace(recipe, equal_epochs=False),
                   smoke=True)
    results = run(unequal, prepare(unequal), _folder(tmp_path / "unequal"), progress=False)
    assert [(r.method, r.epochs) for r in results] == [("baseline", 3), ("nr", 4)]
    alone = Runs("zoo:digits_cnn", "digits", ["baseline"], [0], recipe, smoke=True)
    assert [r.epochs for r in run(alone, prepare(alone), _folder(tmp_path / "alone"), progress=False)] == [3]


def test_smoke_runs_a_paper_config_on_the_stand_in_and_compares_with_the_paper(tmp_path, capsys):
    assert main(["train", "--config", "paper:vgg19-cifar10", "--smoke", "--device", "cpu", "--quiet",
                 "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("smoke run on the stand-in zoo:digits_cnn with digits: no CIFAR-10 archive")
    assert "paper: Table 4, VGG-19, CIFAR-10, NR-CR at half the parameters" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[out.splitlines().index(
        "paper: Table 4, VGG-19, CIFAR-10, NR-CR at half the parameters") + 2:][:2]}
    assert rows["baseline"][-2:] == ["5.44", "%"] and rows["nr-cr"][-2:] == ["4.19", "%"]


def test_table5_smoke_runs_events_until_the_search_ends(tmp_path, capsys):
    """A quarter of the model dead: the first check's event removes it and regrows; no
    later check finds anything dead, and the search still runs its 3 epochs."""
    assert main(["train", "helpers.models:dead_digits_cnn", "--data", "digits", "--config",
                 "paper:vgg19-cifar10-table5", "--smoke", "--device", "cpu", "--quiet",
                 "--threshold", "1", "--search-epochs", "3", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "paper: Table 5" in out
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    nr = next(r for r in results if r["method"] == "nr-cr")
    assert len(nr["events"]) == 1 and nr["epochs"] == 5       # the search's 3 epochs, then 2
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first = next(h for h in history if h.get("method") == "nr-cr" and "accuracy" in h)
    assert nr["events"][0]["accuracy"] == first["accuracy"]        # the event's epoch's
    table = out[out.index("per event"):].splitlines()[2:]
    rows = [line.split() for line in table[:5]]
    assert [r[0] for r in rows] == ["1", "2", "3", "4", "5"]
    assert rows[0][1] == f"{100 * (1 - first['accuracy']):.2f}" and rows[0][-2:] == ["4.19", "%"]
    assert rows[1][1:4] == ["no", "such", "event"] and rows[4][-2:] == ["3.62", "%"]


@pytest.mark.parametrize("flag, recorded", [("paper", "paper"), ("layer", "layer"), ("gamma0", "gamma0"),
                                            ("none", False)])
def test_every_rescaling_goal_is_reachable_from_the_command_line(tmp_path, flag, recorded):
    assert main(["train", "--config", "paper:vgg19-cifar10", "--smoke", "--device", "cpu", "--quiet",
                 "--method", "nr-cr", "--rescale", flag, "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "run.json").read_text())["recipe"]["rescale"] == recorded


def test_the_paper_configs_use_the_papers_rescaling_and_a_bad_goal_is_refused():
    from fxsurgeon.experiments.runs import load_config
    assert load_config("paper:resnet50-imagenet")["recipe"]["rescale"] == "paper"
    assert Recipe(rescale="gamma0").rescale == "gamma0"
    with pytest.raises(fxs.FxSurgeonError, match="rescale must be true, false or one of layer, gamma0"):
        Recipe(rescale="sideways")
    assert main(["train", "zoo:digits_cnn", "--data", "digits", "--rescale", "sideways"]) == 2


def _train_process(out, *extra) -> subprocess.Popen:
    """``fxsurgeon train`` of :data:`RUN` in a fresh process, on one thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "fxsurgeon", *RUN, "--device", "cpu", "--out", str(out),
                             *extra], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _records(path) -> list[dict]:
    """Each (method, epoch)'s last record: an epoch killed between its log line and its
    checkpoint runs again after the resume and is logged again (docs/training.md)."""
    last = {(r["method"], r["epoch"]): r for r in _without_seconds(path) if "accuracy" in r} \
        if path.exists() else {}
    return list(last.values())


@pytest.mark.parametrize("killed_after", [1, 3])
def test_a_run_killed_with_sigkill_resumes_to_the_same_results(tmp_path, killed_after):
    """SIGKILL once ``killed_after`` epochs are logged (wherever the run is by then: the
    kill lands at a point the test does not choose), then ``--resume``: the same epochs,
    metrics and results as a run never killed (both in fresh one-thread processes; the
    numbers compared to a tolerance, as across processes they need not agree to the bit)."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert _train_process(straight).wait() == 0
    run = _train_process(killed)
    while len(_records(killed / "metrics.jsonl")) < killed_after and run.poll() is None:
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait()
    resumed = _train_process(killed, "--resume")
    assert resumed.wait() == 0, resumed.stderr.read().decode()
    got, want = _records(killed / "metrics.jsonl"), _records(straight / "metrics.jsonl")
    logged = sum("accuracy" in r for r in _without_seconds(killed / "metrics.jsonl"))
    assert logged <= len(want) + 1          # it continued: at most the killed epoch ran twice
    assert [(r["method"], r["epoch"]) for r in got] == [(r["method"], r["epoch"]) for r in want]
    for a, b in zip(got, want, strict=True):
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-9)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
