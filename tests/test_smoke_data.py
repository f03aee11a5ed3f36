"""Smoke datasets on disk: both layouts, frame order and times, stride, classes, malformed labels."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli
from tests.smoke_fixtures import solid_image, write_yolo_set
from vlmexp.data.smoke import YoloLayout, load_smoke_dataset
from vlmexp.errors import DataError


def _sequence(root, name, frames):
    folder = root / name
    folder.mkdir(parents=True)
    for i, (stem, label) in enumerate(frames):
        solid_image(folder / f"{stem}.png", (32, 24), i)
        if label is not None:
            (folder / f"{stem}.txt").write_text(label)
    return folder


def test_figlib_offsets_order_frames_by_time_not_text(tmp_path):
    # as text "+00060" < "-00030" < "-00120"; by time -120 s, -30 s, 0 s, +60 s
    _sequence(tmp_path, "seq", [("1465065308_+00060", "0 0.5 0.5 0.2 0.2"), ("1465065308_-00120", None),
                                ("1465065308_+00000", "0 0.5 0.5 0.1 0.1"), ("1465065308_-00030", "")])
    frames = load_smoke_dataset(tmp_path)
    assert [f.path.stem for f in frames] == ["1465065308_-00120", "1465065308_-00030", "1465065308_+00000",
                                             "1465065308_+00060"]
    assert [f.time_s for f in frames] == [-120.0, -30.0, 0.0, 60.0]
    assert [f.index for f in frames] == [0, 1, 2, 3]
    assert [f.has_smoke for f in frames] == [False, False, True, True]
    assert frames[3].boxes == [[0.5, 0.5, 0.2, 0.2]]
    assert frames[0].id == "seq/1465065308_-00120.png" and frames[0].sequence == "seq"


def test_without_offsets_on_every_name_frames_go_in_natural_order(tmp_path):
    _sequence(tmp_path, "cam", [("frame10", None), ("frame2", None), ("frame1_+00060", None)])
    frames = load_smoke_dataset(tmp_path)
    assert [f.path.stem for f in frames] == ["frame1_+00060", "frame2", "frame10"]
    assert frames[1].time_s is None


def test_frame_stride_keeps_every_nth_frame_of_each_sequence(tmp_path):
    _sequence(tmp_path, "a", [(f"100_{t:+06d}", None) for t in (-240, -180, -120, -60, 0)])
    _sequence(tmp_path, "b", [(f"f{i}", None) for i in range(1, 5)])
    frames = load_smoke_dataset(tmp_path, frame_stride=2)
    assert [(f.sequence, f.path.stem, f.index) for f in frames] == [
        ("a", "100_-00240", 0), ("a", "100_-00120", 1), ("a", "100_+00000", 2), ("b", "f1", 0), ("b", "f3", 1)]


def test_smoke_classes_pick_which_yolo_classes_are_smoke(tmp_path):
    _sequence(tmp_path, "s", [("f1", "1 0.5 0.5 0.2 0.2\n"), ("f2", "0 0.1 0.1 0.1 0.1\n1 0.5 0.5 0.2 0.2\n\n")])
    assert [f.boxes for f in load_smoke_dataset(tmp_path)] == [[], [[0.1, 0.1, 0.1, 0.1]]]
    both = load_smoke_dataset(tmp_path, smoke_classes=[0, 1])
    assert [len(f.boxes) for f in both] == [1, 2]


def test_yolo_layout_gives_single_images(tmp_path):
    write_yolo_set(tmp_path, [("b2", [0.5, 0.5, 0.2, 0.2]), ("b10", None), ("a1", None)])
    (tmp_path / "labels" / "a1.txt").unlink()  # a missing label file means no smoke too
    frames = load_smoke_dataset(tmp_path, YoloLayout())
    assert [(f.id, f.sequence, f.has_smoke) for f in frames] == [("a1.png", None, False), ("b2.png", None, True),
                                                                 ("b10.png", None, False)]


@pytest.mark.parametrize("line, reason", [
    ("0 0.5 0.5 0.2", "expected 5 fields"),
    ("smoke 0.5 0.5 0.2 0.2", "invalid literal"),
    ("0 0.5 0.5 1.2 0.2", "normalised to 0..1"),
])
def test_malformed_label_names_file_and_line(tmp_path, line, reason):
    _sequence(tmp_path, "s", [("f1", "0 0.5 0.5 0.2 0.2\n\n" + line + "\n")])
    with pytest.raises(DataError) as err:
        load_smoke_dataset(tmp_path)
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 's' / 'f1.txt'}:3: malformed YOLO label line")
    assert reason in message and "\n" not in message


def test_label_file_that_is_not_text_is_a_data_error(tmp_path):
    folder = _sequence(tmp_path, "s", [("f1", None)])
    (folder / "f1.txt").write_bytes(b"\xff\xfe\x00\x81binary")
    with pytest.raises(DataError, match=r"f1.txt:1: YOLO label file is not UTF-8 text \(byte 0xff at column 1"):
        load_smoke_dataset(tmp_path)


def test_wrong_layout_is_a_data_error(tmp_path):
    write_yolo_set(tmp_path, [("a", None)])
    with pytest.raises(DataError, match="use data.format=yolo"):
        load_smoke_dataset(tmp_path / "images")
    with pytest.raises(DataError, match="expects an images/ folder"):
        load_smoke_dataset(tmp_path / "labels", YoloLayout())


def test_cli_stops_on_a_malformed_label_with_one_line(tmp_path):
    data = tmp_path / "data"
    _sequence(data, "s", [("f1", "0 0.5 0.5 0.2 0.2\n0 0.5 oops 0.2 0.2\n")])
    result = run_cli(["mode=eval", f"data.root={data}", f"paths.cache_dir={tmp_path / 'cache'}", "logger=none",
                      f"hydra.run.dir={tmp_path / 'out'}"], cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert errors == [f"error: {data / 's' / 'f1.txt'}:2: malformed YOLO label line '0 0.5 oops 0.2 0.2' "
                      "(could not convert string to float: 'oops')"]
