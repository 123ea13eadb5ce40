"""Every marimo notebook passes `marimo check --strict` and runs top to bottom as a plain script; the course
notebooks print a summary when run so, end with a link to the next one and have a gallery card; the reports of
05 and 08 run their button-gated cells."""

import functools
import re
import subprocess
import sys

import pytest

from browser import ROOT
from notebook_runs import make_report, notebook_env, run_script

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.py"))
# what each course notebook prints when it runs as a script (the start of its summary), and the next notebook
SUMMARIES = {
    "00_tour.py": ("recall probe: memory = linear, bias = l2", "01_memory_as_regression"),
    "01_memory_as_regression.py": ("capacity sweep (keys:", "02_attentional_bias"),
    "02_attentional_bias.py": ("noisy stream:", "03_retention"),
    "03_retention.py": ("forgetting curves:", "04_optimizers"),
    "04_optimizers.py": ("stability over η:", "05_deep_memory"),
    "05_deep_memory.py": ("capacity sweep (P = 8 passes", "06_playground"),
    "06_playground.py": ("trained gated_deltanet on MQAR, finished after 8 of 8 steps", "07_armt_babilong"),
    "07_armt_babilong.py": ("model: a tiny quick-mode ARMT", "08_kernels"),
    "08_kernels.py": ("kernel check: gated_deltanet", "09_sweep_explorer"),
    "09_sweep_explorer.py": ("sweep results: data/sweeps/mqar_axes.parquet (shipped)", "10_claims"),
    "10_claims.py": ("claims results: data/claims/results.parquet (shipped)", None),
}

pytestmark = pytest.mark.slow


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks/*.py found"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_marimo_check_strict(notebook):
    result = subprocess.run(
        [sys.executable, "-m", "marimo", "check", "--strict", str(notebook)],
        cwd=ROOT, env=notebook_env(), capture_output=True, text=True, timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"marimo check --strict failed:\n{output}"
    assert "warning" not in output.lower(), f"marimo check reported warnings:\n{output}"


@pytest.fixture(scope="module")
def run_as_script(tmp_path_factory):
    """Each notebook run once as a script, saving its runs in a runs directory of its own."""
    runs = tmp_path_factory.mktemp("runs")
    return functools.cache(lambda notebook: (run_script(notebook, env={"MIRAS_LITE_RUNS": str(runs)}), runs))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_runs_as_script(notebook, run_as_script):
    result, _ = run_as_script(notebook)
    assert result.returncode == 0, f"{notebook.name} exited {result.returncode}:\n{result.stderr[-4000:]}"
    assert "Traceback" not in result.stderr, f"{notebook.name} printed a traceback:\n{result.stderr[-4000:]}"


@pytest.mark.parametrize("name", SUMMARIES)
def test_script_prints_what_it_computed(name, run_as_script):
    """`python notebooks/NAME.py` prints a short summary of its key numbers, readably formatted (no float
    printed to 10 or more digits)."""
    result, _ = run_as_script(ROOT / "notebooks" / name)
    assert result.returncode == 0, result.stderr[-4000:]
    phrase = SUMMARIES[name][0]
    assert phrase in result.stdout, f"{name} did not print {phrase!r}:\n{result.stdout[-2000:]}"
    summary = result.stdout[result.stdout.index(phrase):]
    assert not re.search(r"\d\.\d{10}", summary), summary


def test_a_script_keeps_its_quick_run_apart(run_as_script):
    """The playground's 8-step run as a script is saved under runs/quick/, never among the playground's runs that a
    page or a report picks by default."""
    result, runs = run_as_script(ROOT / "notebooks" / "06_playground.py")
    assert result.returncode == 0, result.stderr[-4000:]
    assert [p.parent.name for p in runs.glob("*/*") if p.name.endswith("-gated_deltanet")] == ["quick"]
    assert f"saved in {runs / 'quick'}/" in result.stdout


@pytest.mark.parametrize("name", [name for name, (_, following) in SUMMARIES.items() if following])
def test_ends_with_a_link_to_the_next_notebook(name):
    """The last cell links the next notebook (`ui.course_link`: `?file=NEXT.py` in the app, `NEXT.html` in a
    report)."""
    next_stem = SUMMARIES[name][1]
    assert (ROOT / "notebooks" / f"{next_stem}.py").is_file()
    cells = (ROOT / "notebooks" / name).read_text(encoding="utf-8").split("@app.cell")
    last = cells[-1]
    assert "**Next:**" in last, last
    assert f'course_link("{next_stem}.py")' in last, last


@pytest.mark.parametrize("mode,link", [(None, "?file=01_memory_as_regression.py"),
                                       ("shipped", "01_memory_as_regression.html"),
                                       ("full", "01_memory_as_regression.html")])
def test_course_links_lead_to_the_app_page_or_the_report_beside(monkeypatch, mode, link):
    from miras_lite.ui import course_link

    if mode is None:
        monkeypatch.delenv("MIRAS_LITE_REPORT", raising=False)
    else:
        monkeypatch.setenv("MIRAS_LITE_REPORT", mode)
    assert course_link("01_memory_as_regression.py") == link


def test_gallery_cards(monkeypatch, tmp_path):
    """The app's gallery shows each course notebook's docstring as its card (one title, one description) and
    a picture of its place in the course instead of marimo's placeholder, which repeats the title."""
    from marimo._metadata import opengraph

    from miras_lite.app import CARD_PICTURE, install_gallery_cards, notebook_card, write_course_pictures

    monkeypatch.setattr(opengraph, "read_opengraph_from_file", opengraph.read_opengraph_from_file)
    install_gallery_cards()
    for name in SUMMARIES:
        title, description = notebook_card(ROOT / "notebooks" / name)
        assert title.startswith(name[:2] + " · ") and description and "\n" not in description, (title, description)
        copy = tmp_path / name
        copy.write_text((ROOT / "notebooks" / name).read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "11_untitled.py").write_text("import marimo\n\napp = marimo.App()\n", encoding="utf-8")
    pictures = write_course_pictures([tmp_path])
    assert len(pictures) == len(SUMMARIES) + 1
    assert all(p.read_bytes().startswith(b"\x89PNG") and p.name == CARD_PICTURE for p in pictures)
    card = opengraph.resolve_opengraph_metadata(str(tmp_path / "05_deep_memory.py"))
    assert (card.title, card.description) == notebook_card(tmp_path / "05_deep_memory.py")
    assert card.image == f"__marimo__/assets/05_deep_memory/{CARD_PICTURE}"
    untitled = opengraph.resolve_opengraph_metadata(str(tmp_path / "11_untitled.py"))
    assert untitled.title == "11 Untitled" and untitled.description is None  # marimo's defaults


@pytest.mark.parametrize("name,shown", [
    ("05_deep_memory.py", ("Capacity sweep: P = 16 passes", "N up to 64, 2 seeds")),
    ("08_kernels.py", ("kernel and torch <strong>agree</strong>", "T = 24, Dk = Dv = 8", "Throughput ")),
])
def test_report_runs_the_gated_cells(name, shown, tmp_path):
    """A report (shipped mode, not the quick mode of scripts) runs 05's capacity sweep and 08's kernel check and
    benchmark at the settings the page shows: the page has their results, not a "Press ..." prompt."""
    output = tmp_path / "report.html"
    done = make_report(ROOT / "notebooks" / name, output)
    assert done.returncode == 0, done.stderr[-3000:]
    page = output.read_text(encoding="utf-8")
    assert "Press" not in page and "quick run" not in page
    for text in shown:
        assert text in page, text


def _playground():
    import importlib.util

    spec = importlib.util.spec_from_file_location("playground", ROOT / "notebooks" / "06_playground.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name,least_mean_recall", [("gated_deltanet", 0.8), ("titans", None)])
def test_memory_section_recalls_what_a_trained_model_wrote(name, least_mean_recall):
    """The playground's "memory filling up" replay on a shipped model: one recall (cosine between what the
    memory returns for a written key and the value written) per token of the context, in [-1, 1]; the delta
    rule's last layer recalls the context well (0.96 measured); the weights picture is at most 32 × 32 cells,
    also for an MLP memory (titans' last layer recalls less directly: 0.17 measured, no bound asserted)."""
    import torch

    from miras_lite.runs import load_run

    run = load_run(ROOT / "data" / "models" / name)
    model = run.model.eval()
    tokens, _ = run.config.task.build(0).batch(1, 123)
    inputs = {}
    hooks = [block.mixer.register_forward_pre_hook(lambda _m, args, i=i: inputs.__setitem__(i, args[0]))
             for i, block in enumerate(model.blocks)]
    with torch.no_grad():
        model(tokens)
    for hook in hooks:
        hook.remove()
    last = len(model.blocks) - 1
    context = 2 * run.config.task.num_kv_pairs
    recalls, weights = _playground().memory_after(model.blocks[last].mixer, inputs[last], 0, context)
    assert recalls["position"].to_list() == list(range(context))
    assert recalls["recall"].is_between(-1.0001, 1.0001).all()
    if least_mean_recall is not None:
        assert recalls["recall"].mean() > least_mean_recall, recalls
    assert weights.height <= 32 * 32
