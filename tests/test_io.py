"""Output folders: avsr marks what it writes and `--overwrite` deletes nothing else."""

from pathlib import Path

import pytest

from avsr.errors import AvsrError
from avsr.io import RUN_MARKER, UnsafeRemoval, check_removable, claim_folder, remove_written


def test_a_folder_avsr_made_is_marked_and_removable(tmp_path):
    run = claim_folder(tmp_path / "run", "train", ("checkpoints", "logs"))
    (run / "checkpoints").mkdir()
    (run / "logs").mkdir()
    (run / "checkpoints" / "w.bin").write_bytes(b"x")
    claim_folder(run, "eval", ("eval",))  # a later command adds what it writes
    (run / "eval").mkdir()
    remove_written(run)
    assert not run.exists()


def test_a_users_folder_is_never_marked_nor_removed(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    claim_folder(mine, "train", ("logs",))  # avsr may write into it ...
    assert not (mine / RUN_MARKER).exists()
    with pytest.raises(UnsafeRemoval, match="not written by avsr"):  # ... but never delete it
        remove_written(mine)
    assert (mine / "thesis.tex").read_text() == "years of work"


def test_a_foreign_file_in_a_marked_folder_stops_the_removal(tmp_path):
    run = claim_folder(tmp_path / "run", "quickstart", ("data",))
    (run / "data").mkdir()
    (run / "notes.txt").write_text("mine")
    with pytest.raises(UnsafeRemoval, match="notes.txt"):
        remove_written(run)
    assert (run / "notes.txt").is_file() and (run / "data").is_dir()


@pytest.mark.parametrize("target", ["", "/", "~", ".", ".."])
def test_root_home_working_folder_and_empty_paths_are_refused(target, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsafeRemoval):
        check_removable(target)


def test_unwritable_output_is_named_before_any_work(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(AvsrError, match="cannot write to output folder .*file"):
        claim_folder(tmp_path / "file" / "run", "train")
    with pytest.raises(AvsrError, match="empty output path"):
        claim_folder("", "train")
