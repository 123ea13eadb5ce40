"""07 · ARMT on BABILong

A transformer that reads a long story segment by segment and carries an associative memory between them: accuracy up to a million tokens at a fixed memory cost.
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium", app_title="miras-lite: ARMT on BABILong")

with app.setup(hide_code=True):
    import html
    import sys
    import time

    import altair as alt
    import marimo as mo
    import polars as pl
    import psutil
    import torch

    from miras_lite.tasks import BabiLong, babilong_accuracy, babilong_sample
    from miras_lite.config import ARMTConfig, BabiLongConfig, FitConfig, RunConfig
    from miras_lite.runs import SHIPPED, load_run
    from miras_lite.ui import block_average, course_link, quick_mode, report_mode, script_print

    QUICK = quick_mode()
    REPORT = report_mode()
    # One thread, as the benchmarks: these small matrices gain nothing from two, and on a busy machine a second
    # thread made streaming over 100 times slower here.
    torch.set_num_threads(1)
    # A small ARMT: 2 layers of width 32, segments of 64 tokens + 8 memory tokens, the paper's DPFP memory.
    ARMT_CONFIG = dict(d_model=32, n_layers=2, num_heads=2, segment_size=64, num_mem_tokens=8, memory="dpfp")
    LENGTHS = {"1K": 1024, "4K": 4096, "16K": 16_384, "64K": 65_536, "256K": 262_144, "1M": 1_048_576}
    LONG_SAMPLES = 2  # samples per length above 64K tokens: each 1M-token sample costs 10–20 s
    # Quick mode (a script, the browser tests): a tiny training run, and accuracy on a few short stories
    QUICK_RUN = dict(steps=8, batch_size=8, test_examples=16)
    QUICK_LENGTHS = ((128, 512, 2048), 3)  # lengths, samples per length
    # The trained ARMT the project ships (the recipe of `benchmarks.armt`) and its accuracy by context length,
    # measured by `python -m benchmarks.armt --evaluate data/models/armt-qa1 --out data/models/armt-qa1/lengths.parquet`.
    SHIPPED_RUN = load_run(SHIPPED / "armt-qa1")
    SHIPPED_LENGTHS = pl.read_parquet(SHIPPED_RUN.path / "lengths.parquet")


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    # ARMT on BABILong: a memory that reads a million tokens

    **BABILong** hides a short bAbI story ("mary went to the kitchen .") in a long stream of unrelated
    filler text and asks a question about it at the very end. A transformer would need attention over the
    whole context; the **Associative Recurrent Memory Transformer** (ARMT) instead reads the context in
    segments and carries only a small *associative memory* from one segment to the next — a test-time
    memory in the sense of this course, written once per segment.

    **What you will learn**

    - what a BABILong-style sample looks like, and where its facts sit in contexts of 1K to 1M tokens;
    - how ARMT reads and writes its memory (a delta rule over DPFP features);
    - how far a trained ARMT (the one this project ships, or a short run of your own) gets on qa1, and how
      its accuracy holds up when the same stories are stretched to 1M tokens (streamed, never stored);
    - what the memory looks like after every segment, and why time and memory per segment stay flat.
    """)
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    ## 1. A sample

    `babilong_sample(task, context_length, seed)` simulates a story (people move between places, pick up
    and drop objects), asks a question whose answer follows from it — qa1: where is a person (their last
    move); qa2: where is an object; qa3: where was an object before a place — and spreads the story's
    sentences at random offsets through filler sentences. Below: the facts are <mark>highlighted</mark>,
    the question is blue, the answer green (the model must produce it after `<ans>`).
    """)
    return


@app.cell
def _():
    task_choice = mo.ui.dropdown(options=["qa1", "qa2", "qa3"], value="qa1", label="task")
    sample_length = mo.ui.slider(50, 800, step=50, value=300, label="context length", show_value=True)
    sample_seed = mo.ui.number(start=0, stop=10_000, value=3, label="seed")
    mo.hstack([task_choice, sample_length, sample_seed], justify="start")
    return sample_length, sample_seed, task_choice


@app.function
def sample_html(sample):
    """`sample`'s context, question and answer as HTML: fact tokens in <mark>, question blue, answer green."""
    words = sample.tokenizer.id_to_token
    fact_of = {}
    for number, (start, ids) in enumerate(zip(sample.fact_positions, sample.fact_ids), 1):
        fact_of.update({start + j: number for j in range(len(ids))})
    pieces, open_fact = [], None
    for position, token in enumerate(sample.context().tolist()):
        fact = fact_of.get(position)
        if fact != open_fact:
            pieces.append("</mark>" if open_fact else "")
            pieces.append(f'<mark title="fact {fact}">' if fact else "")
            open_fact = fact
        pieces.append(html.escape(words[token]) + " ")
    pieces.append("</mark>" if open_fact else "")
    question = html.escape(sample.tokenizer.decode(sample.question_ids))
    return (
        '<div style="max-height: 240px; overflow-y: auto; font-family: monospace; line-height: 1.7; '
        'border: 1px solid #ddd; padding: 8px">'
        + "".join(pieces)
        + f'<b style="color: #1f5fbf">{question}</b> <b style="color: #1a7f37">{html.escape(sample.answer)}</b></div>'
    )


@app.cell
def _(sample_length, sample_seed, task_choice):
    shown = babilong_sample(task_choice.value, sample_length.value, seed=int(sample_seed.value))
    mo.vstack(
        [
            mo.Html(sample_html(shown)),
            mo.md(
                f"{len(shown.facts)} facts in {shown.context_length} context tokens "
                f"({shown.filler_length} filler); vocabulary of {shown.tokenizer.vocab_size} words."
            ),
        ]
    )
    return (shown,)


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    The story does **not** depend on the context length: the same seed gives the same facts and question
    at every length, only spread further apart. That is what makes "accuracy vs context length" a fair
    curve. Where do the facts of this story land in a context of 1K ... 1M tokens? (The context is
    generated lazily, segment by segment, so even the 1M-token sample costs nothing to describe.)
    """)
    return


@app.cell(hide_code=True)
def _(sample_seed, task_choice):
    _rows = []
    for _name, _length in LENGTHS.items():
        _sample = babilong_sample(task_choice.value, _length, seed=int(sample_seed.value))
        _rows += [
            {"context": _name, "length": _length, "fact": i + 1, "position": p, "relative": p / _length,
             "sentence": f}
            for i, (p, f) in enumerate(zip(_sample.fact_positions, _sample.facts))
        ]
    (
        alt.Chart(pl.DataFrame(_rows))
        .mark_tick(thickness=2, size=18)
        .encode(
            x=alt.X("relative:Q", title="position in the context (share of its length)",
                    scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format=".0%", tickCount=10)),
            y=alt.Y("context:N", sort=list(LENGTHS), title="context length"),
            color=alt.Color("fact:O", title="fact", scale=alt.Scale(scheme="viridis")),
            tooltip=["context:N", "fact:Q", "position:Q", "sentence:N"],
        )
        .properties(width=600, height=200, title="The same story's facts at every context length (question at the end)")
    )
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    ## 2. How ARMT reads and writes

    The input is cut into segments of $S$ tokens; $M$ learned **memory tokens** are appended to every
    segment. Per segment $s$ and layer $l$, with hidden states $H$ of the $S + M$ tokens:

    $$
    \begin{aligned}
    H &\leftarrow H + \mathrm{read}_l(H;\ A^{l}_{s-1}) && \text{associative read, added to every token} \\
    H &\leftarrow \mathrm{Block}_l(H) && \text{causal attention + MLP, inside the segment only} \\
    A^{l}_s &\leftarrow \mathrm{write}_l(H_{\text{memory tokens}};\ A^{l}_{s-1}) && \text{associative write}
    \end{aligned}
    $$

    The memory is the paper's: a matrix $A \in \mathbb{R}^{D_\phi \times D_v}$ over DPFP features
    $\hat\phi$ (a fixed, non-negative degree-2 feature map, unit-normalised) with a normaliser $z$. The
    memory-token outputs $m_i$ give keys $k_i = \hat\phi(W_K m_i)$, values $v_i = W_V m_i$ and step sizes
    $\eta_i = \sigma(w_\eta \cdot m_i)$ (the paper's β), and the write is a **delta rule** — the `l2`
    bias with a gd step, as in DeltaNet — taken for all $M$ tokens at once against $A_{s-1}$:

    $$
    \bar v_i = \frac{k_i A_{s-1}}{z_{s-1} \cdot k_i},\qquad
    A_s = A_{s-1} + \sum_{i=1}^{M} \eta_i\, k_i^\top (v_i - \bar v_i),\qquad
    \text{read: } o(x) = \frac{\hat\phi(W_Q x)\, A_s}{z_s \cdot \hat\phi(W_Q x)}.
    $$

    Attention never crosses a segment boundary, so a segment costs $O((S + M)^2)$ however long the
    context, and the state carried forward is a fixed $L \times D_\phi \times D_v$ numbers.
    The model you train below: $S = 64$, $M = 8$, width 32, 2 layers, $D_\phi = 2 \cdot 3 \cdot 32 = 192$,
    $D_v = 32$. The trained model the project ships: $S = 128$, $M = 8$, width 64, 2 layers,
    $D_\phi = 2 \cdot 3 \cdot 64 = 384$, $D_v = 64$, plus a causal convolution over 6 tokens in front of
    every attention (not in the paper; without it a model this small, trained from scratch, stays at chance).
    """)
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    ## 3. A trained ARMT, and a short training run of your own

    The project ships an ARMT trained on qa1 with the recipe of `python -m benchmarks.armt`: a curriculum
    that starts with no filler (story and question in one segment, so attention alone answers) and grows
    the contexts to 256, 512, 1024 and 2048 tokens each time the training loss falls below 0.4, so that
    the answer must come through the memory; then to 4K, 8K and 16K tokens. On those long contexts the
    gradient flows back through the last 32 segments only (*truncated backpropagation through time*): the
    segments before them are read without keeping anything for the backward pass, so a 16K-token story
    costs little more than reading it, and the model still learns from the memory a long context leaves
    behind. 25 CPU-minutes on one thread in all. The cells below show it at once.

    **Train** trains a new, smaller one here instead: a `RunConfig` with a short curriculum, contexts of
    64 tokens (one segment plus the question) for the first half, then 192 tokens (three segments: the
    answer must cross at least one memory write), the length its held-out stories have. AdamW at
    $3\cdot10^{-3}$, batches of 32, a held-out test set of 100 stories; 300 steps take about half a minute
    on one core. Once it is trained, every cell below shows it in place of the shipped one.
    """)
    return


@app.cell
def _():
    train_steps = mo.ui.slider(100, 800, step=50, value=300, label="training steps", show_value=True)
    train_button = mo.ui.run_button(label="Train")
    # only controls that describe the model on the page are shown
    if REPORT == "shipped":
        _controls = mo.md("_This page is a report: nothing was trained for it, every cell shows the shipped "
                          "model. Open the notebook in the app (`make app`) to train your own._")
    elif REPORT == "full":
        _controls = mo.vstack([mo.md("_This report trained a new ARMT at this setting:_"), train_steps])
    elif QUICK:
        _controls = mo.md(f"_Quick mode: a tiny run of {QUICK_RUN['steps']} steps (batches of "
                          f"{QUICK_RUN['batch_size']}, {QUICK_RUN['test_examples']} test stories) trains at once, "
                          "so every cell below runs; expect chance accuracy._")
    else:
        _controls = mo.hstack([train_steps, train_button], justify="start")
    _controls
    return train_button, train_steps


@app.function
def armt_run(steps, batch_size=32, test_examples=100):
    """The `RunConfig` of a fresh ARMT (ARMT_CONFIG) trained `steps` steps on qa1: 64 tokens, then 192 from
    steps // 2."""
    return RunConfig(task=BabiLongConfig("qa1", context_length=192, test_examples=test_examples),
                     model=ARMTConfig(**ARMT_CONFIG),
                     fit=FitConfig(steps=steps, batch_size=batch_size, lr=3e-3, eval_every=max(1, steps // 6)),
                     curriculum=((0, {"context_length": 64}), (steps // 2, {})))


@app.function
@mo.cache
def train_armt(steps, batch_size=32, test_examples=100):
    """`armt_run(...)` trained -> (model, per-step metrics); in a full report, progress goes to the terminal."""

    def progress(row):
        bar.update(subtitle=f"loss {row['loss']:.3f}")
        if REPORT == "full" and (row["step"] % 50 == 0 or row["step"] == steps):
            print(f"[07 train] step {row['step']}/{steps} loss {row['loss']:.3f}", file=sys.__stderr__, flush=True)

    with mo.status.progress_bar(total=steps, title="training ARMT on qa1") as bar:
        return armt_run(steps, batch_size, test_examples).train(callbacks=[progress])


@app.function
def model_line(run, steps):
    """What a run's ARMT is, in one line: size, segments and the training it had."""
    model, task = run.model, run.task
    conv = f", a causal convolution over {model.conv_size} tokens" if model.conv_size else ""
    return (f"width {model.d_model}, {model.n_layers} layers, {model.num_heads} heads, segments of "
            f"{model.segment_size} + {model.num_mem_tokens} memory tokens{conv}; {steps} training steps on contexts "
            f"of at most {task.context_length:,} tokens")


@app.cell
def _(train_button, train_steps):
    # the model every cell below shows: the shipped one, unless one was trained here
    if QUICK:
        _steps, _name, _short = QUICK_RUN["steps"], "a tiny quick-mode ARMT", "quick run"
        _config = armt_run(**QUICK_RUN)
    elif train_button.value or REPORT == "full":
        _steps, _name, _short = train_steps.value, "the ARMT trained here", "trained here"
        _config = armt_run(_steps)
    else:
        _config = None
    if _config is None:
        shown_model = dict(name="the shipped ARMT (`data/models/armt-qa1`)", short="shipped armt-qa1",
                           model=SHIPPED_RUN.model.eval(), log=SHIPPED_RUN.metrics, run=SHIPPED_RUN.config,
                           about=model_line(SHIPPED_RUN.config, SHIPPED_RUN.step))
    else:
        _model, _log = train_armt(_steps, _config.fit.batch_size, _config.task.test_examples)
        shown_model = dict(name=_name, short=f"{_short} ({_steps} steps)", model=_model.eval(), log=_log,
                           run=_config, about=model_line(_config, _steps))
    model = shown_model["model"]
    return model, shown_model


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    The learning curves of the model the cells below show: its training loss on the answer token at every
    step, and its accuracy on held-out stories at every evaluation (dashed: chance, 1 of 6 places).
    """)
    return


@app.cell(hide_code=True)
def _(shown_model):
    _log, _task = shown_model["log"], shown_model["run"].task
    _loss = (
        alt.Chart(_log)
        .mark_line()
        .encode(
            x=alt.X("step:Q"),
            y=alt.Y("loss:Q", title="training loss (answer token)"),
            tooltip=["step:Q", alt.Tooltip("loss:Q", format=".3f")],
        )
        .properties(width=300, height=220, title="Loss")
    )
    _accuracy = (
        alt.Chart(_log.filter(pl.col("eval_accuracy").is_not_null()))
        .mark_line(point=True, color="#1a7f37")
        .encode(
            x=alt.X("step:Q", scale=alt.Scale(domain=[0, _log["step"].max()])),
            y=alt.Y("eval_accuracy:Q", title="held-out accuracy", scale=alt.Scale(domain=[0, 1])),
            tooltip=["step:Q", alt.Tooltip("eval_accuracy:Q", format=".0%")],
        )
    )
    _chance = (
        alt.Chart(pl.DataFrame({"chance (1 of 6 places)": [1 / 6]}))
        .mark_rule(strokeDash=[4, 4], color="gray")
        .encode(y="chance (1 of 6 places):Q", tooltip=[alt.Tooltip("chance (1 of 6 places):Q", format=".3f")])
    )
    _held_out = _log["eval_accuracy"].drop_nulls()
    script_print(f"model: {shown_model['name']}: {shown_model['about']}; held-out accuracy {_held_out[-1]:.2f}")
    mo.vstack(
        [
            mo.md(
                f"**The cells below show {shown_model['name']}**: {shown_model['about']}. Held-out accuracy "
                f"{_held_out[-1]:.0%} ({_task.test_examples} stories of {_task.context_length:,} tokens)."
            ),
            alt.hconcat(
                _loss,
                (_accuracy + _chance).properties(
                    width=300, height=220,
                    title=f"Accuracy on {_task.test_examples} held-out stories of {_task.context_length:,} tokens",
                ),
            ),
        ]
    )
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    **What to expect.** The shipped model answers over 90% of held-out stories from 2K to 1M tokens. A
    300-step run here reaches roughly 35–45% on its 192-token stories: clearly above chance, far from solved. Part of
    it is the easy part of qa1 — answer with a place that was mentioned at all — and only part is the real
    skill, tracking *the last move of the person asked about*; the shipped recipe's longer curriculum is
    what teaches the rest.

    **Try this:** train 100 steps, then 600: does the accuracy on 192-token contexts move once the
    curriculum switches at the halfway point?
    """)
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    ## 4. Accuracy vs context length, streamed

    `babilong_accuracy` feeds the test stories of one length to `ARMT.stream` together, as one batch,
    which pulls the contexts one segment at a time from the lazy sample generators and keeps only the
    memories: a 1M-token context never exists in memory. The stories are the same at every length
    (section 1), so a drop in accuracy is the memory failing to keep the facts across more filler.

    The chart starts with the shipped model's curve, measured by `python -m benchmarks.armt --evaluate`
    (its table is shipped next to the model). **Measure accuracy** measures the model the cells show, here:
    streaming runs at roughly 50 000–90 000 tokens/s on one core, so a 1M-token sample costs 10–20 s and
    lengths above 64K use `LONG_SAMPLES` = 2 samples whatever the slider says (the table's `samples`
    column).
    """)
    return


@app.function
def tokens_name(length):
    """A context length as the page names it: 256, 2K, 64K, 1M, 10M."""
    for unit, size in (("M", 2**20), ("K", 2**10)):
        if length >= size and length % size == 0:
            return f"{length // size}{unit}"
    return f"{length:,}"


@app.function
def samples_note(frame):
    """How an accuracy table was measured, in words: "100 samples per length at 2K, 16K and 64K tokens, 20 at
    1M" (consecutive lengths with the same number of samples together)."""
    groups = []
    for length, samples in frame.select("context_length", "samples").iter_rows():
        if groups and groups[-1][0] == samples:
            groups[-1][1].append(tokens_name(length))
        else:
            groups.append((samples, [tokens_name(length)]))
    parts = [f"{n} at {', '.join(names[:-1]) + ' and ' if len(names) > 1 else ''}{names[-1]}"
             for n, names in groups]
    parts[0] = parts[0].replace(" at ", " samples per length at ", 1) + " tokens"
    return ", ".join(parts)


@app.cell
def _():
    # the shipped model's table from `benchmarks.armt`, in the columns of `babilong_accuracy`
    shipped_lengths = SHIPPED_LENGTHS.select(
        pl.col("context").alias("context_length"), "accuracy", "samples", "tokens_per_s", "peak_rss_mb"
    )
    return (shipped_lengths,)


@app.cell
def _(shipped_lengths):
    max_length = mo.ui.dropdown(options=list(LENGTHS), value="64K", label="longest context")
    samples_per_length = mo.ui.slider(2, 30, step=1, value=8, label="samples per length", show_value=True)
    accuracy_button = mo.ui.run_button(label="Measure accuracy")
    # only controls that describe a curve on the page are shown
    _shipped = f"_The shipped model's curve: {samples_note(shipped_lengths)}._"
    if REPORT == "shipped":
        _controls = mo.md(_shipped + " _Nothing was measured for this report._")
    elif REPORT == "full":
        _controls = mo.vstack([mo.md(_shipped + " _This report measured the model it trained at these settings:_"),
                               mo.hstack([max_length, samples_per_length], justify="start")])
    elif QUICK:
        _controls = mo.md(_shipped + f" _Quick mode measures {QUICK_LENGTHS[1]} samples per length at "
                          f"{', '.join(f'{n:,}' for n in QUICK_LENGTHS[0])} tokens._")
    else:
        _controls = mo.vstack([mo.md(_shipped),
                               mo.hstack([max_length, samples_per_length, accuracy_button], justify="start")])
    _controls
    return accuracy_button, max_length, samples_per_length


@app.class_definition
class TracedStream:
    """Stands in for an ARMT in `babilong_accuracy`: forwards `stream`, ticks a progress bar once per
    sample, and records for the latest batch the seconds and the process RSS after every segment it
    pulls (pulled one segment ahead, so a row is: generate a segment, then ARMT reads it)."""

    def __init__(self, model, bar):
        self.model, self.bar, self.trace = model, bar, []

    def _timed(self, segments):
        self.trace, process, start = [], psutil.Process(), time.perf_counter()
        for segment in segments:
            yield segment
            now = time.perf_counter()
            self.trace.append({"segment": len(self.trace), "seconds": now - start,
                               "rss_mb": process.memory_info().rss / 2**20})
            start = now

    def stream(self, segments, question_ids):
        logits = self.model.stream(self._timed(segments), question_ids)
        self.bar.update(increment=len(logits))
        return logits


@app.function
def accuracy_vs_length(model, lengths, num_samples):
    """Streamed qa1 accuracy at every length (LONG_SAMPLES samples above 64K tokens) -> (polars DataFrame
    from `babilong_accuracy`, the per-segment trace of the last batch at the longest length). In a full report,
    progress goes to the terminal."""
    counts = [num_samples if length <= LENGTHS["64K"] else min(num_samples, LONG_SAMPLES) for length in lengths]
    frames = []
    with mo.status.progress_bar(total=sum(counts), title="streaming test stories") as bar:
        traced = TracedStream(model, bar)
        for length, count in zip(lengths, counts):
            bar.update(increment=0, subtitle=f"context length {length:,}")
            if REPORT == "full":
                print(f"[07 measure] {count} samples of {length:,} tokens", file=sys.__stderr__, flush=True)
            frames.append(babilong_accuracy(traced, "qa1", (length,), num_samples=count,
                                            segment_size=model.segment_size))
    return pl.concat(frames), pl.DataFrame(traced.trace)


@app.cell
def _(accuracy_button, max_length, model, samples_per_length):
    # None until the button (at once in quick mode and in a full report)
    if QUICK:
        measured = accuracy_vs_length(model, *QUICK_LENGTHS)
    elif accuracy_button.value or REPORT == "full":
        _lengths = [256] + [n for n in LENGTHS.values() if n <= LENGTHS[max_length.value]]
        measured = accuracy_vs_length(model, _lengths, samples_per_length.value)
    else:
        measured = None
    return (measured,)


@app.cell(hide_code=True)
def _(measured, shipped_lengths, shown_model):
    _curves = [shipped_lengths.drop("peak_rss_mb").with_columns(pl.lit("shipped armt-qa1 (benchmarks.armt)").alias("curve"))]
    if measured is not None:
        _curves.append(measured[0].with_columns(pl.lit(f"{shown_model['short']}, measured here").alias("curve")))
    _by_length = pl.concat(_curves).with_columns(pl.col("tokens_per_s").round(0))
    _points = (
        alt.Chart(_by_length)
        .mark_line(point=True)
        .encode(
            x=alt.X("context_length:Q", scale=alt.Scale(type="log"), title="context length (tokens, log)"),
            y=alt.Y("accuracy:Q", scale=alt.Scale(domain=[0, 1]), title="accuracy"),
            color=alt.Color("curve:N", title=None, legend=alt.Legend(orient="bottom")),
            tooltip=["curve:N", "context_length:Q", alt.Tooltip("accuracy:Q", format=".0%"), "samples:Q",
                     alt.Tooltip("tokens_per_s:Q", format=",.0f", title="tokens / s")],
        )
    )
    _chance = alt.Chart(pl.DataFrame({"y": [1 / 6]})).mark_rule(strokeDash=[4, 4], color="gray").encode(y="y:Q")
    for _rows in _by_length.partition_by("curve", maintain_order=True):
        script_print(f"{_rows['curve'][0]}: accuracy by context length " + ", ".join(
            f"{tokens_name(n)} {a:.2f}" for n, a in _rows.select("context_length", "accuracy").iter_rows()))
    mo.vstack(
        [
            (_points + _chance).properties(width=600, height=240,
                                           title="qa1 accuracy vs context length (streamed; dashed: chance)"),
            mo.ui.table(_by_length, selection=None, show_download=False),
        ]
    )
    return


@app.cell(hide_code=True)
def _(shipped_lengths):
    _trained = SHIPPED_RUN.config.task.context_length
    _curve = ", ".join(f"{a:.0%} at {tokens_name(n)} ({s} sample{'s' * (s != 1)})"
                       for n, a, s in shipped_lengths.select("context_length", "accuracy", "samples").iter_rows())
    mo.md(
        f"""
    **Reading the curve.** The shipped model was trained on contexts of at most {_trained:,} tokens
    ({_trained // SHIPPED_RUN.config.model.segment_size} segments). Measured: {_curve}; chance is 17%. It
    answers far past its training length because it learned to write into its memory on the segments
    that hold a fact and almost never on filler (section 5 shows the writes): during training on long
    stories a small penalty on the write gate β kept the writes sparse, so even thousands of filler
    segments add up to little and the memory stays the same size, up to a million tokens. At 10M tokens
    (81,920 segments, 640 times its longest training story) the small writes do add up again, the memory
    grows and the story is lost. The paper's ARMT, a GPT-2-sized model with
    segments of 1024 tokens, answers 79.9% of qa1 at 50M tokens. With 8 samples per length one sample is
    12.5 points: differences of that size are noise.
    """
    )
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    ## 5. The memory, segment by segment

    One test story (1024 tokens: 8 segments for the shipped model, 16 for the one you train) is run through
    `ARMT.segment` one segment at a time and the memory $A^l_s$ of each layer is kept after every segment.
    The line shows how much each segment *wrote*, $\|A^l_s - A^l_{s-1}\|_F$, with the segments that contain
    a fact marked; the heatmap shows $A^l_s$ itself, or the write $A^l_s - A^l_{s-1}$, for the segment you
    pick (rows: the value dimensions, columns: the DPFP features).
    """)
    return


@app.function
def memory_after_segments(model, sample):
    """The memory A of every layer (batch 0, head 0) after every segment of `sample`'s context,
    run with `ARMT.segment` -> tensor [segments, layers, Dφ, Dv]."""
    state, snapshots = model.initial_state(1), []
    with torch.no_grad():
        for ids in sample.segments(model.segment_size):
            _, state = model.segment(ids[None], state)
            snapshots.append(torch.stack([layer.A[0, 0] for layer in state]))
    return torch.stack(snapshots)


@app.cell
def _():
    story_index = mo.ui.number(start=0, stop=199, value=0, label="test story")
    story_index
    return (story_index,)


@app.cell
def _(model, story_index):
    traced_sample = BabiLong("qa1").sample(int(story_index.value), 1024)
    memories = memory_after_segments(model, traced_sample)
    fact_segments = sorted({p // model.segment_size for p in traced_sample.fact_positions})
    _writes = (memories - torch.cat([torch.zeros_like(memories[:1]), memories[:-1]])).flatten(2).norm(dim=-1)
    write_sizes = pl.DataFrame(
        [
            {"segment": s, "layer": f"layer {l}", "write": _writes[s, l].item(), "holds a fact": s in fact_segments}
            for s in range(memories.shape[0])
            for l in range(memories.shape[1])
        ]
    )
    return fact_segments, memories, traced_sample, write_sizes


@app.cell(hide_code=True)
def _(fact_segments, memories, shown_model, traced_sample, write_sizes):
    # segment 0 writes into an empty memory: leave it out of the comparison
    _ratio = (
        write_sizes.filter(pl.col("segment") > 0)
        .group_by("layer")
        .agg(pl.col("write").filter(pl.col("holds a fact")).mean() / pl.col("write").filter(~pl.col("holds a fact")).mean())
        .sort("layer")
    )
    _ratios = ", ".join(f"{layer}: {r:.2f}×" for layer, r in _ratio.iter_rows() if r is not None)
    mo.vstack(
        [
            mo.md(
                f"Story: {' '.join(traced_sample.facts)} — question: *{traced_sample.question}* "
                f"(answer: **{traced_sample.answer}**); facts in segments {fact_segments} of "
                f"{memories.shape[0]}, read by the model {shown_model['short']}. Mean write of a fact segment over "
                f"that of a filler segment (segments 1–{memories.shape[0] - 1}): {_ratios or 'n/a'}."
            ),
            (
                alt.Chart(pl.DataFrame({"segment": fact_segments}))
                .mark_rule(color="#f2c500", size=14, opacity=0.45)
                .encode(x="segment:Q", tooltip=[alt.Tooltip("segment:Q", title="segment with a fact")])
                + alt.Chart(write_sizes)
                .mark_line(point=True)
                .encode(
                    x=alt.X("segment:Q", title="segment"),
                    y=alt.Y("write:Q", title="‖A_s − A_{s−1}‖ (Frobenius)"),
                    color=alt.Color("layer:N"),
                    tooltip=["segment:Q", "layer:N", alt.Tooltip("write:Q", format=".4f"), "holds a fact:N"],
                )
            ).properties(width=600, height=220, title="How much each segment writes (yellow: segments with a fact)"),
        ]
    )
    return


@app.cell
def _(memories):
    segment_pick = mo.ui.slider(0, memories.shape[0] - 1, value=memories.shape[0] - 1, label="segment", show_value=True)
    layer_pick = mo.ui.dropdown(options={f"layer {l}": l for l in range(memories.shape[1])}, value="layer 0",
                                label="layer")
    view = mo.ui.radio(options=["memory A_s", "write A_s − A_{s−1}"], value="memory A_s", inline=True)
    mo.hstack([segment_pick, layer_pick, view], justify="start")
    return layer_pick, segment_pick, view


@app.cell(hide_code=True)
def _(layer_pick, memories, segment_pick, view):
    _s, _l = segment_pick.value, layer_pick.value
    _matrix = memories[_s, _l]
    if view.value != "memory A_s":
        _matrix = _matrix - (memories[_s - 1, _l] if _s > 0 else 0)
    _features, _values = _matrix.shape
    # at most 192 feature columns (the shipped model's 384 features are averaged in pairs)
    _frame = block_average(_matrix.T, 192).rename({"row": "value dim", "column": "feature", "weight": "entry"})
    _pooled = f", averaged in blocks of {_features // 192}" if _features > 192 else ""
    _limit = max(_matrix.abs().max().item(), 1e-12)
    (
        alt.Chart(_frame)
        .mark_rect()
        .encode(
            x=alt.X("feature:O", title=f"DPFP feature (of {_features}{_pooled})",
                    axis=alt.Axis(labels=False, ticks=False)),
            y=alt.Y("value dim:O", title="value dimension", axis=alt.Axis(values=list(range(0, _values, 8)))),
            color=alt.Color("entry:Q", scale=alt.Scale(scheme="redblue", domain=[-_limit, _limit], reverse=True)),
            tooltip=["feature:Q", "value dim:Q", alt.Tooltip("entry:Q", format=".4f")],
        )
        .properties(width=640, height=200, title=f"{view.value}: layer {_l}, after segment {_s}")
    )
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    **Try this:** the memory tokens write at *every* segment, filler or not. Do the segments with a fact
    (yellow) write more than their neighbours? Check a few test stories, for the shipped model and for
    one you trained. Then step the segment slider with "write" selected: which DPFP features does a fact
    segment write to, compared with a filler segment? The memory starts at zero ($A_0 = 0$, $z_0 = 0$),
    so segment 0's write is the whole memory.
    """)
    return


@app.cell(hide_code=True)
def _():
    mo.md(r"""
    ## 6. Time and memory per segment stay flat

    Every segment pulled by `ARMT.stream` is timed and the process's resident memory (RSS) read after it:
    for the longest stories of section 4's measurement, or, until you measure, for one 64K-token test story
    streamed when the page loads. Nothing grows with the position in the context: the work per segment is
    one $(S + M)$-token block per layer, and the carried state is the same fixed size after 1 segment as
    after 16 000.
    """)
    return


@app.cell
def _(measured, model):
    # section 4's trace, or one 64K-token story (about a second)
    if measured is None:
        segment_trace, traced_what = accuracy_vs_length(model, (LENGTHS["64K"],), 1)[1], "one 64K-token story"
    else:
        segment_trace, traced_what = measured[1], "the longest stories of section 4"
    return segment_trace, traced_what


@app.cell(hide_code=True)
def _(model, segment_trace, shipped_lengths, traced_what):
    _state_bytes = sum(t.numel() * t.element_size() for layer in model.initial_state(1) for t in layer)
    # at most ~400 points: average consecutive segments
    _bin = max(1, segment_trace.height // 400)
    _binned = (
        segment_trace.with_columns((pl.col("segment") // _bin * _bin).alias("from segment"))
        .group_by("from segment")
        .agg((pl.col("seconds").mean() * 1000).alias("ms per segment"), pl.col("rss_mb").max().alias("RSS (MB)"))
        .sort("from segment")
        .with_columns((pl.col("from segment") * model.segment_size).alias("tokens read"))
    )
    _base = alt.Chart(_binned).encode(
        x=alt.X("tokens read:Q", title="tokens read so far"),
        tooltip=["tokens read:Q", alt.Tooltip("ms per segment:Q", format=".2f"), alt.Tooltip("RSS (MB):Q", format=".1f")],
    )

    def _panel(column, color, title):
        # from 0 with a third of headroom: a flat line sits in the upper half, never on the top edge
        _top = 1.35 * _binned[column].max()
        return _base.mark_line(color=color).encode(
            y=alt.Y(f"{column}:Q", scale=alt.Scale(domain=[0, _top], nice=False))
        ).properties(width=300, height=220, title=title)

    _rates, _rss = shipped_lengths["tokens_per_s"], shipped_lengths["peak_rss_mb"]
    mo.vstack(
        [
            alt.hconcat(
                _panel("ms per segment", "#4c78a8", f"Time per segment (mean of {_bin})"),
                _panel("RSS (MB)", "#b35806", "Process memory (RSS)"),
            ),
            mo.md(
                f"Traced: {traced_what}, {segment_trace.height:,} segments in {segment_trace['seconds'].sum():.1f} s. "
                f"The carried memory state of one story (all layers, $A$ and $z$): **{_state_bytes / 1024:.1f} KiB**, "
                f"whatever the context length. The shipped model's benchmark streamed "
                f"{tokens_name(shipped_lengths['context_length'][0])} to "
                f"{tokens_name(shipped_lengths['context_length'][-1])} tokens at {_rates.min():,.0f}–{_rates.max():,.0f} "
                f"tokens/s with a peak RSS of {_rss.min():,.0f}–{_rss.max():,.0f} MB."
            ),
        ]
    )
    return


@app.cell(hide_code=True)
def _():
    _next = course_link("08_kernels.py")
    mo.md(f"**Next:** [08 · The Triton kernels]({_next}): the same recurrences fused into GPU kernels, checked against the torch code and timed.")
    return


if __name__ == "__main__":
    app.run()
