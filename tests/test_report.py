"""Static reports: `python -m miras_lite report` turns every notebook into one HTML file that renders in
Debian's Chromium with the network off and every non-file request aborted (and none attempted):
charts drawn by vega-embed (data marks of some size in each SVG, a tooltip on hover), math by KaTeX with
its own fonts, no error box, no script error; plus an SVG and a PNG of every chart. A full-page screenshot
of each report is saved (and copied to runs/screenshots/). A small notebook checks that a legend-bound
selection still filters its chart in the report."""

import base64
import io
import struct
import xml.etree.ElementTree as ElementTree

import polars as pl
import pyarrow.ipc
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

from browser import ROOT, launch_chromium, save_screenshot
from notebook_runs import make_report
from miras_lite.reports.chart_data import ARROW_URL, with_inline_values

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.py"))
TIMEOUT_MS = 60_000
LOCAL_SCHEMES = ("file:", "data:")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# the items of a chart's data marks (axes, legends and titles have other roles) that have a size: an area,
# or a length for lines, rules and text
VISIBLE_ITEMS = """chart => [...chart.querySelectorAll("svg g.role-mark > *")].filter(item => {
    const box = item.getBoundingClientRect();
    const flat = /mark-(line|rule|text)/.test(item.parentElement.getAttribute("class"));
    return box.width * box.height > 0 || (flat && box.width + box.height > 0);
}).length"""
POINT_MARKS = ", ".join(f".chart svg g.role-mark.mark-{kind} > path" for kind in ("symbol", "rect", "arc"))


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


class OfflinePage:
    """A page in a context with the network off; every request that is not a file: or data: URL is
    aborted and recorded, and so are script errors."""

    def __init__(self, browser):
        self.context = browser.new_context(viewport={"width": 1200, "height": 900})
        self.context.set_offline(True)
        self.outside, self.script_errors = [], []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.page.on("request", lambda request: self._record(request.url))
        self.page.on("pageerror", lambda error: self.script_errors.append(str(error)))
        self.page.on("console", lambda message: message.type == "error" and self.script_errors.append(message.text))

    def _record(self, url):
        if not url.startswith(LOCAL_SCHEMES):
            self.outside.append(url)

    def _route(self, route):
        if route.request.url.startswith(LOCAL_SCHEMES):
            route.continue_()
        else:
            route.abort()


def wait_for_charts(page):
    """Until page.js has run and every chart is drawn or has failed."""
    page.wait_for_function("document.body.dataset.reportReady === 'true'")
    page.wait_for_function("[...document.querySelectorAll('.chart')].every(c => c.dataset.drawn || "
                           "c.querySelector('.report-error'))")


def assert_charts_drawn(page, expected):
    charts = page.locator(".chart")
    assert charts.count() == expected, f"{charts.count()} charts in the page, {expected} chart files written"
    for index in range(expected):
        chart = charts.nth(index)
        assert chart.get_attribute("data-drawn") == "true", chart.inner_text()
        assert chart.evaluate(VISIBLE_ITEMS) > 0, f"chart {index + 1} draws no data mark of any size"


def assert_tooltip_on_hover(page, tries=40):
    """vega-embed's tooltip handler answers a hover over a point, bar or arc, where the report has any.
    Some items carry no tooltip, lie under another layer (a rule) or have no size: try the first few."""
    points = page.locator(POINT_MARKS)
    tooltip = page.locator("#vg-tooltip-element.visible")
    for index in range(min(points.count(), tries)):
        points.nth(index).evaluate("item => item.scrollIntoView({block: 'center'})")
        box = points.nth(index).bounding_box()
        if box is None or box["width"] < 1 or box["height"] < 1:
            continue
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        try:
            tooltip.wait_for(timeout=1_000)
        except PlaywrightTimeout:
            continue
        assert tooltip.inner_text().strip(), "the tooltip is empty"
        page.mouse.move(0, 0)
        return
    assert points.count() == 0, f"no tooltip over any of the first {tries} points, bars or arcs"


def assert_math_rendered(page):
    tex = page.locator("marimo-tex")
    assert page.locator("marimo-tex > .katex, marimo-tex > .katex-display").count() == tex.count()
    assert page.locator(".katex-error").count() == 0, page.locator(".katex-error").first.inner_text()
    if tex.count():
        loaded = page.evaluate("document.fonts.ready.then(fonts => [...fonts].filter(f => "
                               "f.family.startsWith('KaTeX') && f.status === 'loaded').length)")
        assert loaded > 0, "no KaTeX font was loaded"


def png_size(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def assert_chart_files(folder):
    svgs, pngs = sorted(folder.glob("chart_*.svg")), sorted(folder.glob("chart_*.png"))
    assert [p.stem for p in svgs] == [p.stem for p in pngs]
    for svg, png in zip(svgs, pngs):
        root = ElementTree.parse(svg).getroot()
        assert root.tag.endswith("svg") and len(list(root.iter())) > 20, f"{svg} is nearly empty"
        width, height = png_size(png)
        assert width >= 200 and height >= 100 and png.stat().st_size > 5_000, f"{png}: {width}x{height}"
    return len(svgs)


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks/NN_*.py found"


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_report_renders_offline(notebook, browser, tmp_path):
    output = tmp_path / f"{notebook.stem}.html"
    done = make_report(notebook, output)
    assert done.returncode == 0, f"report failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-4000:]}"
    charts = assert_chart_files(tmp_path / f"{notebook.stem}_charts")
    assert charts > 0, f"{notebook.name}: the report has no chart"

    offline = OfflinePage(browser)
    page = offline.page
    page.goto(output.as_uri())
    wait_for_charts(page)
    save_screenshot(page, tmp_path, f"report_{notebook.stem}.png")
    assert_charts_drawn(page, charts)
    assert_math_rendered(page)
    assert page.locator(".report-error").count() == 0, page.locator(".report-error").first.inner_text()
    assert_tooltip_on_hover(page)
    assert not offline.outside, f"the report tried to reach {offline.outside[:5]}"
    assert not offline.script_errors, offline.script_errors
    offline.context.close()


# an interactive chart (mo.ui.altair_chart: its rows travel as Arrow) with a legend-bound selection
SELECTION_NOTEBOOK = """
import marimo

app = marimo.App()


@app.cell
def _():
    import altair as alt
    import marimo as mo
    import polars as pl

    frame = pl.DataFrame({"x": [1, 2, 3, 4], "y": [1, 4, 9, 16], "kind": ["a", "a", "b", "b"]})
    pick = alt.selection_point(fields=["kind"], bind="legend")
    chart = (
        alt.Chart(frame).mark_point(size=300, filled=True)
        .encode(x="x", y="y", color="kind", opacity=alt.condition(pick, alt.value(1.0), alt.value(0.2)))
        .add_params(pick)
    )
    mo.ui.altair_chart(chart)
    return
"""


@pytest.mark.browser
@pytest.mark.slow
def test_report_chart_selections_work(browser, tmp_path):
    notebook = tmp_path / "selection.py"
    notebook.write_text(SELECTION_NOTEBOOK)
    done = make_report(notebook, tmp_path / "selection.html")
    assert done.returncode == 0, done.stderr[-4000:]
    offline = OfflinePage(browser)
    page = offline.page
    page.goto((tmp_path / "selection.html").as_uri())
    wait_for_charts(page)
    assert_charts_drawn(page, 1)
    points = "[...document.querySelectorAll('.chart g.role-mark.mark-symbol > path')]"
    opacity = f"{points}.map(point => point.getAttribute('opacity'))"
    assert page.evaluate(opacity) == ["1", "1", "1", "1"]
    page.locator(".chart g.role-legend-symbol path").first.click(force=True)  # select kind "a"
    page.wait_for_function(f"{opacity}.join() === '1,1,0.2,0.2'")
    assert not offline.outside and not offline.script_errors
    offline.context.close()


def test_arrow_chart_data_becomes_json_rows():
    """mo.ui.altair_chart ships its rows as an Arrow file in a data: URL; the report inlines them as the
    same rows in JSON (checked against the frame the file was written from)."""
    frame = pl.DataFrame({"step": [0, 1, 2], "loss": [2.5, 1.25, None], "run": ["a", "b", "c"]})
    sink = io.BytesIO()
    with pyarrow.ipc.new_file(sink, frame.to_arrow().schema) as writer:
        writer.write_table(frame.to_arrow())
    url = ARROW_URL + base64.b64encode(sink.getvalue()).decode()
    spec = {"layer": [{"data": {"url": url, "format": {"type": "arrow"}, "name": "trials"}, "mark": "point"}]}
    assert with_inline_values(spec) == {"layer": [{"data": {"name": "trials", "values": frame.to_dicts()},
                                                   "mark": "point"}]}


def test_report_refuses_a_bad_output_path(tmp_path):
    done = make_report(NOTEBOOKS[0], tmp_path / "report.txt")
    assert done.returncode == 2 and "output:" in done.stderr and ".html" in done.stderr, done.stderr
    assert not list(tmp_path.iterdir())


MODE_NOTEBOOK = """
import marimo

app = marimo.App()


@app.cell
def _():
    import marimo as mo

    from miras_lite.ui import quick_mode, report_mode

    mo.md(f"report mode {report_mode()}, quick mode {quick_mode()}")
    return
"""


@pytest.mark.parametrize("train,mode,made", [(False, "shipped", "nothing was trained for it"),
                                             (True, "full", "training every model of the page")])
def test_a_report_tells_the_notebook_and_the_reader_how_it_was_made(tmp_path, train, mode, made):
    """`report` runs the notebook in report mode (never the quick mode of scripts, whose small runs a report
    must not show as results); with --train in full mode, and the page's header says which."""
    notebook = tmp_path / "mode.py"
    notebook.write_text(MODE_NOTEBOOK)
    output = tmp_path / "mode.html"
    done = make_report(notebook, output, env={"MIRAS_LITE_QUICK": "1"}, train=train)
    assert done.returncode == 0, done.stderr[-3000:]
    page = output.read_text()
    assert f"report mode {mode}, quick mode False" in page and made in page
