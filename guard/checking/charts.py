"""The reports' charts, drawn with matplotlib and written as inline SVG.

Plain data in, one ``<svg>`` string out: the check page's cosine histogram and cosine by
input length, the compare page's speed x retrieval scatter. The SVG is made for pasting
into an HTML page that must work offline and render the same every time:

- text stays text (``svg.fonttype: none``) at the page's body size, 15px: the figure is
  sized in points and the SVG's width and height are rewritten to pixels, so that one
  SVG unit is one CSS pixel;
- no XML prologue, no namespace URLs, no metadata, no date: nothing that points
  outside the page, and the same data give the same bytes (``svg.hashsalt``);
- every id carries the chart's name, so that several charts share one page.

matplotlib is used through ``Figure`` alone (no pyplot, no global backend), so nothing
here touches a caller's own plotting state.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

__all__ = [
    "ABOVE",
    "BELOW",
    "PALETTE",
    "STRADDLES",
    "Point",
    "by_length_svg",
    "candidate_colours",
    "histogram_svg",
    "speed_quality_svg",
]

# The verdict colours of the pages: records below the threshold in reindex red, at or
# above it in approve green; a band the threshold cuts through in orange.
BELOW = "#cf222e"
ABOVE = "#1a7f37"
STRADDLES = "#bc4c00"
INK = "#1f2328"
MUTED = "#656d76"
GRID = "#d0d7de"
THRESHOLD = "#9a6700"
# One colour per candidate on the compare chart, none of them near a verdict colour
# (green, amber, red, purple, blue): teal, pink, orange, navy, cyan, brown, plum, olive.
PALETTE = ("#1b7c83", "#bf3989", "#e8590c", "#1d3557", "#0aa2c0", "#7c4a2d", "#7d2e68", "#6b7b1a")

WIDTH = 960  # px: the pages' content width (guard/templates/base.html, 60rem at 16px)
FONT_PX = 15  # the pages' body size
_RC: Any = {  # matplotlib types its keys as one Literal
    "svg.fonttype": "none",
    "svg.hashsalt": "vector-migration-guard",
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],
    "font.size": FONT_PX,
    "axes.titlesize": FONT_PX,
    "axes.labelsize": FONT_PX,
    "xtick.labelsize": FONT_PX,
    "ytick.labelsize": FONT_PX,
    "legend.fontsize": FONT_PX,
    "text.color": INK,
    "axes.labelcolor": INK,
    "axes.edgecolor": MUTED,
    "xtick.color": INK,
    "ytick.color": INK,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
}
_METADATA = {"Date": None, "Creator": None, "Format": None, "Type": None}


def histogram_svg(edges: Sequence[float], counts: Sequence[int], threshold: float) -> str:
    """Records per cosine band, one labelled bar per band (the bands are unequal, so
    they are drawn as categories, the highest on top), each bar coloured by where it
    lies against the threshold, the threshold drawn where it falls between the bands."""
    bands = len(counts)
    labels = [_band_label(edges, i) for i in range(bands)]
    kinds = [_band_kind(edges[i], edges[i + 1], threshold) for i in range(bands)]
    colours = {"below": BELOW, "straddles": STRADDLES, "above": ABOVE}
    with matplotlib.rc_context(_RC):
        fig = _figure(80 + 32 * bands)
        ax = fig.add_subplot()
        bars = ax.barh(range(bands), counts, height=0.7, color=[colours[k] for k in kinds])
        ax.bar_label(bars, padding=4, fontsize=FONT_PX)
        ax.set_yticks(range(bands), labels)
        ax.set_ylim(-0.6, bands - 0.4)
        ax.set_xlabel("records")
        ax.set_xlim(0, max(max(counts, default=0), 1) * 1.12)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(axis="x", color=GRID, linewidth=0.8)
        ax.set_axisbelow(True)
        ax.axhline(_threshold_row(edges, threshold), color=THRESHOLD, linestyle="--", lw=1.5)
        names = {
            "below": f"wholly below {threshold:g}",
            "straddles": f"partly below {threshold:g}",
            "above": f"at or above {threshold:g}",
        }
        seen = [k for k in ("above", "straddles", "below") if _any(counts, kinds, k)]
        handles: list[Patch | Line2D] = [Patch(color=colours[k], label=names[k]) for k in seen]
        handles.append(_threshold_handle(threshold))
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles))
        return _svg(fig, "histogram", "records per cosine band")


def by_length_svg(
    tokens: Sequence[str], counts: Sequence[int], minima: Sequence[float],
    medians: Sequence[float], threshold: float,
) -> str:  # fmt: skip
    """Per token-length bucket: the median cosine (dot) and the minimum (triangle),
    joined by a line, red where the bucket holds records below the threshold; the y
    axis spans what the data and the threshold need."""
    columns = range(len(tokens))
    low = min([*minima, threshold])
    high = max([*medians, threshold])
    pad = max((high - low) * 0.08, 2e-5)
    with matplotlib.rc_context(_RC):
        fig = _figure(400)
        ax = fig.add_subplot()
        below = [m < threshold for m in minima]
        for x, lo, mid, red in zip(columns, minima, medians, below, strict=True):
            colour = BELOW if red else ABOVE
            ax.plot([x, x], [lo, mid], color=colour, lw=3, solid_capstyle="butt")
            ax.plot([x], [mid], "o", color=colour, ms=10)
            ax.plot([x], [lo], "v", color=colour, ms=10)
        ax.axhline(threshold, color=THRESHOLD, linestyle="--", lw=1.5)
        ax.set_xticks(
            list(columns),
            [f"{t} tokens\n{c:,} records" for t, c in zip(tokens, counts, strict=True)],
        )
        ax.set_xlim(-0.5, len(tokens) - 0.5)
        ax.set_ylim(low - pad, min(high + pad, 1.0 + pad))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
        ax.yaxis.set_major_formatter(_plain())
        ax.set_ylabel("cosine")
        ax.grid(axis="y", color=GRID, linewidth=0.8)
        ax.set_axisbelow(True)
        handles: list[Patch | Line2D] = [
            Line2D([], [], marker="o", ls="", color=MUTED, ms=10, label="median"),
            Line2D([], [], marker="v", ls="", color=MUTED, ms=10, label="minimum"),
        ]
        if any(below):
            handles.append(Patch(color=BELOW, label=f"has records below {threshold:g}"))
        if not all(below):
            handles.append(Patch(color=ABOVE, label=f"all at or above {threshold:g}"))
        handles.append(_threshold_handle(threshold))
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles))
        return _svg(fig, "by-length", "cosine by input length")


@dataclass(frozen=True)
class Point:
    """One candidate on the compare chart: its label, colour, speed and recalls."""

    label: str
    colour: str
    texts_per_second: float
    switch: float | None  # recall@k through the store's index, without a re-index
    reindexed: float | None  # recall@k after a re-index (the sub-corpus)


def speed_quality_svg(points: Sequence[Point], k: int, as_stored: float | None) -> str:
    """texts/s (log) against recall@k, both axes zoomed to the data: per candidate a
    filled dot (switch) and a hollow one (re-indexed) joined by a line in the
    candidate's colour, labelled once where the label hits nothing else."""
    speeds = [p.texts_per_second for p in points]
    recalls = [r for p in points for r in (p.switch, p.reindexed) if r is not None]
    recalls += [as_stored] if as_stored is not None else []
    low, high = min(recalls), max(recalls)
    pad = max((high - low) * 0.12, 0.01)
    with matplotlib.rc_context(_RC):
        fig = _figure(440)
        ax = fig.add_subplot()
        ax.set_xscale("log")
        ax.set_xlim(min(speeds) / 1.6, max(speeds) * 1.6)
        ax.set_ylim(max(low - pad, 0.0), min(high + pad, 1.0 + pad / 2))
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
        ax.yaxis.set_major_formatter(_plain())
        ax.set_xlabel("texts/s (log scale)")
        ax.set_ylabel(f"recall@{k}")
        ax.grid(color=GRID, linewidth=0.8)
        ax.set_axisbelow(True)
        if as_stored is not None:
            ax.axhline(as_stored, color=MUTED, linestyle=":", lw=1.5)
        for p in points:
            ys = [r for r in (p.switch, p.reindexed) if r is not None]
            x = p.texts_per_second
            ax.plot([x] * len(ys), ys, color=p.colour, lw=1.5)
            if p.switch is not None:
                ax.plot([x], [p.switch], "o", color=p.colour, ms=11)
            if p.reindexed is not None:
                ax.plot([x], [p.reindexed], "o", mfc="white", mec=p.colour, mew=2.5, ms=11)
        handles = [
            Line2D([], [], marker="o", ls="", color=MUTED, ms=11, label="switch, no re-index"),
            Line2D(
                [], [], marker="o", ls="", mfc="white", mec=MUTED, mew=2.5, ms=11,
                label="after a re-index",
            ),
        ]  # fmt: skip
        if as_stored is not None:
            handles.append(Line2D([], [], color=MUTED, ls=":", lw=1.5, label="as stored"))
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles))
        _label_points(fig, ax, points)
        return _svg(fig, "speed-quality", f"texts per second against recall at {k}")


def candidate_colours(uris: Sequence[str]) -> dict[str, str]:
    """A colour per candidate URI from a hash of the URI, the same in every run and at
    any rank; URIs that hash to a taken colour take the next free one, in URI order."""
    taken: dict[str, str] = {}
    free = list(PALETTE)
    for uri in sorted(set(uris), key=lambda u: (_slot(u), u)):
        start = _slot(uri)
        order = PALETTE[start:] + PALETTE[:start]
        colour = next((c for c in order if c in free), order[0])
        if colour in free:
            free.remove(colour)
        taken[uri] = colour
    return taken


def _slot(uri: str) -> int:
    return int(hashlib.sha256(uri.encode("utf-8")).hexdigest()[:8], 16) % len(PALETTE)


def _figure(height: int) -> Figure:
    """A figure of the page's width in points, where one point becomes one CSS pixel."""
    fig = Figure(figsize=(WIDTH / 72, height / 72), dpi=72, layout="constrained")
    fig.patch.set_alpha(0.0)
    return fig


def _svg(fig: Figure, name: str, title: str) -> str:
    """The figure as an ``<svg>`` element for an HTML page (see the module's notes)."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata=_METADATA)
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", text, count=2)
    text = re.sub(r'(width|height)="([\d.]+)pt"', r'\1="\2"', text, count=2)
    text = text.replace("<svg ", f'<svg class="chart" role="img" aria-label="{title}" ', 1)
    text = re.sub(r'\bid="([^"]+)"', rf'id="{name}-\1"', text)
    text = re.sub(r'(xlink:href="#|url\(#)([^")]+)', rf"\1{name}-\2", text)
    return text.strip()


def _plain() -> FuncFormatter:
    """Tick labels as plain decimals with the digits the ticks need (no offset)."""
    return FuncFormatter(lambda v, _: f"{v:.6f}".rstrip("0").rstrip(".") if v else "0")


def _band_label(edges: Sequence[float], i: int) -> str:
    low, high = edges[i], edges[i + 1]
    if i == 0 and low <= -1.0:
        return f"below {high:g}"
    return f"{low:g} \u2013 {high:g}"


def _band_kind(low: float, high: float, threshold: float) -> str:
    if high <= threshold:
        return "below"
    return "above" if low >= threshold else "straddles"


def _any(counts: Sequence[int], kinds: Sequence[str], kind: str) -> bool:
    return any(c for c, k in zip(counts, kinds, strict=True) if k == kind)


def _threshold_row(edges: Sequence[float], threshold: float) -> float:
    """Where the threshold lies on the bands' category axis: between two bars at a band
    edge, inside a bar in proportion where it cuts a band."""
    for i in range(len(edges) - 1):
        low, high = edges[i], edges[i + 1]
        if low <= threshold < high:
            return i - 0.5 + (threshold - low) / (high - low)
    return len(edges) - 1.5 if threshold >= edges[-1] else -0.5


def _threshold_handle(threshold: float) -> Line2D:
    return Line2D([], [], color=THRESHOLD, ls="--", lw=1.5, label=f"threshold {threshold:g}")


_OFFSETS = ((10, 8), (10, -22), (-1, 8), (-1, -22), (10, 24), (10, -38), (-1, 24), (-1, -38))


def _label_points(fig: Figure, ax: Axes, points: Sequence[Point]) -> None:
    """Each candidate's label beside its upper dot, at the first offset whose box hits
    no other label, no dot and stays inside the axes; the layout is fixed first, so that
    the positions measured are the ones drawn."""
    fig.draw_without_rendering()
    fig.set_layout_engine("none")
    box = ax.get_window_extent()
    to_screen = ax.transData.transform
    dots = [
        tuple(to_screen((p.texts_per_second, r)))
        for p in points
        for r in (p.switch, p.reindexed)
        if r is not None
    ]
    taken = [(x - 7.0, y - 7.0, x + 7.0, y + 7.0) for x, y in dots]
    for p in points:
        top = max(r for r in (p.switch, p.reindexed) if r is not None)
        x, y = (float(v) for v in to_screen((p.texts_per_second, top)))
        width, height = 0.62 * FONT_PX * len(p.label) + 4, FONT_PX * 1.2
        tries = []
        for dx, dy in _OFFSETS:
            ox = float(dx) if dx > 0 else -10.0 - width
            rect = (x + ox, y + dy, x + ox + width, y + dy + height)
            cost = sum(_overlap(rect, other) for other in taken) + _outside(rect, box.extents)
            tries.append((cost, rect))
            if cost == 0:
                break
        _, rect = min(tries, key=lambda t: t[0])  # the first of the least crowded
        taken.append(rect)
        ax.annotate(
            p.label, (p.texts_per_second, top), xytext=(rect[0] - x, rect[1] - y),
            textcoords="offset points",
            color=p.colour, fontweight="bold", va="bottom", ha="left", annotation_clip=False,
        )  # fmt: skip


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    return width * height if width > 0 and height > 0 else 0.0


def _outside(rect: tuple[float, ...], bounds: Sequence[float]) -> float:
    """How far a label box reaches past the axes, weighted like an overlap."""
    spill = (
        max(bounds[0] - rect[0], 0.0)
        + max(rect[2] - bounds[2], 0.0)
        + max(bounds[1] - rect[1], 0.0)
        + max(rect[3] - bounds[3], 0.0)
    )
    return spill * 100.0 if not math.isclose(spill, 0.0) else 0.0
