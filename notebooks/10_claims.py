"""10 · Do the papers' claims hold here?

Claims of the Titans, Miras, ARMT and Zoology papers, tested with small models: the paper's finding beside ours, three seeds each, and a verdict.
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium", app_title="miras-lite: the papers' claims")

with app.setup(hide_code=True):
    from pathlib import Path

    import altair as alt
    import marimo as mo
    import polars as pl

    import miras_lite as ml
    from benchmarks.claims import MARGIN, all_claims, collect, summary, train_row, verdicts
    from miras_lite.ui import quick_mode, report_mode, runs_root, script_print

    REPORT = report_mode()
    QUICK = quick_mode()
    ROOT = Path(ml.__file__).resolve().parents[1]
    SHIPPED = ROOT / "data" / "claims"  # rebuilt by `python -m benchmarks.claims --dir data/claims --workers 2`
    CLAIMS = all_claims()
    # what the shipped results (data/claims/results.parquet) show, claim by claim
    DISCUSSION = {
        "titans_ablation": (
            "every variant reaches 0.90–0.99: with 32 tokens and at most 8 pairs the memory never fills up, so "
            "forgetting has nothing to free and momentum little to smooth. The seeds disagree on the sign of each "
            "difference, and the variant without both scores highest. The paper measured long sequences, where the "
            "memory must forget; this task is too short to need it."),
        "moneta_pq": (
            "p = 3 is no better than p = 2 here (0.92 against 0.96 on average). Without the ℓq normalisation "
            "(q = 2) one seed of three fails (0.35) while another matches q = 4: normalising makes training more "
            "reliable, not better on every seed. p = 4 does not learn within the budget (0.13): the gradient of "
            "|e|^p / p is |e|^(p−1), tiny for small errors, so the memory's updates stall. The paper's p = 3 is a "
            "tuned choice, not \"the larger the better\"."),
        "robust_biases": (
            "one outlier among three writes drags the ℓ2 memory from 0.96 (the control, every key written once) "
            "to 0.27. The gradient of ½‖e‖² grows with the error, so the outlier, the largest error, moves the "
            "memory most, and the delta rule keeps what it wrote last. Huber and ℓ1 (p = 1) cap the step any one "
            "error can take, and both beat ℓ2 on every seed. The robust loss wins on two seeds and ties on the "
            "third, where neither learns. Near this budget every model depends on the seed (Huber: 0.32 to 0.98), "
            "which is why three seeds are the least a verdict needs."),
        "armt_gamma": (
            "both versions answer for a single key (0.4 to 0.9) but stay near 0.15–0.3 with 2 to 4 keys. That is "
            "about what picking one of the key's 4 written values at random gives (0.25): this small ARMT has "
            "learned where a key's values are, not which was written last, so there is little for γ to correct "
            "yet, and the seeds disagree on the sign. What γ does is checked exactly in the tests: without it a "
            "key written twice counts twice in z, and its read is halved."),
        "miras_niah": (
            "in 600 steps most models do not learn the passkey even at the 128 tokens they train on: yaad, memora "
            "and titans end every seed near a guess (loss about 2.0–2.3; ln 10 ≈ 2.3 guesses a digit). Among the "
            "runs that learn, the difference is how far they read. Moneta learns on two seeds and reads every "
            "passkey at 1K tokens on both, 0.8 and 0.3 of them at 4K. gated_deltanet learns on one seed (loss "
            "0.004) but reads 0.05 at 1K. Attention learns on one seed and reads 0.88 at 1K, 0.55 at 2K and none "
            "at 4K, past the positions it trained on. So Moneta above Gated DeltaNet shows on two seeds of three; "
            "for Yaad and Memora this budget is too small to judge."),
        "zoology_mqar": (
            "attention reaches 0.99 in every cell on every seed, as Zoology found. The gap Zoology saw for "
            "efficient models does not show for gated_deltanet at width 64: its delta rule recalls 16 pairs at "
            "0.994–0.998, within 0.01 of attention. Zoology's efficient models (H3, Hyena, RWKV, ...) had no delta "
            "rule, and Gated DeltaNet was designed for this kind of recall. Wider is not better here: at width 128 "
            "gated_deltanet never leaves the guessing loss on one seed per cell, because the learning rate tuned "
            "at width 64 is too large for it; Zoology sweeps the learning rate for every model and width, which "
            "two cores cannot afford. Moneta does not learn the small cell in 800 steps (0.05): with 8192 tokens "
            "to tell apart, its MLP memory needs several times that budget."),
    }


@app.cell(hide_code=True)
def _():
    mo.md(rf"""
    # Do the papers' claims hold here?

    The papers behind this course make claims such as "momentum helps the memory" or "an $\ell_3$ loss
    beats the usual $\ell_2$ one". They measured them on models with hundreds of millions of parameters
    trained on billions of tokens. Here every claim is retested with small models (two layers) on tasks a
    laptop trains in a minute or two: multi-query associative recall (MQAR), MQAR where every key is
    written several times, and a needle hidden in a haystack. You can see which findings already show at
    this scale.

    Every model compared in a claim trains with **the same budget** (steps, batch, task) and **the same
    three seeds**. Its score is a **recall**: the share of held-out questions it answers right (each chart
    says what it averages over). A verdict compares two models seed by seed, or one model with a level the
    paper reports:

    - **reproduced**: on every seed the difference goes the paper's way by more than {MARGIN} (or the
      model reaches the level);
    - **not reproduced**: on every seed it goes the other way by more than {MARGIN} (or stays below the
      level);
    - **inconclusive**: the seeds disagree, or the difference is within {MARGIN}.

    **What you will learn:** how to turn a paper's sentence into a controlled comparison, why one seed is
    not enough, and which parts of the Miras design space matter on a task a laptop can train.
    """)
    return


@app.function
def result_files():
    """The results this page can show, by label: those of a claims run under runs/claims (if any), then the
    shipped ones."""
    saved = runs_root() / "claims" / "results.parquet"
    files = {str(saved): saved} if saved.is_file() else {}
    shipped = SHIPPED / "results.parquet"
    return {**files, **({"data/claims/results.parquet (shipped)": shipped} if shipped.is_file() else {})}


@app.cell
def _():
    result_paths = result_files()
    results_choice = mo.ui.dropdown(options=list(result_paths), value=next(iter(result_paths), None),
                                    label="results")
    results_choice
    return result_paths, results_choice


@app.cell
def _(result_paths, results_choice):
    mo.stop(results_choice.value is None, mo.callout(mo.md(
        "No results yet: run `python -m benchmarks.claims --workers 2` (about two hours on two cores)."),
        kind="info"))
    results = pl.read_parquet(result_paths[results_choice.value])
    return (results,)


@app.function
def claim_chart(claim, rows):
    """The score of each model of `claim`: one point per seed, a tick at the mean, chance dashed."""
    base = alt.Chart(rows).encode(
        y=alt.Y("model:N", sort=list(claim.runs), title=None),
        x=alt.X("recall:Q", title=claim.metric, scale=alt.Scale(domain=[0, 1])))
    seeds = base.mark_circle(size=60, opacity=0.7).encode(
        color=alt.Color("seed:N", title="seed"),
        tooltip=["model:N", "seed:N", alt.Tooltip("recall:Q", format=".3f")])
    means = alt.Chart(summary(rows)).mark_tick(thickness=3, size=22, color="black").encode(
        y=alt.Y("model:N", sort=list(claim.runs)), x=alt.X("mean:Q"),
        tooltip=["model:N", alt.Tooltip("mean:Q", format=".3f", title="mean over seeds")])
    rule = alt.Chart(pl.DataFrame({"chance": [claim.chance_level()]})).mark_rule(
        strokeDash=[4, 4], color="gray").encode(x="chance:Q")
    return (rule + seeds + means).properties(width=520, height=28 * len(claim.runs), title=claim.source)


@app.function
def length_chart(claim, rows):
    """Accuracy by context length, per model: the mean over seeds (the needle claim reads several lengths)."""
    curve = (rows.select("model", "seed", "accuracy_by_length").explode("accuracy_by_length").unnest("accuracy_by_length")
             .group_by("model", "context_length").agg(pl.col("accuracy").mean()))
    return alt.Chart(curve).mark_line(point=True).encode(
        x=alt.X("context_length:Q", scale=alt.Scale(type="log", base=2), title="context length (tokens)"),
        y=alt.Y("accuracy:Q", scale=alt.Scale(domain=[0, 1]), title="needle accuracy (mean over seeds)"),
        color=alt.Color("model:N", sort=list(claim.runs)),
        tooltip=["model:N", "context_length:Q", alt.Tooltip("accuracy:Q", format=".3f")],
    ).properties(width=520, height=220)


@app.function
def paper_table(claim, rows):
    """The paper's figure beside our mean and spread, for the models the paper gives a figure for."""
    ours = summary(rows).filter(pl.col("model").is_in(list(claim.paper)))
    lines = [f"| {r['model']} | {claim.paper[r['model']]:.3f} | {r['mean']:.3f} ({r['min']:.3f}–{r['max']:.3f}) |"
             for r in ours.iter_rows(named=True)]
    return mo.md("| model | the paper | here: mean (min–max over seeds) |\n|---|---|---|\n" + "\n".join(lines))


@app.function
def claim_section(claim, results):
    """A claim: what the paper found, our score per model and seed, the paper's figures, the verdicts and what
    we make of them."""
    rows = results.filter(pl.col("claim") == claim.name)
    if rows.height == 0:
        return mo.vstack([mo.md(f"### {claim.source}\n\n**The paper:** {claim.says}\n\n_Not measured in these "
                                "results._")])
    judged = verdicts([claim], rows)
    seeds = ", ".join(map(str, sorted(rows["seed"].unique())))
    return mo.vstack([
        mo.md(f"### {claim.source}\n\n**The paper:** {claim.says}\n\n**Here:** {claim.budget()}; seeds {seeds}."),
        claim_chart(claim, rows),
        *([length_chart(claim, rows)] if "accuracy_by_length" in rows.columns
          and rows["accuracy_by_length"].is_not_null().any() else []),
        *([paper_table(claim, rows)] if claim.paper else []),
        mo.md("\n".join(f"- **{r['expects']}: {r['verdict']}.** {r['why']}" for r in judged.iter_rows(named=True))),
        *([mo.md(f"**Why:** {DISCUSSION[claim.name]}")] if claim.name in DISCUSSION else []),
    ])


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    ## The claims

    Each section states what the paper found and the budget we trained with, then shows our recall per
    model: a dot per seed and a black tick at the mean; the dashed line is a model that guesses. Where the
    paper gives numbers, a table puts them beside ours (the paper's models are a thousand times larger,
    so compare the order, not the values). Below, each expectation gets its verdict and the per-seed
    numbers behind it, and "Why" says what we make of the shipped results.
    """)
    return


@app.cell
def _(results, results_choice):
    _judged = verdicts(list(CLAIMS.values()), results)
    script_print(f"claims results: {results_choice.value}, {results.height} rows",
                 *(f"{r['claim']}: {r['expects']}: {r['verdict']}" for r in _judged.iter_rows(named=True)))
    mo.vstack([claim_section(claim, results) for claim in CLAIMS.values()], gap=2)
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    ## Rerun one row

    Pick a model of a claim and a seed, and train it again here, exactly as the claims benchmark does
    (`python -m benchmarks.claims`). Your row is kept under `runs/claims/` and shown next to the results
    above: with another seed, does the verdict still hold?
    """)
    return


@app.cell
def _():
    row_choice = mo.ui.dropdown(options=[f"{c.name} / {m}" for c in CLAIMS.values() for m in c.runs],
                                value="titans_ablation / titans", label="row")
    seed_choice = mo.ui.number(start=0, stop=99, value=3, label="seed")
    rerun = mo.ui.run_button(label="Train this row")
    if REPORT:
        _controls = mo.md("_This page is a report: it shows the results file above and trained nothing. Open the "
                          "notebook in the app (`make app`) to rerun a row._")
    else:
        _controls = mo.hstack([row_choice, seed_choice, rerun], justify="start")
    _controls
    return rerun, row_choice, seed_choice


@app.cell
def _(rerun, row_choice, seed_choice):
    mo.stop(REPORT is not None, None)
    mo.stop(not (rerun.value or QUICK), mo.md("Press **Train this row** (a minute or two on one core)."))
    _claim, _model = row_choice.value.split(" / ", 1)
    # quick mode (a script, the tests) trains a tiny version, kept apart, so that the page's code runs in seconds
    _folder = runs_root() / "quick" / "claims" if QUICK else runs_root() / "claims"
    with mo.status.spinner(title=f"training {_model}, seed {seed_choice.value}"):
        _row = train_row(_claim, _model, int(seed_choice.value), _folder, reduced_runs=QUICK)
    _mine = collect(_folder).filter((pl.col("claim") == _claim) & (pl.col("model") == _model))
    script_print(f"retrained {_claim} / {_model}, seed {_row['seed']}: recall {_row['recall']:.3f}"
                 + (" (quick mode: a tiny model)" if QUICK else ""))
    mo.vstack([
        mo.md(f"**{_model}, seed {_row['seed']}:** recall **{_row['recall']:.3f}** in {_row['train_s']:.0f} s"
              + (" (quick mode: a tiny model on a tiny task, not a result)" if QUICK else "")
              + f". Saved rows of this model in `{_folder}`:"),
        mo.ui.table(_mine.select("seed", pl.col("recall").round(3), pl.col("train_s").round(1)), selection=None,
                    show_download=False),
    ])
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    ## Try this

    - **More seeds.** Run `python -m benchmarks.claims --claims titans_ablation --seeds 0 1 2 3 4 --workers 2`:
      the rows already measured are skipped, and a verdict that was inconclusive may settle either way.
    - **A longer budget.** The models that have not learned by the end of their budget score near chance.
      Is a claim about what a model *can* learn or about how *fast* it learns? Double `steps` in
      the claim's file under `benchmarks/claims/` and compare.
    - **Your own claim.** A claim is a few lines: a dictionary of runs and what you expect of them.
    """)
    return


if __name__ == "__main__":
    app.run()
