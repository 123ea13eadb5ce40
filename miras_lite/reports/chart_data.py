"""Inline the data of interactive charts (``mo.ui.altair_chart``): marimo's ``<marimo-vega>`` element
carries its rows as an Arrow IPC file in a ``data:`` URL with ``format: {"type": "arrow"}``, which
marimo's frontend decodes and neither vega-embed nor vl-convert can read. Each such dataset becomes
``{"values": [row, ...]}`` (the JSON Vega reads)."""

from __future__ import annotations

import base64
import html
import io
import json
import re

import polars as pl
import pyarrow.ipc

from .page import json_attribute

ARROW_URL = "data:application/vnd.apache.arrow.file;base64,"
MARIMO_VEGA_SPEC = re.compile(r"(<marimo-vega\b[^>]*?\bdata-spec=')([^']*)(')")


def arrow_rows(url):
    """The rows of an Arrow file in a base64 ``data:`` URL, as JSON values (dates as ISO strings)."""
    table = pyarrow.ipc.open_file(io.BytesIO(base64.b64decode(url[len(ARROW_URL):]))).read_all()
    return json.loads(pl.from_arrow(table).write_json())


def with_inline_values(node):
    """`node` (a Vega-Lite spec or part of it) with every Arrow ``data:`` URL replaced by its rows."""
    if isinstance(node, list):
        return [with_inline_values(item) for item in node]
    if not isinstance(node, dict):
        return node
    if str(node.get("url", "")).startswith(ARROW_URL):
        rest = {key: value for key, value in node.items() if key not in ("url", "format")}
        return {**rest, "values": arrow_rows(node["url"])}
    return {key: with_inline_values(value) for key, value in node.items()}


def inline_chart_data(text):
    """An output's HTML with the spec of each ``<marimo-vega>`` rewritten by `with_inline_values`."""
    def rewrite(match):
        spec = with_inline_values(json.loads(html.unescape(match[2])))
        return match[1] + json_attribute(spec) + match[3]

    return MARIMO_VEGA_SPEC.sub(rewrite, text)


def inline_run_chart_data(run):
    """Apply `inline_chart_data` to every HTML output of a `NotebookRun`, in place."""
    for cell in run.cells:
        for output in cell["outputs"]:
            for mimetype, data in output.get("data", {}).items():
                if mimetype in ("text/html", "text/markdown") and isinstance(data, str):
                    output["data"][mimetype] = inline_chart_data(data)
