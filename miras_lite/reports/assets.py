"""The report's scripts and styles, all taken from installed packages: nothing is fetched at run time,
and the page loads them from ``data:`` URLs, so it renders with no network at all.

* Vega, Vega-Lite and vega-embed: vl-convert's JavaScript bundle (the libraries it renders with).
* KaTeX (module, stylesheet and fonts): the frontend build inside the marimo wheel (``marimo/_static``),
  the same KaTeX marimo renders ``mo.md`` math with.
"""

from __future__ import annotations

import base64
import re
from functools import cache
from pathlib import Path

import marimo
import vl_convert

MARIMO_STATIC = Path(marimo.__file__).parent / "_static"
ASSETS = MARIMO_STATIC / "assets"
VEGA_LITE_VERSION = "6.4"  # the schema altair 6.3 writes
# marimo's `katex-*.js` entry point: it re-exports KaTeX from a chunk of the build as its default export
KATEX_ENTRY = re.compile(r'import\{\w+ as \w+\}from"\./(katex-[\w-]+\.js)";export\{\w+ as default\};\s*')


def data_url(mimetype, content):
    return f"data:{mimetype};base64,{base64.b64encode(content).decode('ascii')}"


@cache
def vega_embed_module():
    """A data URL of an ES module whose default export is ``vegaEmbed`` (Vega and Vega-Lite inside)."""
    bundle = vl_convert.javascript_bundle(snippet="export default vegaEmbed;", vl_version=VEGA_LITE_VERSION)
    return data_url("text/javascript", bundle.encode())


@cache
def katex_module():
    """A data URL of an ES module whose default export is KaTeX: marimo's entry point, its import of the
    chunk replaced by the chunk's own data URL."""
    for entry in sorted(ASSETS.glob("katex-*.js")):
        text = entry.read_text()
        if match := KATEX_ENTRY.fullmatch(text):
            chunk = data_url("text/javascript", (ASSETS / match[1]).read_bytes())
            return data_url("text/javascript", text.replace(f"./{match[1]}", chunk).encode())
    raise RuntimeError(f"no KaTeX entry point (katex-*.js re-exporting a chunk) in {ASSETS}: "
                       "this module reads the layout of marimo 0.25.2's frontend build")


def top_level_rules(css):
    """Split a stylesheet into its top-level rules (an ``@media`` block stays whole)."""
    rules, depth, start = [], 0, 0
    for i, char in enumerate(css):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                rules.append(css[start:i + 1])
                start = i + 1
    return rules


def woff2_only(font_face):
    """An ``@font-face`` rule whose ``src`` is its woff2 file alone, inlined (every Chromium reads woff2)."""
    url = re.search(r'url\(([^)]+)\)format\("woff2"\)', font_face)[1]
    if url.startswith("./"):
        url = data_url("font/woff2", (ASSETS / url[2:]).read_bytes())
    return re.sub(r'src:(url\([^)]*\)(format\("\w+"\))?,?)+', lambda _: f'src:url({url})format("woff2")', font_face)


@cache
def katex_css():
    """KaTeX's rules from marimo's stylesheet, with their fonts inlined."""
    sheet = re.search(r"assets/(index-[\w-]+\.css)", (MARIMO_STATIC / "index.html").read_text())[1]
    rules = [rule for rule in top_level_rules((ASSETS / sheet).read_text()) if "katex" in rule.lower()]
    if not rules:
        raise RuntimeError(f"no KaTeX rules in {ASSETS / sheet}")
    return "".join(woff2_only(rule) if rule.startswith("@font-face") else rule for rule in rules)
