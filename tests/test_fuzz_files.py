"""Damaged files: NR and DemP checkpoints and saved rewritten models, truncated, with
flipped bytes, missing or extra keys, or values of the wrong type. Every outcome is an
FxSurgeonError or a correct load: what was loaded is what the file holds, and it runs."""
import atexit
import contextlib
import copy
import functools
import math
import os
import resource
import shutil
import tempfile
import threading
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fxsurgeon as fxs
from helpers.training import kill_half, kill_relu_units, saved_surgery
from randomnets import examples
from wrapped import batch, resumable_run, small_net, train_step

SCRATCH = Path(tempfile.mkdtemp(prefix="fxs-fuzz-"))
atexit.register(shutil.rmtree, SCRATCH, ignore_errors=True)
DEATH_SET = [batch(100)]
#: values that stand where a value of another kind was
JUNK = ["fuzz", 1.5, -1, True, None, [], {}, torch.zeros(2)]


def _nr(model, example, opt):
    return fxs.NeuralRejuvenation(model, example, opt, threshold=0.9, check_every=4, scheme="cr")


def _demp(model, example, opt):
    return fxs.DemP(model, example, opt, DEATH_SET, total_steps=6, prune_every=3, noise_peak=1e-2, seed=7)


WRAPPERS = {"nr": (_nr, kill_half), "demp": (_demp, lambda w: kill_relu_units(w.model.network))}


@functools.cache
def original(kind: str) -> bytes:
    """A file of each kind: wrapper checkpoints after their first surgery, and a saved
    pruned digits_cnn that names its model."""
    path = SCRATCH / f"{kind}.pt"
    if kind == "pruned":
        saved_surgery(SCRATCH, spec="zoo:digits_cnn")[0].rename(path)
    else:
        make, before_step_2 = WRAPPERS[kind]
        resumable_run(make, 6, path, 6, before_step_2=before_step_2)
    return path.read_bytes()


def _paths(value, prefix=()):
    """Every place in a nested structure of dicts and lists."""
    yield prefix
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, sub in items:
        yield from _paths(sub, (*prefix, key))


def _same_kind(a, b) -> bool:
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and a.shape == b.shape
    def number(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool)
    return type(a) is type(b) or number(a) and number(b)


def _mutate(data: dict, how: str, path: tuple, pick: int) -> dict:
    """``data`` with the value at ``path`` dropped, given an extra key, or replaced by junk
    of another kind."""
    data = copy.deepcopy(data)
    if how == "add" or not path:             # to the innermost dict on the path
        target = node = data
        for key in path:
            node = node[key]
            target = node if isinstance(node, dict) else target
        target["fuzz_extra"] = pick
        return data
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if how == "drop":
        del parent[path[-1]]
    else:
        wrong = [j for j in JUNK if not _same_kind(j, parent[path[-1]])]
        parent[path[-1]] = copy.deepcopy(wrong[pick % len(wrong)])
    return data


def damaged(kind: str):
    """A strategy: the bytes of a file of ``kind``, damaged one way."""
    raw = original(kind)
    paths = list(_paths(torch.load(SCRATCH / f"{kind}.pt", weights_only=True)))
    structural = st.builds(lambda how, path, pick: ("structure", how, path, pick),
                           st.sampled_from(["drop", "add", "replace"]), st.sampled_from(paths),
                           st.integers(0, len(JUNK)))
    in_bytes = st.builds(lambda how, at, mask: (how, at % len(raw), mask),
                         st.sampled_from(["truncate", "flip"]), st.integers(0, 2 ** 32), st.integers(1, 255))
    return st.one_of(structural, in_bytes)


def write(kind: str, damage: tuple) -> Path:
    path = SCRATCH / f"damaged-{kind}.pt"
    raw = original(kind)
    if damage[0] == "structure":
        torch.save(_mutate(torch.load(SCRATCH / f"{kind}.pt", weights_only=True), *damage[1:]), path)
    elif damage[0] == "truncate":
        path.write_bytes(raw[:damage[1]])
    else:
        flipped = bytearray(raw)
        flipped[damage[1]] ^= damage[2]
        path.write_bytes(bytes(flipped))
    return path


def _same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def held(kind: str, damage: tuple, path: Path) -> dict:
    """What a correct load holds: what the file says after a structural change; after
    damaged bytes, the original, since a checksum must catch any change."""
    return torch.load(path if damage[0] == "structure" else SCRATCH / f"{kind}.pt", weights_only=True)


FUZZ = settings(max_examples=examples(25), deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(st.sampled_from(sorted(WRAPPERS)).flatmap(lambda kind: st.tuples(st.just(kind), damaged(kind))))
def test_a_damaged_checkpoint_resumes_correctly_or_is_an_error(case):
    kind, damage = case
    path = write(kind, damage)
    model = small_net()
    wrapper = WRAPPERS[kind][0](model, batch()[0][:1], torch.optim.SGD(model.parameters(), lr=0.05,
                                                                        momentum=0.9, weight_decay=1e-4))
    try:
        wrapper.load(path)
    except fxs.FxSurgeonError:
        return
    data = held(kind, damage, path)
    assert _same_tensors(wrapper.model.network.state_dict(), data["model"])
    assert wrapper.steps == data["steps"] and len(wrapper.history) == len(data["history"])
    train_step(wrapper, 7)                                     # and training goes on


@FUZZ
@given(damaged("pruned"))
def test_a_damaged_saved_model_loads_correctly_or_is_an_error(damage):
    path = write("pruned", damage)
    try:
        net = fxs.load(path)
    except fxs.FxSurgeonError:
        return
    assert _same_tensors(net.state_dict(), held("pruned", damage, path)["state_dict"]) and not net.training
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 10)


# ---- hostile numbers: sizes that would allocate gigabytes, refused before anything is built ----

@contextlib.contextmanager
def at_most(extra: int):
    """The address space capped at what the process maps now plus ``extra`` bytes: an
    allocation past it fails at once instead of swapping the machine (were a check broken)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    now = int(Path("/proc/self/statm").read_text().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (now + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _grown(data: dict, alpha: float) -> None:
    """``data`` (a saved pruned model) claims NR grew it by ``alpha`` (as files from before
    widths were recorded, which replay α)."""
    data["surgery"].update(scheme="nr", alpha=alpha)
    del data["surgery"]["widths"]


def _survivors(data: dict, kept: torch.Tensor) -> None:
    data["surgery"]["survivors"]["features.0"] = kept


#: a saved model's hostile numbers, and what the refusal says
HOSTILE = {
    "classes": (lambda d: d.update(num_classes=30_000_000), "names 30000000 classes: not from 1 to 100,000"),
    "classes it holds no classifier for": (lambda d: d.update(num_classes=50_000),
                                           "no tensor it holds has 50000 rows"),
    "alpha": (lambda d: _grown(d, 2000.0), r"would build a network of 36.36G parameters, more than the \d"),
    "alpha past the planner's": (lambda d: _grown(d, 1e300), r"alpha must be a number from 1 to 1e\+06"),
    "fold shape": (lambda d: d["surgery"]["folds"]["features_3"].update(shape=[10 ** 5, 10 ** 5]),
                   r"the fold at features_3 has the shape \[100000, 100000\]: not a shape of at most"),
    "fold weight": (lambda d: d["surgery"]["folds"]["features_3"].update(weight=[13, 6, -3, 3]),
                    r"the fold at features_3 has the weight \[13, 6, -3, 3\]: not a shape"),
    "stride-0 survivors": (lambda d: _survivors(d, torch.zeros(1, dtype=torch.int64).expand(10 ** 9)),
                           r"a tensor shaped \(1000000000,\) on a storage of 8 bytes"),
    "survivors past the width": (lambda d: _survivors(d, torch.tensor([0, 99])),
                                 "survivors of 'features.0' are not increasing positions in its width 16"),
    "repeated survivors": (lambda d: _survivors(d, torch.tensor([3, 3, 5])), "not increasing positions"),
    "survivors as floats": (lambda d: _survivors(d, torch.arange(4.0)),
                            r"survivors of 'features.0' are torch.float32 shaped \(4,\), not at most 16"),
    "example inputs": (lambda d: d.update(inputs=[{"shape": [1, 4096, 8192], "dtype": "torch.float32"}] * 3),
                       "example inputs have more than 67,108,864 elements together"),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_sizes_in_a_saved_model_are_refused_before_they_are_allocated(name, tmp_path):
    change, message = HOSTILE[name]
    original("pruned")
    data = torch.load(SCRATCH / "pruned.pt", weights_only=True)
    change(data)
    torch.save(data, tmp_path / "hostile.pt")
    with at_most(2 ** 30), pytest.raises(fxs.FxSurgeonError, match=message):
        fxs.load(tmp_path / "hostile.pt")


def test_a_checkpoints_history_builds_no_network_larger_than_its_file_justifies(tmp_path):
    original("nr")
    data = torch.load(SCRATCH / "nr.pt", weights_only=True)
    data["history"][0]["alpha"] = 2000.0                 # its event, replayed by α alone
    del data["history"][0]["widths"]
    torch.save(data, tmp_path / "hostile.pt")
    model = small_net()
    nr = _nr(model, batch()[0][:1], torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9,
                                                     weight_decay=1e-4))
    refused = r"cannot resume from .*: it does not fit this NeuralRejuvenation: its surgery would build a " \
              r"network of [\d.]+M parameters, more than the [\d.]+K that the model and the file justify"
    with at_most(2 ** 30), pytest.raises(fxs.FxSurgeonError, match=refused):
        nr.load(tmp_path / "hostile.pt")


def test_a_zip_bomb_is_refused_before_it_is_inflated(tmp_path):
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive, \
            archive.open("archive/data.pkl", "w", force_zip64=True) as f:
        for _ in range(4):
            f.write(bytes(2 ** 24))                         # 64 MiB of zeros in 64 KiB
    with pytest.raises(fxs.FxSurgeonError, match=r"would inflate its [\d,]+ bytes to 67,108,864: not a file"):
        fxs.load(bomb)


@contextlib.contextmanager
def writers(path: Path):
    """After a second, writers open ``path`` (a FIFO) again and again: a read that blocked
    then ends (on an empty file) instead of hanging the tests."""
    stop = threading.Event()

    def write():
        while not stop.wait(1.0):
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:                        # no reader yet
                pass
    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_only_regular_files_are_read(kind, tmp_path):
    from fxsurgeon.experiments.runs import load_config
    path = tmp_path / "file"
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    model = small_net()
    nr = _nr(model, batch()[0][:1], torch.optim.SGD(model.parameters(), lr=0.05))
    with writers(path) if kind == "fifo" else contextlib.nullcontext():
        for read in (fxs.load, nr.load, lambda p: load_config(str(p))):
            with pytest.raises(fxs.FxSurgeonError, match=r"'.*file' is not a regular file \(a folder, FIFO"):
                read(path)


# ---- NaN and infinity: a diverged run's file is refused, naming the tensor ----

@pytest.mark.parametrize("tensor, value, refused", [
    ("features.0.weight", math.nan, "parameter 'features.0.weight' holds NaN"),
    ("classifier.bias", -math.inf, "parameter 'classifier.bias' holds infinity"),
    ("features.1.running_var", math.nan, "buffer 'features.1.running_var' holds NaN"),
    ("features.1.running_mean", math.inf, None),           # a buffer may hold ±inf, as attention masks do
])
def test_a_saved_model_with_nan_or_inf_weights_is_refused(tensor, value, refused, tmp_path):
    original("pruned")
    data = torch.load(SCRATCH / "pruned.pt", weights_only=True)
    data["state_dict"][tensor][0] = value
    torch.save(data, tmp_path / "diverged.pt")
    if refused is None:
        assert fxs.load(tmp_path / "diverged.pt").state_dict()[tensor][0] == value
        return
    with pytest.raises(fxs.FxSurgeonError, match=rf"cannot load .*: its {refused}: a run that diverged\?"):
        fxs.load(tmp_path / "diverged.pt")


def test_a_users_checkpoint_with_nan_weights_is_refused(tmp_path):
    from fxsurgeon.persistence.checkpoint import load_weights
    model = small_net()
    state = model.state_dict()
    state["4.weight"][1] = math.nan
    torch.save({"state_dict": state}, tmp_path / "user.pt")
    with pytest.raises(fxs.FxSurgeonError, match=r"checkpoint .*user.pt.: its parameter '4.weight' holds"):
        load_weights(small_net(), tmp_path / "user.pt")


@pytest.mark.parametrize("kind", sorted(WRAPPERS))
@pytest.mark.parametrize("where", ["model", "optimizer"])
def test_a_checkpoint_with_nan_is_refused_and_changes_nothing(kind, where, tmp_path):
    original(kind)
    data = torch.load(SCRATCH / f"{kind}.pt", weights_only=True)
    if where == "model":
        data["model"]["0.weight"].view(-1)[0] = math.nan
        refused = "parameter '0.weight' holds NaN"
    else:
        next(iter(data["optimizer"]["state"].values()))["momentum_buffer"].view(-1)[0] = math.nan
        refused = r"optimizer state 'momentum_buffer of .*' holds NaN"
    torch.save(data, tmp_path / "diverged.pt")
    model = small_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    wrapper = WRAPPERS[kind][0](model, batch()[0][:1], opt)
    network = wrapper.model.network
    with pytest.raises(fxs.FxSurgeonError, match=rf"cannot resume from .*: its {refused}: a run that"):
        wrapper.load(tmp_path / "diverged.pt")
    assert wrapper.model.network is network and not wrapper.history and not opt.state
    train_step(wrapper)


# ---- numbers that no run of the wrapper makes: refused before any work, naming the field ----

def _set(**changes):
    return lambda data: data.update(changes)


#: a checkpoint changed to numbers its wrapper (as WRAPPERS builds it) never writes, and the refusal
IMPOSSIBLE = [
    ("nr", _set(lam=1e30), r"its lam is 1e\+30, and must be from 0 to delta_lambda times the checks"),
    ("nr", _set(max_events=-1), "its max_events is -1, and must be at least its events"),
    ("nr", _set(max_events=5), "its max_events is 5, and must be .* at most this wrapper's max_events"),
    ("nr", _set(max_events=None), "its max_events is None, and must be"),
    ("nr", _set(failures=99), "its failures is 99, and must be from 0 to MAX_FAILURES"),
    ("nr", _set(wait=-1), "its wait is -1, and must be a number of checks to wait"),
    ("nr", _set(last_utilization=7.5), "its last_utilization is 7.5, and must be a utilization from 0 to 1"),
    ("nr", _set(steps=-5), "its steps is -5, and must be a number of steps"),
    ("nr", _set(events=[]), r"its events is \[\], and must be one per surgery of its history"),
    ("nr", lambda d: d["events"][0].update(alpha=0.5), "its events is .*, each with an alpha a plan makes"),
    ("demp", _set(prunings=[]), r"its prunings is \[\], and must be one per surgery of its history"),
    ("demp", _set(steps=1), r"its prunings is .*, and must be one per surgery of its history, at its steps"),
]


@pytest.mark.parametrize("kind, change, message", IMPOSSIBLE)
def test_a_checkpoint_with_numbers_its_wrapper_never_writes_is_refused(kind, change, message, tmp_path):
    original(kind)
    data = torch.load(SCRATCH / f"{kind}.pt", weights_only=True)
    change(data)
    torch.save(data, tmp_path / "impossible.pt")
    model = small_net()
    wrapper = WRAPPERS[kind][0](model, batch()[0][:1], torch.optim.SGD(model.parameters(), lr=0.05,
                                                                        momentum=0.9, weight_decay=1e-4))
    with pytest.raises(fxs.FxSurgeonError, match=rf"cannot resume from .*: {message}"):
        wrapper.load(tmp_path / "impossible.pt")
    assert not wrapper.history and not wrapper.steps


def test_a_negative_adam_step_is_refused(tmp_path):
    def make():
        model = small_net()
        return _nr(model, batch()[0][:1], torch.optim.Adam(model.parameters(), lr=1e-3))
    nr = make()
    train_step(nr)
    nr.save(tmp_path / "adam.pt")
    data = torch.load(tmp_path / "adam.pt", weights_only=True)
    data["optimizer"]["state"][0]["step"] = torch.tensor(-3.0)       # Adam's bias correction: NaN
    torch.save(data, tmp_path / "adam.pt")
    with pytest.raises(fxs.FxSurgeonError, match="the optimizer state 'step' of parameter 0 holds values "
                                                 "that are not a whole number of steps"):
        make().load(tmp_path / "adam.pt")


def test_a_file_justifies_as_many_parameters_as_it_holds_elements_not_bytes():
    from fxsurgeon.persistence.checkpoint import stored
    weights = torch.zeros(1000)
    data = {"a": weights, "b": [weights[:10], torch.zeros(10, dtype=torch.float64)],
            "c": {"d": weights.view(10, 100)}}
    assert stored(data) == 1010         # each storage once, in elements of its own size
