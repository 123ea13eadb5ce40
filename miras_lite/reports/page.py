"""One self-contained HTML page from a notebook run: every cell's output in notebook order, the
scripts (page.js, vega-embed, KaTeX) and styles inlined, nothing loaded from anywhere else."""

from __future__ import annotations

import html
import json
from datetime import datetime, timezone
from pathlib import Path

from . import assets

HERE = Path(__file__).parent
VEGA_LITE_PREFIX = "application/vnd.vegalite."
HOW_MADE = {  # per report mode (`ui.report_mode`)
    "shipped": "from the trained models the project ships and the saved runs: nothing was trained for it.",
    "full": "training every model of the page at the settings it shows.",
}


def json_attribute(value):
    """A data-* attribute value as marimo writes them: JSON, HTML-escaped."""
    return html.escape(json.dumps(value), quote=True)


def mime_element(mimetype, data):
    """marimo's own markup for an output rendered by mimetype (page.js draws it)."""
    return (f"<marimo-mime-renderer data-mime='{json_attribute(mimetype)}' data-data='{json_attribute(data)}'>"
            "</marimo-mime-renderer>")


def output_html(output):
    """The HTML of one cell output: HTML as marimo wrote it, charts and images for page.js to draw,
    text as preformatted text, an error as a red box naming it."""
    if output["type"] == "error":
        message = f'{output.get("ename", "error")}: {output.get("evalue", "")}'
        return f'<div class="report-error">{html.escape(message)}</div>'
    parts = []
    for mimetype, data in output["data"].items():
        if data in ("", None):
            continue
        if mimetype in ("text/html", "text/markdown"):
            parts.append(data)
        elif mimetype.startswith((VEGA_LITE_PREFIX, "image/")):
            parts.append(mime_element(mimetype, data))
        else:
            parts.append(f"<pre>{html.escape(str(data))}</pre>")
    return "".join(parts)


def cells_html(run):
    sections = (output_html(output) for cell in run.cells for output in cell["outputs"])
    return "\n".join(f'<section class="cell">{section}</section>' for section in sections if section)


def render_page(run, notebook):
    """The report page of `run` (a `NotebookRun` of `notebook`) as one HTML string."""
    imports = json.dumps({"imports": {"vega-embed": assets.vega_embed_module(), "katex": assets.katex_module()}})
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(run.title)}</title>
<link rel="icon" href="data:,">
<style>{assets.katex_css()}</style>
<style>{(HERE / "page.css").read_text()}</style>
<script type="importmap">{imports}</script>
</head>
<body>
<main>
<header class="report"><p>Report of <code>{html.escape(Path(notebook).name)}</code>, made on {when}
{HOW_MADE[run.mode]} Controls show the values the notebook ran with; charts are interactive (hover for
tooltips).</p></header>
{cells_html(run)}
</main>
<script type="module">{(HERE / "page.js").read_text()}</script>
</body>
</html>
"""
