"""The results figure: a valid PNG for typical, degenerate and empty inputs, drawn from plain data."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from PIL import Image

from care.eval.plots import level_points, plot_results
from care.eval.scoring import accuracy_by_level

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_png(path) -> np.ndarray:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    with Image.open(path) as image:
        image.verify()  # checks the chunks' CRCs
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape == (height, width, 3)
    return pixels


def typical_inputs():
    steps = range(0, 200, 10)
    training = {
        "reward_mean": {"grpo": [(s, 1.5 + s / 1000) for s in steps], "grpo_care": [(s, 1.5 + s / 600) for s in steps]},
        "bonus_rate": [(s, 0.3 + s / 2000) for s in steps],
        "consistency_likelihood_mean": [(s, 0.6 + s / 1500) for s in steps],
        "accuracy": [(0, 0.55), (100, 0.6), (190, 0.64)],
    }
    records = accuracy_by_level(["L1"] * 20 + ["L2"] * 10 + ["L3"] * 10, [True] * 13 + [False] * 7 + [True] * 5 +
                                [False] * 5 + [True] * 3 + [False] * 7)
    levels = {"base": {"L1": (0.25, 0.1, 0.45), "L2": (0.3, 0.1, 0.6), "L3": (0.2, 0.05, 0.5)},
              "after SFT": level_points(records)}
    return training, levels


def test_typical_figure_is_a_valid_colourful_png(tmp_path):
    training, levels = typical_inputs()
    out = plot_results(tmp_path / "run" / "results.png", training=training, levels=levels, title="demo")
    assert out == tmp_path / "run" / "results.png"
    pixels = read_png(out)
    assert pixels.shape[0] > 600 and pixels.shape[1] > 600
    colours = {tuple(p) for p in pixels.reshape(-1, 3)[::37]}
    assert len(colours) > 50  # lines, bars, text: not a blank canvas
    assert [p.name for p in out.parent.iterdir()] == ["results.png"]  # no temp file left behind


def test_figure_depends_on_the_data(tmp_path):
    training, levels = typical_inputs()
    first = read_png(plot_results(tmp_path / "a.png", training=training, levels=levels))
    training["accuracy"] = [(0, 0.1), (100, 0.9), (190, 0.2)]
    second = read_png(plot_results(tmp_path / "b.png", training=training, levels=levels))
    assert first.shape == second.shape and not np.array_equal(first, second)


@pytest.mark.parametrize(
    ("training", "levels"),
    [
        ({"reward_mean": [(3, 1.2)]}, None),  # one point
        ({"reward_mean": [(3, 1.2)], "bonus_rate": []}, {"base": {"L1": (0.5, 0.2, 0.8)}}),  # an empty series
        ({"accuracy": {"grpo": [], "grpo_care": [(1, 0.5)]}}, None),  # one run of two has no points yet
        ({"reward_mean": [(0, math.nan), (1, math.inf)]}, None),  # nothing finite: drawn as "no data"
        (None, {"base": {"L1": (math.nan, 0.0, 1.0)}, "after RL": {"L2": (0.4, 0.3, 0.5)}}),  # NaN accuracy, gaps
        (None, {"base": {}}),  # a stage without levels
        ({"my_custom_metric": [(0, -3.0), (5, 4.0)]}, None),  # an unknown metric name is drawn too
        (None, None),  # nothing at all
    ],
)
def test_degenerate_inputs_still_give_a_valid_png(tmp_path, training, levels):
    pixels = read_png(plot_results(tmp_path / "p.png", training=training, levels=levels))
    assert pixels.shape[0] >= 250 and pixels.shape[1] >= 500


def test_level_points_from_records():
    records = accuracy_by_level(["L1", "L1", "L2"], [True, False, True])
    points = level_points(records)
    assert list(points) == ["L1", "L2"]
    assert points["L1"][0] == 0.5 and points["L1"][1] < 0.5 < points["L1"][2]
    assert points["L2"][2] == 1.0


def test_metric_titles_keep_acronyms():
    from matplotlib.figure import Figure

    from care.eval.plots import _draw_metric

    ax = Figure().add_subplot()
    _draw_metric(ax, "SFT loss", [(1, 2.0), (2, 1.0)])
    assert ax.get_title() == "SFT loss"
    _draw_metric(ax, "bonus_rate", [(1, 0.5)])
    assert ax.get_title() == "Consistency bonus rate"
