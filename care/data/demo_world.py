"""The demo benchmark's rendered world: environments, the two task families, and their frames.

Pure numpy rendering (no IO); ``care.data.demo`` encodes the frames and writes the benchmark files.

Task families (the answer needs the pixels; the text is the same for every sample of a family and variant):

- ``target``: four coloured markers; an agent walks from the centre toward one of them. Answer: "pick up the
  <colour> marker" (the marker it walks to).
- ``lamp``: a lamp in the middle shows a new colour every frame; four coloured buttons. Answer: "press the
  <colour> button" for the lamp's colour in the last frame (the current observation).

The current-observation image is the last frame, so image-only samples stay answerable.

Variants (``docs/demo.md`` has the design and the measured learning curves):

- ``fixed`` (easy): the four base colours (red, green, blue, yellow), so with options in canonical (sorted)
  order each colour always has the same letter. Target markers are large and sit in the middle of their
  quadrant, so at the 56x56 pixel budget each marker fills most of one 2x2-merged vision token; the agent
  walks from 35 % to 80-95 % of the way, so it is inside its marker's quadrant in every frame and stands on the
  marker in the last one (one token holds both).
- ``shuffled`` (hard): 4 of 8 colours, so the letter of the right colour changes from sample to sample (an
  in-context lookup), with small markers near the corners and the agent stopping at 55-75 % of the way. The tiny
  model stays at chance on it within the demo budget; its share caps the accuracy SFT can reach.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

BASE_COLORS = ("red", "green", "blue", "yellow")
EXTRA_COLORS = ("purple", "orange", "cyan", "pink")


@dataclass(frozen=True)
class Environment:
    """A visual environment: background, colour shades, where the four markers/buttons sit, the agent."""

    name: str
    background: tuple[int, int, int]
    palette: dict[str, tuple[int, int, int]]
    layout: str  # "corners" | "edges" | "row"
    agent: tuple[int, int, int]
    grid: bool = False  # faint floor grid lines


ENVIRONMENTS = {
    "room": Environment(
        "room", (40, 40, 40),
        {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 235), "yellow": (230, 210, 40),
         "purple": (150, 60, 200), "orange": (245, 140, 20), "cyan": (40, 210, 220), "pink": (245, 120, 190)},
        "corners", (245, 245, 245)),
    "garden": Environment(
        "garden", (70, 50, 30),
        {"red": (190, 30, 70), "green": (110, 230, 90), "blue": (30, 60, 180), "yellow": (250, 240, 110),
         "purple": (120, 40, 150), "orange": (220, 110, 50), "cyan": (90, 230, 250), "pink": (250, 160, 210)},
        "edges", (200, 200, 255), grid=True),
    "lab": Environment(
        "lab", (20, 30, 70),
        {"red": (240, 70, 60), "green": (60, 170, 90), "blue": (90, 130, 250), "yellow": (255, 230, 80),
         "purple": (170, 90, 230), "orange": (255, 160, 60), "cyan": (80, 230, 200), "pink": (255, 140, 170)},
        "row", (255, 255, 255)),
}
# L2's near half (care.data.demo.level_environment): the garden's background and agent, the room's marker shades
# and corner layout, no grid; the part of the garden's shift the tiny model carries over (docs/demo.md)
ENVIRONMENTS["garden_near"] = replace(ENVIRONMENTS["room"], name="garden_near",
                                      background=ENVIRONMENTS["garden"].background, agent=ENVIRONMENTS["garden"].agent)


@dataclass(frozen=True)
class TargetLook:
    """How a ``target`` variant draws its markers and how far the agent walks (fractions of the frame side)."""

    margin: float  # slot centre's distance from the frame edge (corners and edges layouts)
    marker: float  # marker half side
    start: float  # share of the way from the centre to the marker where the agent is in the first frame
    reach: tuple[float, float]  # share of the way to the marker covered by the last frame, drawn uniformly


TARGET_LOOKS = {
    # the agent is inside its marker's quadrant in every frame, so every video token and image token that holds
    # the agent also holds the answer colour (measured: learned within 500-1250 SFT steps in four seed runs)
    "fixed": TargetLook(margin=0.22, marker=0.16, start=0.35, reach=(0.80, 0.95)),
    # the original look: small markers, the agent starts on the centre (on all four quadrant tokens at once)
    "shuffled": TargetLook(margin=0.14, marker=1 / 12, start=0.0, reach=(0.55, 0.75)),
}
AGENT_HALF = 1 / 16


def half_side(fraction: float, size: int, least: int) -> int:
    """Half side in pixels of a square of ``fraction`` x ``size`` (at least ``least``).

    >>> half_side(0.16, 64, 3), half_side(1 / 12, 64, 3), half_side(1 / 16, 32, 2)
    (10, 5, 2)
    """
    return max(least, round(size * fraction))


def target_geometry(layout: str, variant: str, size: int) -> tuple[list[tuple[float, float]], int]:
    """(slot centres, marker half side in pixels) of the ``target`` task's markers for a variant."""
    look = TARGET_LOOKS[variant]
    return slot_centres(layout, size, margin=look.margin), half_side(look.marker, size, 3)


def slot_centres(layout: str, size: int, margin: float = 0.14) -> list[tuple[float, float]]:
    """(x, y) centres of the four marker/button slots for a ``size`` x ``size`` frame."""
    m = size * margin
    lo, mid, hi = m, size / 2, size - m
    if layout == "corners":
        return [(lo, lo), (hi, lo), (lo, hi), (hi, hi)]
    if layout == "edges":
        return [(mid, lo), (hi, mid), (mid, hi), (lo, mid)]
    if layout == "row":
        return [(size * (0.2 + 0.2 * k), hi) for k in range(4)]
    raise ValueError(f"unknown layout {layout!r}")


def _square(frame: np.ndarray, cx: float, cy: float, half: int, color: tuple[int, int, int]) -> None:
    h, w = frame.shape[:2]
    x0, y0 = max(0, round(cx) - half), max(0, round(cy) - half)
    frame[y0 : min(h, round(cy) + half), x0 : min(w, round(cx) + half)] = color


def _canvas(env: Environment, size: int) -> np.ndarray:
    frame = np.empty((size, size, 3), dtype=np.uint8)
    frame[:] = env.background
    if env.grid:
        shade = tuple(min(255, c + 18) for c in env.background)
        frame[:: max(4, size // 8)] = shade
        frame[:, :: max(4, size // 8)] = shade
    return frame


@dataclass(frozen=True)
class Scene:
    """Everything the generator knows about one sample; ``truth`` is the answer colour."""

    task: str
    variant: str
    env: str
    colors: tuple[str, str, str, str]  # colour in slot 0..3
    truth: str
    frames: np.ndarray  # (T, S, S, 3) uint8
    track: list[list[float]]  # target: agent (x, y) per frame; lamp: [] (see lamp_colors)
    lamp_colors: list[str]

    def metadata(self) -> dict:
        return {"task": self.task, "variant": self.variant, "env": self.env, "slot_colors": list(self.colors),
                "truth": self.truth, "agent_track": self.track, "lamp_colors": self.lamp_colors}


def pick_colors(rng: np.random.Generator, variant: str) -> tuple[str, str, str, str]:
    pool = BASE_COLORS if variant == "fixed" else BASE_COLORS + EXTRA_COLORS
    return tuple(str(c) for c in rng.choice(pool, size=4, replace=False))  # type: ignore[return-value]


def render_target(rng: np.random.Generator, env: Environment, variant: str, *, size: int, frames: int) -> Scene:
    """An agent walks from the centre toward the marker in a random slot (look per variant: ``TARGET_LOOKS``)."""
    colors = pick_colors(rng, variant)
    slots, half_marker = target_geometry(env.layout, variant, size)
    goal = int(rng.integers(4))
    look = TARGET_LOOKS[variant]
    reach = float(rng.uniform(*look.reach))
    centre = np.array([size / 2, size / 2]) + rng.uniform(-2, 2, size=2)
    start = centre + look.start * (np.array(slots[goal]) - centre)
    end = centre + reach * (np.array(slots[goal]) - centre)
    half_agent = half_side(AGENT_HALF, size, 2)
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    track = []
    for t in range(frames):
        frame = _canvas(env, size)
        for (cx, cy), color in zip(slots, colors, strict=True):
            _square(frame, cx, cy, half_marker, env.palette[color])
        pos = start + (end - start) * (t / max(1, frames - 1))
        _square(frame, pos[0], pos[1], half_agent, env.agent)
        track.append([round(float(pos[0]), 2), round(float(pos[1]), 2)])
        out[t] = frame
    return Scene("target", variant, env.name, colors, colors[goal], out, track, [])


def render_lamp(rng: np.random.Generator, env: Environment, variant: str, *, size: int, frames: int) -> Scene:
    """A lamp cycles through the button colours at random; the last colour is the answer."""
    colors = pick_colors(rng, variant)
    slots = slot_centres(env.layout, size)
    lamp = [str(colors[int(k)]) for k in rng.integers(4, size=frames)]
    half_button, half_lamp = max(3, size // 12), max(4, size // 7)
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    for t in range(frames):
        frame = _canvas(env, size)
        for (cx, cy), color in zip(slots, colors, strict=True):
            _square(frame, cx, cy, half_button, env.palette[color])
        _square(frame, size / 2, size * 0.4, half_lamp, env.palette[lamp[t]])
        out[t] = frame
    return Scene("lamp", variant, env.name, colors, lamp[-1], out, [], lamp)


RENDERERS = {"target": render_target, "lamp": render_lamp}

QUESTIONS = {
    "target": "What should I do next to collect the marker the agent is walking to?",
    "lamp": "What should I do next to press the button that matches the lamp?",
}


def option_text(task: str, color: str) -> str:
    """The option for acting on ``color`` in ``task``.

    >>> option_text("target", "red"), option_text("lamp", "blue")
    ('pick up the red marker', 'press the blue button')
    """
    return f"pick up the {color} marker" if task == "target" else f"press the {color} button"


def reasoning_text(task: str, color: str) -> str:
    """The CoT: names the perceived step before the answer (the letter is added when the options are known)."""
    if task == "target":
        return f"The agent walks to the {color} marker."
    return f"The lamp shows {color} now."
