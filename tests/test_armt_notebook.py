"""Notebook 07 (ARMT on BABILong) as users run it: its report (shipped mode) shows the shipped model and the accuracy
by context length measured for it (data/models/armt-qa1/lengths.parquet, written by `python -m benchmarks.armt
--evaluate data/models/armt-qa1 --out ...`), trains nothing and shows no control that set nothing; as a script
it trains a tiny model, says so, and prints what it measured."""


import polars as pl
import pytest

from browser import ROOT
from notebook_runs import make_report, page_text, run_script

NOTEBOOK = ROOT / "notebooks" / "07_armt_babilong.py"
SHIPPED_LENGTHS = ROOT / "data" / "models" / "armt-qa1" / "lengths.parquet"

pytestmark = pytest.mark.slow


def _shipped_at_2k():
    row = pl.read_parquet(SHIPPED_LENGTHS).filter(pl.col("context") == 2048).row(0, named=True)
    return row["accuracy"], row["samples"]


def test_the_shipped_model_ships_its_accuracy_by_length():
    lengths = pl.read_parquet(SHIPPED_LENGTHS)
    assert lengths["context"].to_list()[:4] == [2048, 16_384, 65_536, 1_048_576]
    assert lengths["samples"].to_list()[:4] == [100, 100, 100, 20]
    assert lengths["accuracy"].is_between(0, 1).all()


def test_shipped_report_shows_the_shipped_model_and_its_measured_accuracy(tmp_path):
    """MIRAS_LITE_QUICK is set as in the browser tests: a report ignores it (quick runs are never results)."""
    output = tmp_path / "07.html"
    done = make_report(NOTEBOOK, output, env={"MIRAS_LITE_QUICK": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    page = output.read_text()
    text = page_text(page)
    accuracy, samples = _shipped_at_2k()
    assert "The cells below show the shipped ARMT" in text, text[:3000]
    assert f"{accuracy:.0%} at 2K ({samples} samples)" in text
    assert "The shipped model's curve: 100 samples per length at 2K, 16K and 64K tokens, 20 at 1M" in text
    assert "nothing was trained for it" in text and "Nothing was measured for this report" in text
    assert "Press" not in text and "quick mode" not in text.lower() and "quick run" not in text.lower()
    # no control that would have set training or measuring (labels travel escaped in the widgets' attributes)
    for label in ("training steps", "samples per length", "longest context", "Train", "Measure accuracy"):
        assert f"u003e{label}&#92;u003c" not in page, f"the report shows the control {label!r}"


def test_script_prints_its_summary():
    done = run_script(NOTEBOOK)
    assert done.returncode == 0, done.stderr[-4000:]
    lines = done.stdout.splitlines()
    accuracy, _ = _shipped_at_2k()
    assert any(line.startswith("model: a tiny quick-mode ARMT: width 32,") and "; 8 training steps" in line
               for line in lines), done.stdout
    assert any(line.startswith("shipped armt-qa1 (benchmarks.armt): accuracy by context length 2K "
                               f"{accuracy:.2f}, 16K") for line in lines), done.stdout
    assert any(line.startswith("quick run (8 steps), measured here: accuracy by context length 128 ")
               for line in lines), done.stdout


@pytest.mark.browser
def test_app_shows_the_shipped_model_then_the_one_trained_with_the_button(browser, tmp_path):
    """In the app, the page shows the shipped model at once (no button to press first); Train trains a new one,
    which every cell below then shows."""
    from browser import KernelErrors, assert_no_errors, marimo_app, save_screenshot

    accuracy, samples = _shipped_at_2k()
    with marimo_app(NOTEBOOK) as (url, server_log):
        page = browser.new_page(viewport={"width": 1280, "height": 4400})
        page.set_default_timeout(120_000)
        errors = KernelErrors(page)
        page.goto(url)
        page.get_by_text("The cells below show the shipped ARMT").wait_for()
        page.get_by_text(f"{accuracy:.0%} at 2K ({samples} samples)").wait_for()
        page.get_by_text("Traced: one 64K-token story").wait_for()
        page.get_by_role("button", name="Train", exact=True).click()
        page.get_by_text("The cells below show the ARMT trained here").wait_for(timeout=300_000)
        page.get_by_text("facts in segments").first.wait_for()
        page.get_by_text("read by the model trained here (300 steps)").first.wait_for()
        save_screenshot(page, tmp_path, "07_armt_babilong.png")
        assert_no_errors(errors, server_log)
