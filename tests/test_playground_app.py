"""The playground keeps every run: in Debian's Chromium, a run interrupted by a control change is kept (in the
page and in its run directory), saved runs of the command line load into the page and compare with live ones,
a reload brings the page's runs back, and its report shows the trained models with their measured accuracy."""

import re
import shutil

import pytest

from browser import ROOT, KernelErrors, assert_no_errors, marimo_app, save_screenshot
from miras_lite.runs import load_run
from test_browser import TIMEOUT_MS, VIEWPORT, training_step, wait_until
from test_report import OfflinePage, make_report, wait_for_charts

PLAYGROUND = ROOT / "notebooks" / "06_playground.py"
SHIPPED = ROOT / "data" / "models"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def open_playground(browser, url):
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(TIMEOUT_MS)
    errors = KernelErrors(page)
    page.goto(url)
    page.get_by_text("to start a run").wait_for()
    return page, errors


def table_row(page, name):
    """The text of the runs table's row whose first cell is `name` ("" while there is none)."""
    rows = page.get_by_role("row").filter(has=page.get_by_role("cell", name=name, exact=True))
    return rows.first.inner_text() if rows.count() else ""


def pick(page, label, option):
    """Add `option` to the multiselect labelled `label`."""
    page.get_by_label(label).click()
    page.get_by_role("option", name=option, exact=True).click()
    page.keyboard.press("Escape")


def test_a_run_interrupted_by_a_control_is_kept_and_saved_runs_load_and_compare(browser, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(SHIPPED / "deltanet", runs / "cli" / "my-deltanet")  # as `train ... --out runs/cli/my-deltanet`
    with marimo_app(PLAYGROUND, env={"MIRAS_LITE_RUNS": str(runs)}) as (url, server_log):
        page, errors = open_playground(browser, url)
        assert table_row(page, "cli/my-deltanet") == ""  # listed, not loaded until picked
        pick(page, re.compile("saved runs in"), "cli/my-deltanet")
        wait_until(lambda: "shipped" not in table_row(page, "cli/my-deltanet") and table_row(page, "cli/my-deltanet"),
                   "the saved run in the runs table")
        assert "500 of 500" in table_row(page, "cli/my-deltanet")

        page.get_by_role("button", name="Train").click()  # gated_deltanet, 600 steps
        wait_until(lambda: (s := training_step(page)) and s >= 5, "5 training steps")
        page.get_by_label("preset", exact=True).select_option("deltanet")  # a control changes mid-run
        row = wait_until(lambda: table_row(page, "#1 gated_deltanet"), "the interrupted run in the runs table")
        assert "interrupted" in row, row
        steps = int(re.search(r"(\d+) of 600", row).group(1))
        assert 5 <= steps < 600

        saved = list((runs / "playground").iterdir())
        assert len(saved) == 1 and saved[0].name.endswith("-gated_deltanet")
        kept = load_run(saved[0])
        assert kept.step == steps and kept.stopped.startswith("interrupted"), (kept.step, kept.stopped)
        assert kept.metrics["step"][-1] == steps

        # recall of the last two MQAR runs, overlaid: the live run and the saved one
        chosen = page.get_by_label("runs", exact=True)
        wait_until(lambda: "#1 gated_deltanet" in chosen.inner_text() and "cli/my-deltanet" in chosen.inner_text(),
                   "both runs picked for the recall charts")
        wait_until(lambda: page.locator("canvas").count() >= 4, "the comparison, recall, gates and memory charts")
        save_screenshot(page, tmp_path, "06_playground_saved_runs.png")
        assert_no_errors(errors, server_log)
        page.close()

        # a reload: the page's newest runs are picked at once, the interrupted one with its steps
        page, errors = open_playground(browser, url)
        name = f"playground/{saved[0].name}"
        row = wait_until(lambda: table_row(page, name), "the saved playground run after a reload")
        assert "interrupted" in row and f"{steps} of 600" in row, row
        assert_no_errors(errors, server_log)


def test_the_playground_report_shows_the_trained_models_and_saved_runs(browser, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(SHIPPED / "titans", runs / "playground" / "20261201-120000-titans")
    output = tmp_path / "playground.html"
    done = make_report(PLAYGROUND, output, env={"MIRAS_LITE_RUNS": str(runs)})
    assert done.returncode == 0, done.stderr[-4000:]
    shipped_accuracy = {name: load_run(SHIPPED / name).metrics["eval_accuracy"].drop_nulls()[-1]
                        for name in ("gated_deltanet", "titans")}
    assert min(shipped_accuracy.values()) >= 0.9  # what the report must show: trained models

    offline = OfflinePage(browser)
    page = offline.page
    page.goto(output.as_uri())
    wait_for_charts(page)
    text = page.locator("main").inner_text()
    assert "nothing was trained for it" in text and "Press" not in text and "Train" not in [
        b.strip() for b in page.get_by_role("button").all_inner_texts()]
    for name, accuracy in shipped_accuracy.items():
        row = table_row(page, f"trained {name}")
        assert "shipped" in row and f"{accuracy:.3f}".rstrip("0") in row, row
    assert f"{shipped_accuracy['titans']:.3f}".rstrip("0") in table_row(page, "playground/20261201-120000-titans")
    save_screenshot(page, tmp_path, "report_06_playground_saved.png")
    offline.context.close()
