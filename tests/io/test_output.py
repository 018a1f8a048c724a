"""cai_aug.io.output.OutputFolder: atomic records, resumption, skipped inputs."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest

from cai_aug.io import images as images_module
from cai_aug.io.output import MANIFEST, RUN, SKIPPED, OutputFolder, key_stem, output_stem

IMAGE = np.full((16, 16, 3), 100, np.uint8)
MASK = np.eye(16, dtype=bool)


def _record(key: str, index: int) -> dict:
    stem = output_stem(key, index)
    return {"image": f"images/{stem}.png", "mask": f"masks/{stem}_mask.png", "normal": key, "index": index}


def _lines(folder, name=MANIFEST):
    return (folder / name).read_text().splitlines()


def test_output_stem_flattens_folders_and_tags_synthesisers():
    assert output_stem("sub/a b.png", 3) == "sub__a b_003"
    assert output_stem("a.png", 0, "cdm") == "a_cdm000"
    assert output_stem("a.jpg", 1) == "a.jpg_001"


# keys whose readable forms meet: a suffix dropped, "/" and "__", outer "_", a name ending like a digest
COLLIDING = [
    "a.png",
    "a.jpg",
    "a",
    "a.png.png",
    "sub/b.png",
    "sub__b.png",
    "sub_/b.png",
    "sub/_b.png",
    "x-0123456789.png",
    "x.png",
    ".hidden.png",
    "_.png",
]


def test_stems_of_different_keys_never_meet():
    stems = [key_stem(key) for key in COLLIDING]
    assert len(set(stems)) == len(stems), stems


def test_stems_of_odd_keys_are_short_plain_file_names():
    odd = ["x" * 250 + ".png", "d/" * 100 + "e.png", "bad\udcffbyte.png", "new\nline.png", "é" * 200 + ".png"]
    for key in odd:
        stem = key_stem(key)
        name = f".{output_stem(key, 999_999, 'cdm')}_mask.png.tmp"
        assert len(name.encode("utf-8")) <= 255, key
        assert stem.isprintable() and not stem.startswith(".") and "/" not in stem
        stem.encode("utf-8")  # valid UTF-8, whatever the input name's bytes
    assert len({key_stem(key) for key in odd}) == len(odd)
    assert key_stem("x" * 300 + "1.png") != key_stem("x" * 300 + "2.png")  # the same readable prefix


def test_add_writes_both_files_then_one_manifest_line_once(tmp_path):
    output = OutputFolder(tmp_path)
    assert output.add(_record("a.png", 0), IMAGE, MASK)
    assert not output.add(_record("a.png", 0), IMAGE, MASK)  # already recorded: nothing written
    assert (tmp_path / "images" / "a_000.png").is_file() and (tmp_path / "masks" / "a_000_mask.png").is_file()
    assert [json.loads(line)["normal"] for line in _lines(tmp_path)] == ["a.png"]


def test_a_record_without_its_files_is_refused(tmp_path):
    output = OutputFolder(tmp_path)
    with pytest.raises(FileNotFoundError, match="must be reachable by every worker"):
        output.add(_record("a.png", 0))
    assert (tmp_path / MANIFEST).read_text() == ""


def test_a_used_folder_needs_resume(tmp_path):
    OutputFolder(tmp_path).add(_record("a.png", 0), IMAGE, MASK)
    with pytest.raises(FileExistsError, match="already holds a run"):
        OutputFolder(tmp_path)


def test_resume_keeps_complete_records_and_clears_what_a_kill_left(tmp_path):
    output = OutputFolder(tmp_path)
    for index in range(3):
        output.add(_record("a.png", index), IMAGE, MASK)
    (tmp_path / "images" / "a_001.png").unlink()  # a recorded file lost
    with (tmp_path / MANIFEST).open("a") as handle:
        handle.write('{"image": "images/a_0')  # a line cut by a kill
    (tmp_path / "images" / ".a_003.png.tmp").write_bytes(b"partial")
    resumed = OutputFolder(tmp_path, resume=True)
    assert resumed.done == {"a.png": {0, 2}}
    assert [json.loads(line)["index"] for line in _lines(tmp_path)] == [0, 2]
    assert not list((tmp_path / "images").glob(".*.tmp"))


def test_skipped_inputs_are_listed_once_in_key_order_and_survive_resume(tmp_path):
    output = OutputFolder(tmp_path)
    output.skip("z.png", "empty file")
    output.skip("a.png", "truncated")
    output.skip("z.png", "empty file")
    assert [json.loads(line) for line in _lines(tmp_path, SKIPPED)] == [
        {"normal": "a.png", "reason": "truncated"},
        {"normal": "z.png", "reason": "empty file"},
    ]
    resumed = OutputFolder(tmp_path, resume=True)
    assert resumed.skipped == {"a.png": "truncated", "z.png": "empty file"}
    resumed.unskip("a.png")
    resumed.unskip("z.png")
    assert not (tmp_path / SKIPPED).exists()


def test_a_full_disk_records_nothing_and_leaves_no_partial_file(tmp_path, monkeypatch):
    output = OutputFolder(tmp_path)
    output.add(_record("a.png", 0), IMAGE, MASK)
    before = (tmp_path / MANIFEST).read_bytes()
    real_write = os.write

    def half_then_full(descriptor, data):
        # the manifest line is the only small write: take part of it, as a filling disk does
        if len(data) < 200:
            return real_write(descriptor, bytes(data)[:10])
        return real_write(descriptor, data)

    monkeypatch.setattr(images_module.os, "write", half_then_full)
    with pytest.raises(OSError, match="cannot write .*manifest.jsonl") as caught:
        output.add(_record("b.png", 0), IMAGE, MASK)
    assert caught.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert (tmp_path / MANIFEST).read_bytes() == before  # the partial line was cut back
    assert output.done == {"a.png": {0}}


def test_sort_manifest_puts_records_in_input_order(tmp_path):
    output = OutputFolder(tmp_path)
    for key, index in (("b.png", 1), ("a.png", 0), ("b.png", 0)):
        output.add(_record(key, index), IMAGE, MASK)
    output.sort_manifest(["b.png", "a.png"])
    assert [(r["normal"], r["index"]) for r in output.records()] == [("b.png", 0), ("b.png", 1), ("a.png", 0)]


def test_preview_of_an_empty_run(tmp_path):
    output = OutputFolder(tmp_path)
    assert output.write_preview(missing_ok=True) is None
    with pytest.raises(ValueError, match="no pseudo anomalies"):
        output.write_preview()


def test_an_output_path_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        OutputFolder(tmp_path / "out")


def test_a_resume_with_other_settings_is_refused_naming_each_difference(tmp_path):
    OutputFolder(tmp_path, run={"seed": 1, "mode": "both", "inputs": "2 images"}).add(_record("a.png", 0), IMAGE, MASK)
    with pytest.raises(ValueError, match=r'seed 2 \(the run: 1\); mode "mixed" \(the run: "both"\)') as caught:
        OutputFolder(tmp_path, resume=True, run={"seed": 2, "mode": "mixed", "inputs": "2 images"})
    assert "inputs" not in str(caught.value)
    assert OutputFolder(tmp_path, resume=True, run={"seed": 1, "mode": "both", "inputs": "2 images"}).done == {
        "a.png": {0}
    }


def test_a_folder_where_a_run_started_needs_resume_even_without_records(tmp_path):
    OutputFolder(tmp_path, run={"seed": 1})  # killed before its first record
    assert json.loads((tmp_path / RUN).read_text()) == {"seed": 1}
    with pytest.raises(FileExistsError, match="already holds a run"):
        OutputFolder(tmp_path, run={"seed": 1})
    assert OutputFolder(tmp_path, resume=True, run={"seed": 1}).done == {}


def test_a_run_of_an_older_release_without_a_new_option_is_refused_saying_so(tmp_path):
    # a run.json written before the option existed: the run was made with that release's behaviour
    OutputFolder(tmp_path, run={"seed": 1, "old": 3}).add(_record("a.png", 0), IMAGE, MASK)
    with pytest.raises(ValueError) as caught:
        OutputFolder(tmp_path, resume=True, run={"seed": 1, "overlap": "stack"})
    message = str(caught.value)
    assert 'overlap "stack" (the run predates this option)' in message
    assert "old (the run: 3; this release has no such setting)" in message


def test_records_without_the_settings_that_made_them_cannot_be_resumed_as_a_checked_run(tmp_path):
    OutputFolder(tmp_path).add(_record("a.png", 0), IMAGE, MASK)
    with pytest.raises(ValueError, match="not the settings that made them"):
        OutputFolder(tmp_path, resume=True, run={"seed": 1})
