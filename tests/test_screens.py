"""The HTML reports as a person sees them: real report objects rendered to pages, opened
in a real headless Chromium (the distribution's package; nothing downloads a browser),
checked on the screenshot and on the DOM.

Each page is opened twice: as written, for a screenshot (PNG, read with matplotlib) and
its DOM; and with a probe script appended to a copy, which measures the laid-out page
(content box, charts, anything wider than its box) and writes the figures into the DOM
that ``--dump-dom`` prints. The pages themselves carry no script.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.image import imread
from test_report import GGUF, ST, _report

from guard.checking.charts import candidate_colours
from guard.checking.render import HTML_COLOURS
from guard.checking.render import to_html as check_html
from guard.comparing.render import to_html as compare_html
from guard.comparing.report import CandidateRow, CompareReport, Speed

WINDOW = (1200, 2000)
INSTALL = (
    "Chromium is missing: the screenshot tests need the distribution's package "
    "(`apt-get install -y chromium`, as root; `scripts/bootstrap.sh test` installs it)"
)
PROBE = """<script>
const main = document.querySelector("main").getBoundingClientRect();
const box = (r) => ({left: r.left, top: r.top + scrollY, width: r.width, height: r.height});
const wide = [...document.querySelectorAll("main *")]
  .filter((e) => !e.closest("svg") || e.tagName === "svg")
  .filter((e) => e.scrollWidth > e.clientWidth + 1 && getComputedStyle(e).overflowX !== "visible"
    || e.getBoundingClientRect().right > main.right + 1)
  .map((e) => e.tagName + " " + (e.textContent || "").trim().slice(0, 60));
const out = document.createElement("pre");
out.id = "probe";
out.textContent = JSON.stringify({
  main: box(main),
  charts: [...document.querySelectorAll("svg.chart")].map((s) => box(s.getBoundingClientRect())),
  wide: wide,
});
document.body.append(out);
</script>"""


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail(INSTALL)
    return found


@dataclass(frozen=True)
class Seen:
    """One page in the browser: the screenshot's pixels (RGB in 0..1), the DOM as
    rendered, and the probe's measurements (CSS pixels = screenshot pixels)."""

    pixels: np.ndarray[Any, Any]
    dom: str
    layout: dict[str, Any]

    def crop(self, rect: dict[str, float]) -> np.ndarray[Any, Any]:
        top, left = round(rect["top"]), round(rect["left"])
        return self.pixels[top : top + round(rect["height"]), left : left + round(rect["width"])]


def _run(chromium: str, folder: Path, *args: str) -> str:
    result = subprocess.run(
        [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--hide-scrollbars", "--force-device-scale-factor=1",
            f"--user-data-dir={folder / 'profile'}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
            *args,
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _see(chromium: str, folder: Path, name: str, page: str) -> Seen:
    folder.mkdir(parents=True, exist_ok=True)
    path, probe, png = (
        folder / f"{name}.html",
        folder / f"{name}.probe.html",
        folder / f"{name}.png",
    )
    path.write_text(page, encoding="utf-8")
    probe.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    _run(chromium, folder, f"--screenshot={png}", path.as_uri())
    dom = _run(chromium, folder, "--dump-dom", path.as_uri())
    probed = _run(chromium, folder, "--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', probed, re.S)
    assert found is not None, probed[-2000:]
    pixels = imread(png)[:, :, :3]
    assert pixels.shape[:2] == (WINDOW[1], WINDOW[0])
    return Seen(pixels, dom, json.loads(html.unescape(found.group(1))))


def _share_of(pixels: np.ndarray[Any, Any], colour: str, tolerance: float = 0.06) -> float:
    """The share of pixels within ``tolerance`` (per channel, 0..1) of ``colour``."""
    rgb = np.array([int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    near = np.all(np.abs(pixels - rgb) <= tolerance, axis=-1)
    return float(near.mean()) if near.size else 0.0


def _speed(texts_per_second: float) -> Speed:
    return Speed(
        model_bytes=45_000_000,
        peak_rss_added_bytes=100_000_000,
        texts=100,
        tokens=5_000,
        seconds=100 / texts_per_second,
    )


def _recall(value: float) -> dict[str, Any]:
    return {"recall_at_k": value, "recall_at_k_ci": [value - 0.02, min(1.0, value + 0.02)]}


CANDIDATES = (
    ("llamacpp:/models/all-MiniLM-L6-v2.F16.gguf?max_tokens=256", 61.0, 0.97, 0.96, 0),
    ("llamacpp:/models/all-MiniLM-L6-v2.Q8_0.gguf?max_tokens=256", 77.0, 0.965, 0.962, 0),
    ("llamacpp:/models/all-MiniLM-L6-v2.Q4_0.gguf?max_tokens=256", 82.0, 0.93, 0.95, 100),
    ("model2vec:/models/all-MiniLM-L6-v2.static", 4790.0, 0.41, 0.80, 100),
)


def _compare_report() -> CompareReport:
    """Real check reports (approve and reindex) in real compare rows, one that did not load."""
    approve = _report((), n=600, mismatching=0)
    reindex = _report((), n=100, mismatching=100)
    rows = [
        CandidateRow.judged(
            uri,
            reindex if failing else approve,
            _speed(speed),
            {"switch": _recall(switch), "reindexed": _recall(reindexed)},
        )
        for uri, speed, switch, reindexed, failing in CANDIDATES
    ]
    rows.append(CandidateRow.not_loaded("llamacpp:/models/zeta.gguf", "unknown architecture"))
    return CompareReport(
        store=approve.store,
        sample={"size": 600, "seed": 1, "records_without_text": 0, "method": "uniform_id_list",
                "speed_texts": 100},
        k=10,
        queries={"count": 40, "synthetic": True},
        candidates=tuple(rows),
        exit_code=0,
        thresholds=approve.thresholds,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pages(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Seen]:
    folder = tmp_path_factory.mktemp("screens")
    return {
        "check": _see(
            chromium,
            folder / "check",
            "check",
            check_html(_report((), n=600, mismatching=0, candidate=GGUF, baseline=ST)),
        ),
        "failing": _see(
            chromium, folder / "failing", "failing", check_html(_report((), n=100, mismatching=100))
        ),
        "compare": _see(chromium, folder / "compare", "compare", compare_html(_compare_report())),
    }


def test_pages_render_non_blank_at_one_content_width(pages: dict[str, Seen]) -> None:
    """Something is drawn; the check and compare pages share one content box, on the
    DOM and on the screen (the first column with ink)."""
    widths = {name: seen.layout["main"]["width"] for name, seen in pages.items()}
    lefts = {}
    for name, seen in pages.items():
        ink = np.any(seen.pixels < 0.9, axis=-1)
        assert ink.mean() > 0.02, name
        lefts[name] = int(np.argmax(ink.any(axis=0)))
    assert len(set(widths.values())) == 1, widths
    assert 900 <= widths["check"] <= 1000, widths
    assert max(lefts.values()) - min(lefts.values()) <= 2, lefts


def test_check_charts_show_the_verdict_colours_the_data_call_for(pages: dict[str, Seen]) -> None:
    """An approval's charts are green with no red; a failure's histogram is red."""
    approve, failing = pages["check"], pages["failing"]
    assert len(approve.layout["charts"]) == 2 and len(failing.layout["charts"]) == 2
    histogram = approve.crop(approve.layout["charts"][0])
    assert _share_of(histogram, HTML_COLOURS["approve"]) > 0.005
    assert _share_of(histogram, HTML_COLOURS["reindex"]) == 0.0
    by_length = approve.crop(approve.layout["charts"][1])
    assert _share_of(by_length, HTML_COLOURS["approve"]) > 0.0005
    assert _share_of(by_length, HTML_COLOURS["reindex"]) == 0.0
    red = failing.crop(failing.layout["charts"][0])
    assert _share_of(red, HTML_COLOURS["reindex"]) > 0.005


def test_compare_chart_draws_each_candidate_in_its_own_colour(pages: dict[str, Seen]) -> None:
    seen = pages["compare"]
    assert len(seen.layout["charts"]) == 1
    chart = seen.crop(seen.layout["charts"][0])
    colours = candidate_colours([uri for uri, *_ in CANDIDATES] + ["llamacpp:/models/zeta.gguf"])
    for uri, *_ in CANDIDATES:
        assert _share_of(chart, colours[uri]) > 0.0002, uri
    assert len({colours[uri] for uri, *_ in CANDIDATES}) == len(CANDIDATES)


def test_the_dom_holds_the_charts_the_names_and_nothing_overflows(
    pages: dict[str, Seen],
) -> None:
    check, compare = pages["check"].dom, pages["compare"].dom
    assert check.count('<svg class="chart"') == 2 and compare.count('<svg class="chart"') == 1
    assert "all-MiniLM-L6-v2.Q8_0.gguf" in check and "llamacpp Q8_0" in check
    assert "At 99% confidence at most 0.77% of stored vectors fall below 0.99" in check
    for uri, *_ in CANDIDATES:
        assert uri.split("/")[-1].split("?")[0] in compare, uri
    for name, seen in pages.items():
        assert "\u2026" not in seen.dom and "..." not in re.sub(r"<[^>]+>", "", seen.dom), name
        assert seen.layout["wide"] == [], (name, seen.layout["wide"])
