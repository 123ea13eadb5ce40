// The report's only script. The cells' HTML is marimo's own, with marimo's custom elements in it: each
// element is defined here to draw a static picture of itself, except charts (vega-embed: tooltips and
// selections work) and math (KaTeX). Both libraries come from data: URLs (the import map).
import vegaEmbed from "vega-embed";
import katex from "katex";

// marimo writes every data-* attribute as JSON
const attribute = (element, name) => JSON.parse(element.dataset[name] ?? "null");
const make = (tag, properties) => Object.assign(document.createElement(tag), properties);

function showError(target, message) {
  target.replaceChildren(make("div", { className: "report-error", textContent: message }));
}

async function drawChart(target, spec) {
  const chart = make("div", { className: "chart" });
  target.replaceChildren(chart);
  try {
    await vegaEmbed(chart, spec, {
      renderer: "svg",
      actions: { export: true, source: false, compiled: false, editor: false },
    });
    chart.dataset.drawn = "true";
  } catch (error) {
    showError(chart, `chart not drawn: ${error.message}`);
  }
}

function renderMime(target, mime, data) {
  if (/^application\/vnd\.vegalite\.v\d+\+json$/.test(mime)) {
    drawChart(target, typeof data === "string" ? JSON.parse(data) : data);
  } else if (mime === "text/html" || mime === "text/markdown") {
    target.innerHTML = data;
  } else if (mime === "image/svg+xml" && !data.startsWith("data:")) {
    target.innerHTML = data;
  } else if (mime.startsWith("image/")) {
    target.replaceChildren(make("img", { src: data }));
  } else {
    const text = typeof data === "string" ? data : JSON.stringify(data, null, 2);
    target.replaceChildren(make("pre", { textContent: text }));
  }
}

// connectedCallback runs again when an element is moved: draw each element once
class StaticElement extends HTMLElement {
  connectedCallback() {
    if (this.dataset.reportDrawn) return;
    this.dataset.reportDrawn = "true";
    this.draw();
  }
}

class Tex extends StaticElement {
  // marimo's markup: ||(x||) inline, ||[x||] display
  draw() {
    const source = this.textContent.trim();
    katex.render(source.slice(3, -3), this, { displayMode: source.startsWith("||["), throwOnError: false });
  }
}

// mo.ui.altair_chart (its Arrow data already turned into JSON values by chart_data.py)
class Chart extends StaticElement {
  draw() {
    drawChart(this, attribute(this, "spec"));
  }
}

class MimeOutput extends StaticElement {
  draw() {
    renderMime(this, attribute(this, "mime"), attribute(this, "data"));
  }
}

// <span class="control">label … value</span>
function controlBox(label, value, ...between) {
  const box = make("span", { className: "control" });
  box.append(make("span", { className: "control-label", ...label }), ...between,
    make("span", { className: "control-value", textContent: value }));
  return box;
}

// A control shows its label (marimo's HTML: markdown, maybe math) and the value the notebook ran with.
const shownValue = {
  "marimo-checkbox": (value) => (value ? "☑" : "☐"),
  "marimo-dropdown": (value) => value.join(", ") || "none",
  "marimo-multiselect": (value) => value.join(", ") || "none",
  "marimo-range-slider": (value) => value.join(" – "),
};

class Control extends StaticElement {
  draw() {
    const show = shownValue[this.localName] ?? String;
    const label = { innerHTML: attribute(this, "label") ?? "" };
    this.replaceChildren(controlBox(label, show(attribute(this, "initialValue"))));
  }
}

class Button extends StaticElement {
  draw() {
    this.replaceChildren(make("button", { disabled: true, innerHTML: attribute(this, "label") ?? "" }));
  }
}

class Progress extends StaticElement {
  draw() {
    const [title, done, total] = ["title", "progress", "total"].map((name) => attribute(this, name));
    const bar = make("progress", { value: done, max: total });
    this.replaceChildren(controlBox({ textContent: title ?? "" }, `${done}/${total}`, bar));
  }
}

// a fraction to 4 significant digits (a report is read, not computed with)
const shortNumber = (value) => (Number.isInteger(value) ? String(value) : String(Number(value.toPrecision(4))));

class Table extends StaticElement {
  draw() {
    const data = attribute(this, "data");
    if (!data.startsWith("[")) {
      showError(this, "table data is not embedded in the report");
      return;
    }
    const rows = JSON.parse(data);
    const columns = (attribute(this, "fieldTypes") ?? []).map(([name]) => name);
    const names = columns.length ? columns : Object.keys(rows[0] ?? {});
    const table = make("table", { className: "data-table" });
    table.createTHead().insertRow().append(...names.map((name) => make("th", { textContent: name })));
    const body = table.createTBody();
    for (const row of rows) {
      const line = body.insertRow();
      for (const name of names) {
        const value = row[name];
        const cell = line.insertCell();
        if (typeof value === "number") {
          Object.assign(cell, { textContent: shortNumber(value), className: "number" });
        } else {
          cell.textContent = value ?? "";
        }
      }
    }
    const total = attribute(this, "totalRows");  // marimo embeds one page of a long table
    if (typeof total === "number" && total > rows.length) {
      table.createCaption().textContent = `the first ${rows.length} of ${total} rows`;
    }
    this.replaceChildren(table);
  }
}

const elements = {
  "marimo-tex": Tex,
  "marimo-mime-renderer": MimeOutput,
  "marimo-vega": Chart,
  "marimo-table": Table,
  "marimo-button": Button,
  "marimo-progress": Progress,
};
const controls = ["slider", "range-slider", "number", "dropdown", "multiselect", "radio", "checkbox", "switch",
  "text", "text-area"];
for (const name of controls) {
  elements[`marimo-${name}`] = Control;
}
for (const [name, element] of Object.entries(elements)) {
  // one class per tag name: customElements refuses a constructor registered twice
  customElements.define(name, class extends element {});
}
document.body.dataset.reportReady = "true";
