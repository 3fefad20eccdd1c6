"""Output folders: avsr marks what it writes and `--overwrite` deletes nothing else."""

import json
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


# ---------------------------------------------------------------- the one rule for outputs
def test_an_output_is_never_an_input_nor_in_one_nor_in_a_checkpoint(tmp_path):
    from avsr.io import UnsafeOutput, check_output

    talk = tmp_path / "talk.mp4"
    talk.write_bytes(b"my recording")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "trainable.safetensors").write_bytes(b"weights")
    for out, inputs, words in ((talk, [talk], "it is "), (tmp_path / "x.txt", [tmp_path], "it is inside"),
                               (ckpt / "config.json", [], "inside the checkpoint"),
                               (ckpt / "new" / "t.txt", [], "inside the checkpoint")):
        with pytest.raises(UnsafeOutput, match=words):
            check_output(out, "transcribe", inputs=inputs, replace=True)
    assert talk.read_bytes() == b"my recording" and sorted(p.name for p in ckpt.iterdir()) == ["trainable.safetensors"]


def test_an_existing_output_is_replaced_with_the_flag_and_only_when_this_command_wrote_it(tmp_path):
    from avsr.io import UnsafeOutput, check_output, claimed_file

    out = tmp_path / "new" / "t.txt"
    check_output(out, "transcribe")
    with claimed_file(out, "transcribe") as tmp:  # avsr made new/: its marker records t.txt
        tmp.write_text("one")
    with pytest.raises(UnsafeOutput, match="pass --overwrite to replace it"):
        check_output(out, "transcribe")
    check_output(out, "transcribe", replace=True)
    with pytest.raises(UnsafeOutput, match="avsr transcribe wrote it"):  # another command's output
        check_output(out, "contact-sheet", replace=True)
    mine = tmp_path / "t.txt"  # a folder avsr did not make: no record, so never replaced
    mine.write_text("my notes")
    with pytest.raises(UnsafeOutput, match="only in folders it made"):
        check_output(mine, "transcribe", replace=True)
    (tmp_path / "new" / "user.txt").write_text("mine")  # in avsr's folder, but not recorded
    with pytest.raises(UnsafeOutput, match="it is not in"):
        check_output(tmp_path / "new" / "user.txt", "transcribe", replace=True)
    assert out.read_text() == "one" and mine.read_text() == "my notes"


@pytest.mark.parametrize("target", ["/", "~", ".", ".."])
def test_root_home_and_working_folder_are_never_output_folders(target, tmp_path, monkeypatch):
    from avsr.io import UnsafeOutput, check_output_folder

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsafeOutput, match="root, home or working folder"):
        check_output_folder(target, "eval", ("report.md",))


def test_an_output_folder_is_new_empty_or_made_by_avsr(tmp_path):
    from avsr.io import UnsafeOutput, check_output_folder

    mine = tmp_path / "mine"
    mine.mkdir()
    check_output_folder(mine, "eval", ("report.md",))  # empty: fine
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(UnsafeOutput, match="not written by avsr"):
        check_output_folder(mine, "eval", ("report.md",))
    run = claim_folder(tmp_path / "run", "quickstart", ("report.md",))
    (run / "report.md").write_text("the quickstart's")
    check_output_folder(run, "eval", ("rate_grid.md",))  # a new entry in another command's folder
    with pytest.raises(UnsafeOutput, match="avsr quickstart wrote it"):
        check_output_folder(run, "eval", ("report.md",), replace=True)
    claim_folder(run, "eval", ("rate_grid.md",))
    assert json.loads((run / RUN_MARKER).read_text()) == {
        "written_by": "avsr quickstart", "entries": ["rate_grid.md", "report.md"], "owners": {"rate_grid.md": "avsr eval"}}
    (run / "rate_grid.md").write_text("eval's")
    check_output_folder(run, "eval", ("rate_grid.md",), replace=True)


def test_a_name_too_long_is_refused_before_any_writing(tmp_path):
    from avsr.io import UnsafeOutput, check_output, check_output_folder

    check_output(tmp_path / ("a" * 200), "transcribe")
    for name in ("a" * 240, "é" * 120):  # bytes count, not characters
        with pytest.raises(UnsafeOutput, match="name too long for the file system"):
            check_output(tmp_path / name / "t.txt", "transcribe")
        with pytest.raises(UnsafeOutput, match="name too long for the file system"):
            check_output_folder(tmp_path / "out", "preprocess", (f"{name}.mp4",))
    assert list(tmp_path.iterdir()) == []


def test_file_system_errors_while_writing_are_named(tmp_path):
    import errno

    from avsr.io import atomic_file, fs_errors_named

    target = tmp_path / "t.txt"
    with pytest.raises(AvsrError, match=f"cannot write {target}: No space left on device"):
        with atomic_file(target) as tmp:
            tmp.write_text("half")
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone, nothing looks written
    with pytest.raises(AvsrError, match=f"cannot write {target}: Read-only file system"):
        with fs_errors_named(target):
            raise RuntimeError("Error while serializing: I/O error: Read-only file system (os error 30)")
    with pytest.raises(FileNotFoundError):  # not a file-system condition of the output: a bug keeps its traceback
        with fs_errors_named(target):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory")


def test_removal_never_takes_an_input_with_it(tmp_path):
    run = claim_folder(tmp_path / "run", "quickstart", ("fortunes.txt",))
    (run / "fortunes.txt").write_text("the --text of this very run")
    with pytest.raises(UnsafeRemoval, match="an input of this command"):
        remove_written(run, inputs=(run / "fortunes.txt",))
    assert (run / "fortunes.txt").is_file()
