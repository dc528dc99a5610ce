"""Frame cache vs decoding: for the same videos and sampled frames, time decoding from the video file (decord,
PyAV) against reading the frame cache (raw and JPEG codecs), and report the cache size per frame.

    python benchmarks/frame_cache.py [--videos 8] [--frames 150] [--size 336x448] [--repeats 3] [--json]

Videos are synthetic H.264 MP4s encoded here with PyAV, with a drifting noise texture so they compress
like footage rather than flat colour. Times are medians over repeats of the total for all
videos; ratios are measured in the same run. Target: cache reads >= 20x faster than decoding. Cache reads are
timed from the Parquet files (the in-process memory layer off); "memory hit" times a re-read that layer serves.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from care.media import FrameCache, FrameSampling, decode_video
from care.media.frame_cache import DECODED
from care.media.synth import write_video


@contextlib.contextmanager
def memory_layer(on: bool):
    """The in-process copy of recently read entries on or off (``CARE_FRAME_MEMORY_MB``)."""
    before = os.environ.get("CARE_FRAME_MEMORY_MB")
    os.environ["CARE_FRAME_MEMORY_MB"] = "256" if on else "0"
    DECODED.clear()
    try:
        yield
    finally:
        DECODED.clear()
        if before is None:
            os.environ.pop("CARE_FRAME_MEMORY_MB")
        else:
            os.environ["CARE_FRAME_MEMORY_MB"] = before


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(videos: int, frames: int, height: int, width: int, repeats: int, max_pixels: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="care-bench-"))
    paths = [write_video(tmp / f"v{i}.mp4", n_frames=frames, height=height, width=width, fps=30,
                         texture=True)
             for i in range(videos)]
    base = FrameSampling(fps=2.0, min_frames=4, max_frames=16, max_pixels=max_pixels)
    sampled = decode_video(paths[0], base).frames.shape
    rows = {}
    for decoder in ("decord", "pyav"):
        rows[f"decode ({decoder})"] = _timed(
            lambda d=decoder: [decode_video(p, base, prefer=d) for p in paths], repeats)
    sizes = {}
    for codec in ("raw", "jpeg"):
        cache = FrameCache(tmp / f"cache-{codec}", base.model_copy(update={"codec": codec}))
        written = [cache.put(p, "video") for p in paths]
        n_frames = sum(r.n_frames for r in written)
        sizes[codec] = sum(Path(r.cache_file).stat().st_size for r in written) / n_frames
        with memory_layer(False):  # every read from the Parquet file, verified
            rows[f"cache read ({codec})"] = _timed(lambda c=cache: [c.load_media(p, "video") for p in paths],
                                                   repeats)
        if codec == "raw":  # a stage re-reading what an earlier stage of the process read (DecodedEntries)
            with memory_layer(True):
                [cache.load_media(p, "video") for p in paths]
                rows["memory hit (raw)"] = _timed(lambda c=cache: [c.load_media(p, "video") for p in paths], repeats)
    return {
        "videos": videos, "source_frames": frames, "source_size": f"{height}x{width}",
        "sampled": list(sampled), "seconds": rows,
        "speedup_vs_decord": {k: rows["decode (decord)"] / v for k, v in rows.items() if not k.startswith("decode")},
        "speedup_vs_pyav": {k: rows["decode (pyav)"] / v for k, v in rows.items() if not k.startswith("decode")},
        "bytes_per_frame": sizes, "raw_frame_bytes": int(sampled[1] * sampled[2] * 3),
        "target_met": {k: rows["decode (decord)"] / v >= 20 for k, v in rows.items() if k.startswith("cache")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--frames", type=int, default=150, help="source frames per video (30 fps)")
    parser.add_argument("--size", default="336x448", help="source HxW")
    parser.add_argument("--max-pixels", type=int, default=224 * 224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    h, w = (int(x) for x in args.size.split("x"))
    result = run(args.videos, args.frames, h, w, args.repeats, args.max_pixels)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['videos']} videos, {result['source_frames']} frames {result['source_size']} at 30 fps "
          f"-> sampled {result['sampled']} per video")
    print(f"{'path':<20}{'seconds':>10}{'x vs decord':>13}{'x vs pyav':>11}")
    for name, sec in result["seconds"].items():
        vs_d = result["speedup_vs_decord"].get(name)
        vs_p = result["speedup_vs_pyav"].get(name)
        print(f"{name:<20}{sec:>10.4f}{(f'{vs_d:.1f}' if vs_d else '-'):>13}{(f'{vs_p:.1f}' if vs_p else '-'):>11}")
    for codec, size in result["bytes_per_frame"].items():
        print(f"cache bytes per frame ({codec}): {size:,.0f} (raw frame {result['raw_frame_bytes']:,} B)")
    for name, met in result["target_met"].items():
        print(f"target, {name} >= 20x faster than decord: {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
