"""Every chart of a notebook run as a Vega-Lite spec, in page order, and as SVG and PNG files
(rendered by vl-convert, offline)."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import vl_convert

from .assets import VEGA_LITE_VERSION
from .page import VEGA_LITE_PREFIX

PNG_SCALE = 2  # pixels per CSS pixel


class ChartElements(HTMLParser):
    """Collects the Vega-Lite specs in an HTML text, in document order: those of ``<marimo-vega>``
    elements (interactive charts) and those inside ``<marimo-mime-renderer>`` elements."""

    def __init__(self):
        super().__init__()
        self.specs = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "marimo-vega":
            self.specs.append(json.loads(attrs["data-spec"]))
        elif tag == "marimo-mime-renderer":
            self.specs += specs_in(json.loads(attrs["data-mime"]), json.loads(attrs["data-data"]))


def specs_in(mimetype, data):
    """The Vega-Lite specs of one output, in document order (HTML outputs can hold charts)."""
    if mimetype.startswith(VEGA_LITE_PREFIX):
        return [json.loads(data) if isinstance(data, str) else data]
    if mimetype not in ("text/html", "text/markdown") or not isinstance(data, str):
        return []
    parser = ChartElements()
    parser.feed(data)
    return parser.specs


def chart_specs(run):
    """All Vega-Lite specs of a `NotebookRun`, in the order the report page shows them."""
    return [spec for cell in run.cells for output in cell["outputs"] if output["type"] == "data"
            for mimetype, data in output["data"].items() for spec in specs_in(mimetype, data)]


def write_chart_files(specs, folder):
    """``chart_NN.svg`` and ``chart_NN.png`` in `folder` for every spec; returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for number, spec in enumerate(specs, start=1):
        svg, png = folder / f"chart_{number:02d}.svg", folder / f"chart_{number:02d}.png"
        svg.write_text(vl_convert.vegalite_to_svg(spec, vl_version=VEGA_LITE_VERSION))
        png.write_bytes(vl_convert.vegalite_to_png(spec, vl_version=VEGA_LITE_VERSION, scale=PNG_SCALE))
        written += [svg, png]
    return written
