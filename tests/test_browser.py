"""The notebooks as apps, in a real browser: `marimo run` served locally, driven by Playwright in Debian's
Chromium (/usr/bin/chromium; `make test` installs it). Each test checks that the page reacts to a control
and that no cell raised, and saves a full-page screenshot (also copied to runs/screenshots/)."""

import re
import time

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect

from browser import ROOT, KernelErrors, assert_no_errors, marimo_app, save_screenshot
from miras_lite.runs import load_run

TIMEOUT_MS = 60_000
# a tall window: the app scrolls inside its own element, so a full-page screenshot shows one window's height
VIEWPORT = {"width": 1280, "height": 4400}
STEP = re.compile(r"step (\d+)/(\d+)")

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def new_page(browser):
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(TIMEOUT_MS)
    return page, KernelErrors(page)


def wait_until(condition, what, timeout_s=TIMEOUT_MS / 1000, poll_s=0.25):
    """Poll `condition()` until it returns a truthy value (returned) or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def chart_pixels(page, index=0):
    """The pixels of the `index`-th chart (a Vega canvas) as a data URL, or None while it is being replaced
    (marimo swaps in a new canvas at every redraw)."""
    try:
        return page.locator("canvas").nth(index).evaluate("canvas => canvas.toDataURL()", timeout=5_000)
    except PlaywrightError:
        return None


def all_charts(page):
    """The pixels of every chart on the page, or None while one is being replaced."""
    pixels = tuple(chart_pixels(page, index) for index in range(page.locator("canvas").count()))
    return None if not pixels or None in pixels else pixels


def training_step(page):
    """The step the progress line of the running training shows, or None when there is none."""
    label = page.get_by_text(STEP)
    if label.count() == 0:
        return None
    return int(STEP.search(label.first.inner_text()).group(1))


def test_playground_trains_live_and_cancels(browser, tmp_path):
    with marimo_app(ROOT / "notebooks" / "06_playground.py", env={"MIRAS_LITE_RUNS": str(tmp_path / "runs")}) as (
            url, server_log):
        page, errors = new_page(browser)
        page.goto(url)
        page.get_by_text("to start a run").wait_for()
        # ttt_mlp: its recommended 500 steps take long enough here to cancel half way
        page.get_by_label("preset", exact=True).select_option("ttt_mlp")
        # the axes follow the preset: ttt_mlp keeps everything (retention none)
        expect(page.get_by_label("retention", exact=True)).to_have_value("none", timeout=TIMEOUT_MS)
        page.get_by_text("to start a run").wait_for()
        assert training_step(page) is None  # no run yet: no progress bar (the shipped models' charts are there)
        page.get_by_text("trained titans").first.wait_for()  # the runs table lists the shipped models

        page.get_by_role("button", name="Train").click()
        first = wait_until(lambda: training_step(page), "the progress bar")
        # the shipped models' charts stay as they are while the run trains: what changes is the live chart
        before = wait_until(lambda: all_charts(page), "the live chart")
        # eval_every = steps // 20 = 25: by then the held-out curve has new points
        later = wait_until(lambda: (s := training_step(page)) and s >= first + 25 and s, "25 more training steps")
        wait_until(lambda: all_charts(page) not in (None, before), "the live chart to be redrawn")

        page.get_by_role("button", name="Cancel").click()
        page.get_by_text("cancelled", exact=True).wait_for()  # the runs table
        note = page.get_by_text(re.compile(r"ttt_mlp: cancelled after (\d+) of 500 steps"))
        stopped_at = int(re.search(r"after (\d+) of", note.first.inner_text()).group(1))
        assert later <= stopped_at < 500, f"the run was not cancelled (it stopped at step {stopped_at})"
        assert training_step(page) is None  # the progress line is gone: no stale progress after a cancel
        kept = load_run(next((tmp_path / "runs" / "playground").iterdir()))
        assert kept.stopped == "cancelled" and kept.step == stopped_at
        # live curves, all-runs comparison, recall by pairs/distance, gates, memory snapshots
        wait_until(lambda: page.locator("canvas").count() >= 5, "the charts of the finished run")
        save_screenshot(page, tmp_path, "06_playground.png")
        assert_no_errors(errors, server_log)


def test_tour_reacts_to_the_preset(browser, tmp_path):
    with marimo_app(ROOT / "notebooks" / "00_tour.py") as (url, server_log):
        page, errors = new_page(browser)
        page.goto(url)
        page.get_by_text("This is gated_deltanet").wait_for()
        chart_before = wait_until(lambda: chart_pixels(page), "the recall chart")
        equations = page.locator(".katex")
        equations.first.wait_for()
        katex_before = equations.all_inner_texts()

        page.get_by_label("preset", exact=True).select_option("linear_attention")
        page.get_by_text("This is linear_attention").wait_for()
        wait_until(lambda: equations.all_inner_texts() != katex_before, "the update rule (KaTeX) to change")
        wait_until(lambda: chart_pixels(page) not in (None, chart_before), "the recall chart to be redrawn")
        assert page.get_by_text("This is gated_deltanet").count() == 0
        save_screenshot(page, tmp_path, "00_tour.png")
        assert_no_errors(errors, server_log)
