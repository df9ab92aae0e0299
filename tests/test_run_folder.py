"""The run folder of ``fxsurgeon train``: never written through a symbolic link, locked
while a run holds it, cleaned of what killed runs left, made with the user's umask."""
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from fxsurgeon.cli import main
from fxsurgeon.errors import FxSurgeonError
from fxsurgeon.experiments import outdir

RUN = ["train", "zoo:digits_cnn", "--data", "digits", "--epochs", "1", "--search-epochs", "1",
       "--method", "baseline", "--quiet", "--device", "cpu", "--smoke"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run, to copy: resuming it only reads it back."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main([*RUN, "--out", str(out)]) == 0
    return out


@pytest.fixture
def run(finished, tmp_path):
    """A copy of the finished run, in this test's own folder."""
    return shutil.copytree(finished, tmp_path / "run", symlinks=True)


def _contents(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", ["results.json", "metrics.jsonl", "run.json", "training.png",
                                  "checkpoints/baseline-seed0.pt", "checkpoints", outdir.LOCK])
def test_resume_refuses_a_link_inside_the_run_folder_before_any_work(name, run, tmp_path, capsys):
    outside = tmp_path / "outside"
    (run / name).rename(outside)
    (run / name).symlink_to(outside)
    before = _contents(tmp_path)
    capsys.readouterr()
    assert main([*RUN, "--out", str(run), "--resume"]) == 2
    out, err = capsys.readouterr()
    assert repr(str(run / name)) in err and "symbolic link" in err and out == ""
    assert _contents(tmp_path) == before


def test_run_files_are_opened_without_following_a_link(tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text("mine")
    (tmp_path / "results.json").symlink_to(outside)
    for mode in ("w", "a", "wb"):
        with pytest.raises(FxSurgeonError, match="results.json' is a symbolic link"):
            outdir.open_file(tmp_path / "results.json", mode)
    assert outside.read_text() == "mine"


def test_overwrite_through_a_linked_out_keeps_the_link_and_replaces_its_folder(run, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(run)
    assert main([*RUN, "--out", str(link), "--overwrite", "--seeds", "1"]) == 0
    assert link.is_symlink() and link.resolve() == run
    assert [r["seed"] for r in json.loads((run / "results.json").read_text())] == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "run"]      # no sibling left


@pytest.mark.parametrize("make, message", [
    (lambda t: (t / "out").symlink_to(t / "nowhere"), "'{t}/out' is a symbolic link to '{t}/nowhere', "
                                                      "which leads to nothing"),
    (lambda t: (t / "out").symlink_to(t / "out"), "'{t}/out' is a symbolic link to '{t}/out', "
                                                  "which goes round in a loop"),
    (lambda t: (t / "parent").symlink_to(t / "nowhere"), "'{t}/parent/out': '{t}/parent' is a symbolic link "
                                                         "to '{t}/nowhere', which leads to nothing"),
], ids=["dangling", "looping", "dangling-parent"])
def test_a_dangling_or_looping_out_is_a_clear_error(make, message, tmp_path, capsys):
    make(tmp_path)
    out = tmp_path / ("parent/out" if (tmp_path / "parent").is_symlink() else "out")
    for again in ([], ["--overwrite"], ["--resume"]):
        assert main([*RUN, "--out", str(out), *again]) == 2
        assert capsys.readouterr().err == f"fxsurgeon: error: --out {message.format(t=tmp_path)}\n"


def test_a_second_run_on_a_folder_is_refused_while_the_first_holds_it(run, monkeypatch, capsys):
    before = _contents(run)
    with open(run / outdir.LOCK, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main([*RUN, "--out", str(run), "--resume"]) == 2
    assert f"--out {str(run)!r} is in use by another run" in capsys.readouterr().err
    assert _contents(run) == before                             # nothing logged twice

    from fxsurgeon.experiments import runs
    real, seen = runs.run, []

    def run_and_try_the_lock(*args):
        with open(run / outdir.LOCK, "a") as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        seen.append(True)
        return real(*args)
    monkeypatch.setattr(runs, "run", run_and_try_the_lock)
    assert main([*RUN, "--out", str(run), "--resume"]) == 0 and seen         # held while it runs
    with open(run / outdir.LOCK, "a") as after:
        fcntl.flock(after, fcntl.LOCK_EX | fcntl.LOCK_NB)                  # and released after


def test_a_killed_run_leaves_no_stale_lock(run):
    code = (f"import fcntl, os, signal; f = open({str(run / outdir.LOCK)!r}, 'a'); "
            f"fcntl.flock(f, fcntl.LOCK_EX); os.kill(os.getpid(), signal.SIGKILL)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == -signal.SIGKILL
    assert main([*RUN, "--out", str(run), "--resume"]) == 0


def test_the_next_run_removes_what_killed_runs_left(run, tmp_path):
    left = [run / "checkpoints" / ".baseline-seed0.pt.k3x_9q0z", tmp_path / ".run.new-abcd1234",
            tmp_path / ".run.old-wxyz_678"]
    kept = [run / "checkpoints" / "notes.txt", tmp_path / ".run.new-abc", tmp_path / ".other.new-abcd1234",
            tmp_path / ".run.new-abcd1234.new-abcd1234"]
    left[0].write_bytes(b"half a checkpoint")
    for path in left[1:] + kept[1:]:
        path.mkdir()
        (path / "metrics.jsonl").write_text("{}\n")
    kept[0].write_text("mine")
    assert main([*RUN, "--out", str(run), "--resume"]) == 0
    assert not any(p.exists() for p in left)
    assert all(p.exists() for p in kept)


def test_an_overwrite_killed_while_swapping_keeps_the_old_results(run, tmp_path, capsys):
    old = tmp_path / ".run.old-abcd1234"
    old.mkdir()
    run.rename(old / "run")                 # killed between moving the old folder and the new one
    before = _contents(tmp_path)
    assert main([*RUN, "--out", str(run)]) == 2
    assert f"its old results are in {str(old / 'run')!r}: move them back" in capsys.readouterr().err
    assert _contents(tmp_path) == before


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_files_and_folders_follow_the_umask(run, umask_027):
    assert main([*RUN, "--out", str(run), "--overwrite"]) == 0        # a fresh sibling folder
    assert run.stat().st_mode & 0o777 == 0o750
    for name in ("checkpoints/baseline-seed0.pt", "results.json", "metrics.jsonl", outdir.LOCK):
        assert (run / name).stat().st_mode & 0o777 == 0o640, name


def test_a_run_without_matplotlib_is_written_without_plots_and_says_so(tmp_path, monkeypatch, capsys):
    for name in ("matplotlib", "matplotlib.pyplot"):
        monkeypatch.setitem(sys.modules, name, None)
    out = tmp_path / "run"
    assert main([*RUN, "--out", str(out)]) == 0
    assert "matplotlib is not installed: the runs are written without plots" in capsys.readouterr().err
    assert (out / "results.json").is_file() and not list(out.rglob("*.png"))
