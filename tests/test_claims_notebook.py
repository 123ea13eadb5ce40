"""Notebook 10 (the papers' claims) as users see it: the shipped results hold every row of every claim as the
benchmark defines it now; the report shows each claim with its verdicts and trains nothing; in the app a row is
retrained with the button and shown next to the saved ones."""

import json
import re

import polars as pl
import pytest

from benchmarks.claims import all_claims, verdicts
from miras_lite.config import RunConfig
from browser import ROOT
from notebook_runs import make_report, page_text

NOTEBOOK = ROOT / "notebooks" / "10_claims.py"
SHIPPED = ROOT / "data" / "claims" / "results.parquet"


def test_the_shipped_results_are_the_claims_as_defined_now():
    """Every (claim, model) has seeds 0, 1, 2, trained with the very config `benchmarks.claims` builds today."""
    results = pl.read_parquet(SHIPPED)
    for claim in all_claims().values():
        for model, run in claim.runs.items():
            rows = results.filter((pl.col("claim") == claim.name) & (pl.col("model") == model)).sort("seed")
            assert rows["seed"].to_list() == [0, 1, 2], (claim.name, model)
            for row in rows.iter_rows(named=True):
                # read back as a RunConfig: a field added since the row was trained takes its default
                trained = RunConfig.from_dict(json.loads(row["config"]))
                assert trained == run.replace(seed=row["seed"]), (claim.name, model)
                assert 0 <= row["recall"] <= 1


@pytest.mark.slow
def test_report_shows_each_claim_with_its_verdicts_and_trains_nothing(tmp_path):
    runs = tmp_path / "runs"
    output = tmp_path / "10.html"
    done = make_report(NOTEBOOK, output, env={"MIRAS_LITE_QUICK": "1", "MIRAS_LITE_RUNS": str(runs)})
    assert done.returncode == 0, done.stderr[-4000:]
    text = page_text(output.read_text())
    judged = verdicts(list(all_claims().values()), pl.read_parquet(SHIPPED))
    for claim in all_claims().values():
        assert claim.source in text and claim.says in text, claim.name
    for row in judged.iter_rows(named=True):
        assert f"{row['expects']}: {row['verdict']}. {row['why']}" in text, row
    assert "This page is a report: it shows the results file above and trained nothing" in text
    assert "Train this row" not in text and not runs.exists()


@pytest.mark.browser
def test_app_retrains_a_row_with_the_button(browser, tmp_path):
    """The page shows the shipped results at once and trains nothing until the button is pressed; then it trains
    the picked row with the seed typed in, as the benchmark does, saves it under runs/claims and lists it."""
    from browser import KernelErrors, assert_no_errors, marimo_app, save_screenshot

    runs = tmp_path / "runs"
    with marimo_app(NOTEBOOK, env={"MIRAS_LITE_RUNS": str(runs)}) as (url, server_log):
        page = browser.new_page(viewport={"width": 1280, "height": 3000})
        page.set_default_timeout(120_000)
        errors = KernelErrors(page)
        page.goto(url)
        page.get_by_text("Press Train this row").wait_for()
        page.locator("canvas").nth(len(all_claims()) - 1).wait_for()  # one chart per claim
        # the quickest row (about 30 s on one core; the default, titans, takes two minutes or more)
        page.get_by_label("row", exact=True).select_option("robust_biases / l2")
        seed = page.get_by_role("textbox", name=re.compile(r"\bseed\b"))
        seed.fill("5")
        seed.press("Enter")
        assert not runs.exists()  # nothing trains before the button
        page.get_by_role("button", name="Train this row").click()
        page.get_by_text("l2, seed 5:").wait_for(timeout=400_000)
        save_screenshot(page, tmp_path, "10_claims.png")
        assert_no_errors(errors, server_log)
    saved = json.loads((runs / "claims" / "rows" / "robust_biases" / "l2" / "seed-5.json").read_text())
    assert saved["config"] == all_claims()["robust_biases"].runs["l2"].replace(seed=5).to_dict()
