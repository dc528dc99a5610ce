"""Decoding, sampling and quarantine reasons on real files encoded here with PyAV."""

from __future__ import annotations

import numpy as np
import pytest

from care.media import FrameSampling, MediaError, decode_video, load_image, probe_video
from care.media.sampling import frame_count, frame_indices, smart_resize
from care.media.synth import (
    frame_marker,
    overwrite_middle,
    truncate,
    write_audio_only,
    write_image,
    write_video,
)

SAMPLING = FrameSampling(fps=2.0, min_frames=4, max_frames=16, max_pixels=56 * 56)


@pytest.mark.parametrize(
    ("name", "height", "width", "codec"),
    [("clip.mp4", 48, 64, "h264"), ("clip.avi", 48, 64, "mpeg4"), ("clip.webm", 48, 64, "vp9"),
     ("odd.mkv", 97, 63, "h264"), ("portrait.mp4", 96, 40, "h264")],
)
def test_decodes_each_container_with_decord_and_pyav_alike(tmp_path, name, height, width, codec):
    path = write_video(tmp_path / name, n_frames=24, height=height, width=width, fps=8)
    info = probe_video(path)
    assert (info.n_frames, info.fps, info.width, info.height, info.codec) == (24, 8.0, width, height, codec)
    video = decode_video(path, SAMPLING)
    assert video.decoder == "decord"
    # 3 s at 2 fps -> 6 frames, spread uniformly over 24
    assert video.indices == [0, 5, 9, 14, 18, 23]
    assert video.timestamps == pytest.approx([i / 8 for i in video.indices])
    assert video.sample_fps == pytest.approx(2.0)
    h, w = smart_resize(height, width, SAMPLING.min_pixels, SAMPLING.max_pixels)
    assert video.frames.shape == (6, h, w, 3) and video.frames.dtype == np.uint8
    assert h % 28 == 0 and w % 28 == 0
    assert [frame_marker(f) for f in video.frames] == [i % 8 for i in video.indices]
    if height > width:
        assert h > w  # portrait stays portrait
    pyav = decode_video(path, SAMPLING, prefer="pyav")
    assert pyav.decoder == "pyav" and pyav.indices == video.indices
    assert np.abs(pyav.frames.astype(int) - video.frames.astype(int)).mean() < 2.0


def test_fewer_frames_than_requested(tmp_path):
    path = write_video(tmp_path / "short.mp4", n_frames=3, fps=8)
    video = decode_video(path, FrameSampling(fps=2.0, min_frames=8, max_frames=16))
    assert video.indices == [0, 2]  # keeps what exists, even count
    exact = decode_video(path, FrameSampling(nframes=8))
    assert exact.frames.shape[0] == 8 and exact.indices == [0, 0, 1, 1, 1, 1, 2, 2]
    one = decode_video(write_video(tmp_path / "one.mp4", n_frames=1), SAMPLING)
    assert one.indices == [0, 0]


def test_frame_count_matches_reference_rule():
    s = FrameSampling(fps=2.0, min_frames=4, max_frames=16)
    assert frame_count(s, 30 * 60, 30.0) == 16  # a minute clips to max_frames
    assert frame_count(s, 45, 30.0) == 4  # 1.5 s -> 3 -> min_frames 4
    assert frame_count(s, 75, 30.0) == 4  # 2.5 s -> 5 -> floor to even
    assert frame_count(FrameSampling(nframes=5), 100, 30.0) == 4  # round(5/2)*2 = 4 (banker's rounding)
    assert frame_indices(6, 24) == [0, 5, 9, 14, 18, 23]


def test_smart_resize_bounds_on_many_sizes():
    for h in range(1, 400, 37):
        for w in range(1, 400, 41):
            if max(h, w) / min(h, w) > 200:
                continue
            rh, rw = smart_resize(h, w, 28 * 28, 112 * 112)
            assert rh % 28 == 0 and rw % 28 == 0
            assert 28 * 28 <= rh * rw <= 112 * 112


def test_image_resized_to_its_own_budget(tmp_path):
    img = load_image(write_image(tmp_path / "obs.png", height=300, width=500),
                     FrameSampling(image_max_pixels=112 * 112))
    assert img.dtype == np.uint8 and img.shape[2] == 3
    assert img.shape[0] % 28 == 0 and img.shape[1] % 28 == 0 and img.shape[0] * img.shape[1] <= 112 * 112
    assert img.shape[1] > img.shape[0]


def _bad_files(tmp_path):
    good_mp4 = write_video(tmp_path / "good.mp4", n_frames=24)
    good_mkv = write_video(tmp_path / "good.mkv", n_frames=24)
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("this is a caption file, not a video\n" * 50)
    return {
        "missing.mp4": ("missing", "missing file"),
        "zero.mp4": ("zero_byte", "zero-byte file"),
        "text.mp4": ("not_video", "not a video (no recognised container)"),
        truncate(good_mp4, tmp_path / "cut.mp4").name: ("truncated", "truncated (container index missing)"),
        truncate(good_mkv, tmp_path / "cut.mkv", 0.8).name: ("truncated", "truncated (file ends at 1.88 s of 3.00 s)"),
        write_audio_only(tmp_path / "speech.m4a").name: ("audio_only", "audio-only (no video stream)"),
        overwrite_middle(good_mkv, tmp_path / "holed.mkv").name: (
            "undecodable", "undecodable midway (container data unreadable after 0.12 s of 3.00 s)"),
        write_video(tmp_path / "garbled.avi", n_frames=24, garble_from=10).name: (
            "undecodable",
            "undecodable midway (decoder error at frame 10 of 24: Invalid data found when processing input)"),
    }


def test_each_bad_file_has_its_exact_reason(tmp_path):
    for name, (kind, reason) in _bad_files(tmp_path).items():
        with pytest.raises(MediaError) as err:
            decode_video(tmp_path / name, SAMPLING)
        assert (err.value.kind, err.value.reason) == (kind, reason), name
        assert str(tmp_path / name) in str(err.value) and "\n" not in str(err.value)


def test_bad_image_reasons(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(MediaError, match="not an image"):
        load_image(tmp_path / "bad.png", SAMPLING)
    with pytest.raises(MediaError, match="missing file"):
        load_image(tmp_path / "nope.png", SAMPLING)
