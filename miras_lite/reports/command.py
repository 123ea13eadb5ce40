"""The ``report`` subcommand of ``python -m miras_lite``."""

from __future__ import annotations

import sys
from pathlib import Path


def add_report_parser(subparsers):
    p = subparsers.add_parser(
        "report", help="run a notebook and write an offline HTML report",
        description="Run a notebook once and write one HTML file that renders with no network (interactive charts, "
                    "KaTeX math), plus an SVG and a PNG of every chart in OUTPUT_charts/. By default nothing trains: "
                    "the page shows the trained models the project ships (data/models/) and your saved runs "
                    "(runs/); --train trains at the settings the page shows (minutes). Exits with 1 when a cell "
                    "raised.")
    p.add_argument("notebook", help="a marimo notebook, e.g. notebooks/00_tour.py")
    p.add_argument("-o", "--output", help="the HTML file (default runs/reports/NAME.html)")
    p.add_argument("--train", action="store_true",
                   help="train the notebook's models at the settings the page shows instead of showing saved ones "
                        "(progress on stderr)")
    p.set_defaults(handler=run_report)


def run_report(args):
    from . import write_report

    output = args.output or Path("runs") / "reports" / f"{Path(args.notebook).stem}.html"
    report = write_report(args.notebook, output, "full" if args.train else "shipped")
    print(f"wrote {report.page} and {len(report.charts) // 2} chart(s) as SVG + PNG in "
          f"{report.page.with_name(report.page.stem + '_charts')}")
    for error in report.errors:
        print(f"error: cell {error['cell']} raised {error.get('ename')}: {error.get('evalue')}", file=sys.stderr)
    return 1 if report.errors else 0
