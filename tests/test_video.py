"""Uniform frame sampling from real video files written with OpenCV."""

from __future__ import annotations

import pytest

from tests.videos import write_video
from vlmexp.data.video import UnreadableVideo, sample_frames, uniform_indices


def _ramp(n: int) -> list[tuple[int, int, int]]:
    """Frame i: red rises and blue falls with i, so both the order and the channel order show."""
    return [(i * 12, 40, 240 - i * 12) for i in range(n)]


def _close(pixel, expected, tol: int = 6) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(pixel, expected))


def test_uniform_indices_span_first_to_last_frame():
    assert uniform_indices(20, 5) == [0, 5, 10, 14, 19]  # linspace 0, 4.75, 9.5, 14.25, 19 rounded
    assert uniform_indices(12, 8) == [0, 2, 3, 5, 6, 8, 9, 11]
    assert uniform_indices(3, 8) == [0, 0, 1, 1, 1, 1, 2, 2]  # fewer frames than asked: repeats
    assert uniform_indices(1, 3) == [0, 0, 0]
    assert uniform_indices(0, 8) == []


@pytest.mark.parametrize("suffix", [".avi", ".mp4"])
def test_sample_frames_uniform_rgb(tmp_path, suffix):
    path = write_video(tmp_path / f"ramp{suffix}", _ramp(20), fps=10.0)
    video = sample_frames(path, 5)
    assert video.indices == [0, 5, 10, 14, 19]
    assert video.total_frames == 20
    assert video.fps == 10.0
    assert all(f.mode == "RGB" and f.size == (64, 48) for f in video.frames)
    expected = [_ramp(20)[i] for i in video.indices]
    pixels = [f.getpixel((32, 24)) for f in video.frames]
    assert all(_close(p, e) for p, e in zip(pixels, expected)), (pixels, expected)
    assert video.center is video.frames[2]
    assert video.sampled_fps == pytest.approx(2.5)  # 5 frames over a 2 s video


def test_short_video_repeats_frames(tmp_path):
    path = write_video(tmp_path / "short.avi", _ramp(3))
    video = sample_frames(path, 8)
    assert video.indices == [0, 0, 1, 1, 1, 1, 2, 2]
    assert len(video.frames) == 8
    assert _close(video.frames[-1].getpixel((0, 0)), _ramp(3)[2])


def test_frames_that_do_not_decode_are_not_sampled(tmp_path):
    """The header says 20 frames but the last 5 are zeroed: sampling spans the 15 that decode."""
    path = write_video(tmp_path / "damaged.avi", _ramp(20))
    data = bytearray(path.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]  # JPEG frames
    assert len(starts) == 20
    end = starts[19] + (starts[19] - starts[18])
    data[starts[15]:end] = bytes(end - starts[15])
    path.write_bytes(bytes(data))
    video = sample_frames(path, 4)
    assert video.total_frames == 15
    assert video.indices == [0, 5, 9, 14]
    assert _close(video.frames[-1].getpixel((0, 0)), _ramp(20)[14])


def test_missing_and_corrupt_files_raise_unreadable(tmp_path):
    with pytest.raises(UnreadableVideo, match="no such file"):
        sample_frames(tmp_path / "nope.mp4")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video " * 40)
    with pytest.raises(UnreadableVideo, match="garbage.mp4"):
        sample_frames(garbage)
    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"")
    with pytest.raises(UnreadableVideo, match="empty.avi"):
        sample_frames(empty)
    text = tmp_path / "notes.avi"
    text.write_text("RIFF but not really an AVI\n" * 30)
    with pytest.raises(UnreadableVideo, match="notes.avi"):
        sample_frames(text)
