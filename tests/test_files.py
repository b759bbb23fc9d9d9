"""`spacy_ita.files`: outputs written whole or not at all."""
import os

import pytest
import srsly

from spacy_ita import files
from spacy_ita.files import recover_directory, replace_directory, replace_file, replace_json


def test_replace_file_writes_text_and_bytes_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "out.txt"
    replace_file(path, "Zürich ✓")
    assert path.read_bytes() == "Zürich ✓".encode("utf8")
    replace_file(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_replace_file_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    replace_json(path, {"ents_f": 0.5})

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        replace_file(path, "new")
    assert srsly.read_json(path) == {"ents_f": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_replace_json_is_readable_json_with_a_final_newline(tmp_path):
    path = tmp_path / "metrics.json"
    replace_json(path, {"views": {"cross": {"ents_f": 0.25}}})
    assert srsly.read_json(path) == {"views": {"cross": {"ents_f": 0.25}}}
    assert path.read_text(encoding="utf8").endswith("}\n")


def write_folder(text):
    def write(path):
        path.mkdir()
        (path / "file").write_text(text)
    return write


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_replace_directory_swaps_in_the_new_folder(tmp_path, monkeypatch, exchange):
    exchanged = []
    if exchange:
        if files._renameat2 is None:
            pytest.skip("no renameat2 here")
        real = files._exchange
        monkeypatch.setattr(files, "_exchange", lambda a, b: exchanged.append(real(a, b))
                            or exchanged[-1])
    else:
        monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    target = tmp_path / "model-last"
    replace_directory(target, write_folder("old"))
    replace_directory(target, write_folder("new"))
    assert (target / "file").read_text() == "new"
    assert [path.name for path in tmp_path.iterdir()] == ["model-last"]
    assert exchanged == ([True] if exchange else [])


def test_replace_directory_keeps_the_old_folder_when_writing_fails(tmp_path):
    target = tmp_path / "model-last"
    replace_directory(target, write_folder("old"))

    def half_written(path):
        write_folder("half")(path)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_directory(target, half_written)
    assert (target / "file").read_text() == "old"
    assert [path.name for path in tmp_path.iterdir()] == ["model-last"]


@pytest.mark.parametrize("left, kept", [
    ({".model-best.tmp-a1/old": "old", ".model-best.tmp-a1/new": "new, half"}, "old"),
    ({"model-best": "whole", ".model-best.tmp-b2/new": "half", ".model-best.tmp-c3/old": "older"},
     "whole"),
], ids=["moved-aside", "beside-a-whole-folder"])
def test_recover_directory_keeps_the_one_whole_folder(tmp_path, left, kept):
    """A kill between the two renames of the fallback leaves the old folder
    in its holder and no target: it is put back. Holders beside a whole
    folder are dropped."""
    for name, text in left.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        write_folder(text)(tmp_path / name)
    recover_directory(tmp_path / "model-best")
    assert (tmp_path / "model-best" / "file").read_text() == kept
    assert [path.name for path in tmp_path.iterdir()] == ["model-best"]


def test_replace_and_recover_directory_leave_a_folder_of_a_like_name_alone(tmp_path):
    """A user's `.model-best.tmp-<pid>` (the temporary name of old) is
    neither written into nor removed, by the swap or by the recovery."""
    target = tmp_path / "model-best"
    mine = tmp_path / f".model-best.tmp-{os.getpid()}"
    write_folder("mine")(mine)
    replace_directory(target, write_folder("new"))
    replace_directory(target, write_folder("newer"))
    recover_directory(target)
    assert (mine / "file").read_text() == "mine"
    assert (target / "file").read_text() == "newer"
    assert sorted(path.name for path in tmp_path.iterdir()) == [mine.name, "model-best"]


def test_recover_directory_of_a_missing_folder_does_nothing(tmp_path):
    recover_directory(tmp_path / "nowhere" / "model-best")
    assert list(tmp_path.iterdir()) == []


def test_replace_file_keeps_the_file_s_permissions_and_gives_a_new_one_the_umask_s(tmp_path):
    private = tmp_path / "metrics.json"
    private.write_text("{}")
    private.chmod(0o600)
    replace_file(private, "{}")
    assert private.stat().st_mode & 0o777 == 0o600
    umask = os.umask(0o022)
    os.umask(umask)
    replace_file(tmp_path / "new.json", "{}")
    assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_replace_file_through_a_symlink_replaces_its_target(tmp_path):
    """`corpus/train.spacy -> /data/train.spacy`: the link stays and the data
    it points at is the new one (the link was replaced by a plain file)."""
    target = tmp_path / "data" / "train.spacy"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "train.spacy"
    link.symlink_to(target)
    replace_file(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["train.spacy"]


def test_replace_file_never_writes_into_a_file_or_link_already_at_a_temporary_name(tmp_path):
    """The temporary name was `.NAME.tmp-<pid>`, opened without O_EXCL: a link
    placed there had the data written through it onto another file, then
    became OUTPUT; a user's file of that name was truncated and deleted."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    path = tmp_path / "out.spacy"
    (tmp_path / f".out.spacy.tmp-{os.getpid()}").symlink_to(victim)
    (tmp_path / ".out.spacy.tmp-1").write_text("a user's file")
    replace_file(path, "data")
    assert victim.read_text() == "keep" and not path.is_symlink() and path.read_text() == "data"
    assert (tmp_path / ".out.spacy.tmp-1").read_text() == "a user's file"


def test_replace_file_syncs_the_folder_after_the_rename(tmp_path, monkeypatch):
    """Without it a power cut can undo the rename: the old file, or none, comes back."""
    synced = []
    monkeypatch.setattr(files, "_sync_dir", lambda folder: synced.append(folder))
    replace_file(tmp_path / "out.json", "{}")
    assert synced == [tmp_path.resolve()]
