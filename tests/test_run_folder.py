"""The run folder of ``fxsurgeon train``: never written through a symbolic link."""
import json
import shutil

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
                                  "checkpoints/baseline-seed0.pt", "checkpoints"])
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
