"""Static reports: ``python -m miras_lite report notebooks/NAME.py -o report.html``.

A report is one HTML file that renders with no network: the notebook is run once as a report
(`session.run_notebook`; by default it shows the trained models the project ships and the runs saved under
runs/, with ``--train`` it trains at the settings the page shows), the Arrow data of its interactive charts becomes JSON (`chart_data`), every
cell's output is written into a page that carries its own scripts and styles (`page.render_page`:
charts drawn by vega-embed, so tooltips and selections work; math by KaTeX), and every chart is also
written as SVG and PNG next to it (`charts.write_chart_files`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .chart_data import inline_run_chart_data
from .charts import chart_specs, write_chart_files
from .page import render_page
from .session import run_notebook


@dataclass
class Report:
    page: Path
    charts: list  # the SVG and PNG files, two per chart
    errors: list  # the cells that raised: {"cell", "ename", "evalue", ...}


def write_report(notebook, output, mode="shipped"):
    """Run `notebook` in report `mode` (`ui.report_mode`: "shipped" or "full") and write its report to `output`
    (an .html path); the charts go to ``<output stem>_charts/chart_NN.{svg,png}`` beside it."""
    output = Path(output)
    if output.suffix != ".html":
        raise ValueError(f"output: {output} must be an .html file")
    run = run_notebook(notebook, mode)
    inline_run_chart_data(run)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render_page(run, notebook))
    charts = write_chart_files(chart_specs(run), output.with_name(f"{output.stem}_charts"))
    return Report(page=output, charts=charts, errors=run.errors)
