"""Training loop, checkpoints and CLI: a short run that learns, checkpoint round trip (weights_only),
the NaN/inf guard, the cancel flag, early stopping, the schedule, and `python -m miras_lite` train + eval."""

import json
import math
import subprocess
import sys
import threading
from pathlib import Path

import polars as pl
import pytest
import torch

import miras_lite as ml
from miras_lite import checkpoint
from miras_lite.config import ARMTConfig, BabiLongConfig, MirasLMConfig, MQARConfig, RunConfig
from miras_lite.models import MirasLM
from miras_lite.tasks.mqar import MQAR
from miras_lite.train import TaskStages, TrainingDiverged, advance_when, early_stop, evaluate, fit, lr_at

ROOT = Path(__file__).resolve().parents[1]


def tiny_model(spec="gated_deltanet", vocab_size=64, **kwargs):
    torch.manual_seed(0)
    return MirasLM(vocab_size, d_model=16, n_layers=1, num_heads=1, spec=spec, chunk_size=None, **kwargs)


def tiny_task(**kwargs):
    return MQAR(vocab_size=64, seq_len=16, num_kv_pairs=2, train_examples=256, test_examples=32, **kwargs)


# ---------------------------------------------------------------------------------------- learning


@pytest.mark.slow
def test_short_mqar_run_learns():
    """MQAR with 4 pairs over 32 keys / 32 values, the recipe of the shipped gated_deltanet model (a 600-step
    schedule, warmup 50, stopped at 0.8): held-out accuracy far above chance (1/32) (measured: 0.90 at step 360 on
    two seeds; ~15 s on one core). A 300-step schedule was on the edge of learning: 0.81 on one machine, 0.09 on
    another."""
    task = MQAR(vocab_size=64, seq_len=32, num_kv_pairs=4, train_examples=4096, test_examples=128, power_a=0.01,
                seed=0)
    torch.manual_seed(0)
    model = MirasLM(64, d_model=64, n_layers=2, num_heads=1, chunk_size=None)
    metrics = fit(model, task, steps=600, batch_size=16, lr=1e-2, warmup=50, eval_every=60,
                  callbacks=[early_stop(threshold=0.8)])
    evals = metrics.filter(pl.col("eval_accuracy").is_not_null())
    assert evals["eval_accuracy"][-1] > 0.4, evals  # > 12x chance
    assert evals["eval_accuracy"][0] < 0.1  # it was learnt, not there from the start
    assert metrics["loss"][-10:].mean() < metrics["loss"][:10].mean() / 2


def test_metrics_frame_columns_and_schedule():
    task = tiny_task()
    metrics = fit(tiny_model(), task, steps=6, batch_size=4, lr=1e-2, warmup=2, eval_every=3)
    assert metrics["step"].to_list() == list(range(1, 7))
    for column in ("loss", "lr", "grad_norm", "tokens_per_s", "time_s", "eval_accuracy", "eval_s"):
        assert column in metrics.columns
    assert metrics["eval_accuracy"].is_null().to_list() == [True, True, False, True, True, False]
    assert metrics["lr"].to_list() == pytest.approx([lr_at(s, 6, 1e-2, 2, 1e-3) for s in range(1, 7)])
    assert metrics["tokens_per_s"].min() > 0 and metrics["time_s"].is_sorted()


def test_task_without_evaluate_is_scored_on_its_test_set():
    """A task with batch + test_set only: fit's own evaluate (loss and accuracy at the labels)."""
    inner = tiny_task()

    class Bare:
        vocab_size = 64
        batch = staticmethod(inner.batch)
        test_set = staticmethod(inner.test_set)

    model = tiny_model()
    metrics = fit(model, Bare(), steps=2, batch_size=4, eval_every=2)
    result = evaluate(model, *inner.test_set(), batch_size=5)
    assert metrics["eval_accuracy"][-1] == pytest.approx(result["accuracy"]) == pytest.approx(inner.evaluate(model)["accuracy"])
    assert metrics["eval_loss"][-1] == pytest.approx(result["loss"]) and result["loss"] > 0


def test_lr_schedule_warmup_then_cosine():
    assert lr_at(1, 100, 1.0, 10, 0.1) == pytest.approx(0.1)
    assert lr_at(10, 100, 1.0, 10, 0.1) == pytest.approx(1.0)
    assert lr_at(55, 100, 1.0, 10, 0.1) == pytest.approx(0.55)  # halfway through the cosine
    assert lr_at(100, 100, 1.0, 10, 0.1) == pytest.approx(0.1)
    lrs = [lr_at(s, 100, 1.0, 10, 0.1) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="steps"):
        fit(tiny_model(), tiny_task(), steps=0)
    with pytest.raises(ValueError, match="batch_size"):
        fit(tiny_model(), tiny_task(), steps=1, batch_size=-1)
    with pytest.raises(ValueError, match="lr"):
        fit(tiny_model(), tiny_task(), steps=1, lr=0)
    with pytest.raises(ValueError, match="task"):
        fit(tiny_model(), object(), steps=1)


# ---------------------------------------------------------------------------------------- control


def test_cancel_event_stops_before_the_next_step(tmp_path):
    cancel = threading.Event()
    seen = []

    def set_at_3(row):
        seen.append(row["step"])
        if row["step"] == 3:
            cancel.set()

    metrics = fit(tiny_model(), tiny_task(), steps=50, batch_size=4, callbacks=[set_at_3], cancel=cancel,
                  eval_every=0, out_dir=tmp_path)
    assert metrics.height == 3 and seen == [1, 2, 3]
    assert pl.read_parquet(tmp_path / "metrics.parquet").height == 3
    assert checkpoint.load_checkpoint(tmp_path / "checkpoint.pt")["extra"]["step"] == 3


def test_cancel_callable_and_early_stop_and_max_time():
    calls = iter(range(100))
    metrics = fit(tiny_model(), tiny_task(), steps=50, batch_size=4, eval_every=0, cancel=lambda: next(calls) >= 2)
    assert metrics.height == 2
    metrics = fit(tiny_model(), tiny_task(), steps=50, batch_size=4, eval_every=1,
                  callbacks=[early_stop("eval_accuracy", threshold=0.0)])
    assert metrics.height == 1
    metrics = fit(tiny_model(), tiny_task(), steps=10_000, batch_size=4, eval_every=0, max_time=0.3)
    assert 1 <= metrics.height < 10_000 and metrics["eval_accuracy"][-1] is not None  # a final evaluation


class RecordingTask:
    """A stand-in task recording what fit asks for; `length` is a curriculum attribute."""

    vocab_size = 64

    def __init__(self, name="t"):
        self.name, self.length, self.calls = name, 16, []

    def batch(self, batch_size, step):
        self.calls.append((step, self.length, {}))
        x = torch.randint(0, 64, (batch_size, self.length), generator=torch.Generator().manual_seed(step))
        y = torch.full_like(x, -100)
        y[:, -1] = x[:, 0]
        return x, y


def test_run_config_curriculum_serves_each_stage_and_evaluates_the_run_task():
    """A curriculum is stages of the run's own task with some fields replaced (`TaskStages`)."""
    run = RunConfig(task=MQARConfig(vocab_size=64, seq_len=32, num_kv_pairs=4, train_examples=64, test_examples=8),
                    model=MirasLMConfig(d_model=16, n_layers=1, num_heads=1),
                    curriculum=((0, {"seq_len": 16, "num_kv_pairs": 2}), (2, {})))
    task = run.build_task()
    assert [task.batch(2, step)[0].shape[1] for step in range(4)] == [16, 16, 32, 32]
    assert task.eval_task.seq_len == 32 and task.eval_task.pairs == (4,)
    metrics = fit(run.build_model(task.vocab_size), task, steps=4, batch_size=2, eval_every=2)
    assert metrics["eval_accuracy"].drop_nulls().len() == 2
    with pytest.raises(ValueError, match="seq_len"):
        run.replace(curriculum=((0, {"seq_len": 4}),))


def test_task_stages_switch_tasks_and_evaluate_the_last():
    easy, hard = RecordingTask("easy"), tiny_task()
    stages = TaskStages([(0, easy), (2, hard)])
    assert stages.vocab_size == 64
    model = tiny_model()
    metrics = fit(model, stages, steps=4, batch_size=2, eval_every=2)
    assert [s for s, _, _ in easy.calls] == [0, 1]
    assert metrics["eval_accuracy"].drop_nulls().len() == 2
    assert stages.evaluate(model) == hard.evaluate(model)
    with pytest.raises(ValueError, match="stages"):
        TaskStages([(5, easy)])


def test_task_stages_serve_each_stage_in_its_own_batch_size():
    easy, long = RecordingTask("easy"), RecordingTask("long")
    stages = TaskStages([(0, easy), (2, long, 1)])
    sizes = [stages.batch(4, step)[0].shape[0] for step in range(4)]
    assert sizes == [4, 4, 1, 1]
    with pytest.raises(ValueError, match="batch_size"):
        TaskStages([(0, easy), (2, long, 0)])
    run = RunConfig(task=BabiLongConfig("qa1", context_length=64, test_examples=2),
                    model=ARMTConfig(d_model=16, n_layers=1, segment_size=16, num_mem_tokens=2),
                    curriculum=((0, {"context_length": 32}), (3, {"context_length": 64, "batch_size": 2})))
    task = run.build_task()
    assert [task.batch(4, step)[0].shape[0] for step in (0, 3)] == [4, 2]
    with pytest.raises(ValueError, match="curriculum.batch_size"):
        run.replace(curriculum=((0, {"context_length": 32, "batch_size": 0}),))


def test_task_stages_advance_when_the_loss_is_low_and_skip_early_evaluations():
    easy, last = RecordingTask("easy"), RecordingTask("last")
    stages = TaskStages([(0, easy), (100, last)], eval_task=tiny_task(), eval_early=False)
    losses = iter([5.0, 5.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    switch = advance_when(stages, below=1.0, window=2)
    metrics = fit(tiny_model(), stages, steps=8, batch_size=2, eval_every=1,
                  callbacks=[lambda row: row.update(loss=next(losses)), switch])
    # the mean of the last 2 losses is < 1 after step 4 (batches 0-3), so batch 4 is the last stage's first
    assert [s for s, _, _ in easy.calls] == [0, 1, 2, 3] and [s for s, _, _ in last.calls] == [0, 1, 2, 3]
    assert metrics["eval_accuracy"].is_null().to_list() == [True] * 4 + [False] * 4


# ---------------------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("spec", ["gated_deltanet", ml.MemorySpec(bias="lp", retention="lq"), "retnet"])
def test_checkpoint_round_trip_weights_only(tmp_path, spec):
    model = tiny_model(spec)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = checkpoint.save(tmp_path / "ckpt.pt", model, extra={"step": 7, "note": "hi", "spec": ml.preset("moneta")})
    raw = torch.load(path, weights_only=True)  # plain data only: loads without unpickling classes
    assert raw["model"] == "MirasLM" and set(raw["state_dict"]) == set(model.state_dict())
    loaded, extra = ml.checkpoint.load(path, return_extra=True)
    assert type(loaded) is MirasLM and loaded.config == model.config and not loaded.training
    assert extra == {"step": 7, "note": "hi", "spec": ml.preset("moneta")}
    assert loaded.blocks[0].mixer.spec == model.blocks[0].mixer.spec
    assert loaded.blocks[0].mixer.alpha_mode == model.blocks[0].mixer.alpha_mode
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    x = torch.randint(0, 64, (2, 16))
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x)["logits"], loaded(x)["logits"])


@pytest.mark.parametrize("memory", ["dpfp", "gated_deltanet"])
def test_checkpoint_round_trip_armt(tmp_path, memory):
    from miras_lite.models import ARMT

    torch.manual_seed(0)
    model = ARMT(64, d_model=16, n_layers=1, num_heads=2, segment_size=8, num_mem_tokens=2, memory=memory).eval()
    loaded = checkpoint.load(checkpoint.save(tmp_path / "armt.pt", model))
    assert type(loaded) is ARMT and loaded.config == model.config
    x = torch.randint(0, 64, (2, 20))
    with torch.no_grad():
        assert torch.allclose(model(x)["logits"], loaded(x)["logits"])


def test_checkpoint_errors(tmp_path):
    with pytest.raises(ValueError, match="config"):
        checkpoint.save(tmp_path / "x.pt", torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="extra"):
        checkpoint.save(tmp_path / "x.pt", tiny_model(), extra={"f": object()})
    torch.save({"a": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a miras_lite checkpoint"):
        checkpoint.load(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="allowed values"):
        checkpoint.model_class("NoSuchModel")


# ---------------------------------------------------------------------------------------- NaN guard


class NaNAt:
    """A forward hook making a module's output NaN on forward call number `call` (1-based)."""

    def __init__(self, call):
        self.call, self.calls = call, 0

    def __call__(self, module, inputs, output):
        self.calls += 1
        return output * float("nan") if self.calls == self.call else output


def test_nan_loss_stops_with_step_cause_and_keeps_checkpoint_and_metrics(tmp_path):
    model = tiny_model()
    model.norm.register_forward_hook(NaNAt(5))  # the final norm: the loss is NaN
    snapshots = {}

    def remember(row):
        snapshots[row["step"]] = {k: v.clone() for k, v in model.state_dict().items()}

    with pytest.raises(TrainingDiverged) as info:
        fit(model, tiny_task(), steps=20, batch_size=4, lr=1e-2, eval_every=0, checkpoint_every=2,
            callbacks=[remember], out_dir=tmp_path)
    error = info.value
    assert isinstance(error, RuntimeError) and error.step == 5 and error.quantity == "loss"
    message = str(error)
    assert "step 5" in message and "loss" in message and "lower lr" in message and str(tmp_path) in message
    metrics = pl.read_parquet(tmp_path / "metrics.parquet")
    assert metrics["step"].to_list() == [1, 2, 3, 4, 5]
    assert math.isnan(metrics["loss"][-1]) and all(math.isfinite(x) for x in metrics["loss"][:-1])
    loaded, extra = checkpoint.load(tmp_path / "checkpoint.pt", return_extra=True)
    assert extra["step"] == 4 and "diverged at step 5" in extra["stopped"]
    for k, v in loaded.state_dict().items():  # the weights after the last good step
        assert torch.equal(v, snapshots[4][k]), k


def test_nan_gradient_names_the_parameter(tmp_path):
    model = tiny_model()
    calls = {"n": 0}

    def poison(grad):
        calls["n"] += 1
        return grad * float("inf") if calls["n"] == 3 else grad

    model.blocks[0].ffn.down.weight.register_hook(poison)
    with pytest.raises(TrainingDiverged) as info:
        fit(model, tiny_task(), steps=10, batch_size=4, eval_every=0, out_dir=tmp_path)
    assert info.value.step == 3 and "blocks.0.ffn.down.weight" in info.value.quantity
    assert "gradient" in str(info.value)
    assert pl.read_parquet(tmp_path / "metrics.parquet").height == 3
    assert checkpoint.all_finite(checkpoint.load(tmp_path / "checkpoint.pt"))


def test_nan_activations_inside_the_memory_are_reported(tmp_path):
    """NaN activations reach memory_scan's rates, which it refuses with a ValueError: still a divergence."""
    model = tiny_model()
    model.embed.register_forward_hook(NaNAt(2))
    with pytest.raises(TrainingDiverged) as info:
        fit(model, tiny_task(), steps=5, batch_size=4, eval_every=0, out_dir=tmp_path)
    assert info.value.step == 2 and "activations" in info.value.quantity
    assert pl.read_parquet(tmp_path / "metrics.parquet").height == 2


def test_diverged_weights_never_overwrite_the_last_good_checkpoint(tmp_path):
    model = tiny_model()
    fit(model, tiny_task(), steps=2, batch_size=4, eval_every=0, out_dir=tmp_path)
    good = checkpoint.load(tmp_path / "checkpoint.pt").state_dict()
    with torch.no_grad():
        model.embed.weight[3].fill_(float("nan"))
    with pytest.raises(TrainingDiverged) as info:
        fit(model, tiny_task(), steps=2, batch_size=4, eval_every=0, out_dir=tmp_path)
    assert info.value.step == 1 and info.value.quantity == "parameter embed.weight"
    kept = checkpoint.load(tmp_path / "checkpoint.pt").state_dict()
    assert all(torch.equal(good[k], kept[k]) for k in good)


# ---------------------------------------------------------------------------------------- CLI


def _run(*args, timeout=300):
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_cli_train_then_eval(tmp_path):
    out = tmp_path / "run"
    result = _run("-m", "miras_lite", "train", "--task", "mqar", "--preset", "gated_deltanet", "--steps", "12",
                  "--batch-size", "4", "--d-model", "16", "--layers", "1", "--heads", "1", "--vocab-size", "64",
                  "--seq-len", "32", "--num-pairs", "4", "--train-examples", "64", "--test-examples", "16",
                  "--eval-every", "6", "--threads", "1", "--out", str(out))
    assert "step 12/12" in result.stderr  # the progress bar
    assert "steps 12" in result.stdout and "eval accuracy" in result.stdout  # the summary
    assert {"checkpoint.pt", "metrics.parquet", "run.json"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "run.json").read_text())["task"]["num_kv_pairs"] == 4
    assert pl.read_parquet(out / "metrics.parquet").height == 12
    table = tmp_path / "eval.parquet"
    _run("-m", "miras_lite", "eval", str(out), "--task", "mqar", "--test-examples", "8", "--threads", "1",
         "--out", str(table))
    frame = pl.read_parquet(table)
    assert frame["num_kv_pairs"].to_list() == [4, 8]  # 4·D <= seq_len = 32
    assert frame["accuracy"].is_between(0, 1).all() and (frame["examples"] == 8).all()


@pytest.mark.slow
def test_cli_babilong_armt_stages_advance_on_the_loss(tmp_path):
    """The ARMT qa1 recipe's options end to end: staged lengths advancing on the loss, every question asked,
    the conv; the run is saved with them and `eval --lengths` streams it."""
    out = tmp_path / "armt"
    _run("-m", "miras_lite", "train", "--task", "babilong", "--model", "armt", "--context-length", "40",
         "--curriculum", "0:0,500:24,900:40:1", "--advance-below", "100", "--questions", "all", "--conv-size", "3",
         "--bptt-segments", "2",
         "--steps", "12", "--batch-size", "2", "--d-model", "16", "--layers", "1", "--segment-size", "16",
         "--mem-tokens", "2", "--test-examples", "4", "--threads", "1", "--quiet", "--out", str(out))
    model = ml.load(out / "checkpoint.pt")
    assert model.config["conv_size"] == 3 and model.config["bptt_segments"] == 2
    run = json.loads((out / "run.json").read_text())
    assert run["task"]["questions"] == "all"
    assert run["curriculum"][-1] == [900, {"context_length": 40, "batch_size": 1}]
    table = tmp_path / "eval.parquet"
    _run("-m", "miras_lite", "eval", str(out), "--lengths", "64", "--samples", "2", "--threads", "1", "--out", str(table))
    streamed = pl.read_parquet(table).filter(pl.col("table") == "streamed accuracy vs context length")
    assert streamed["context_length"].to_list() == [64] and streamed["samples"].to_list() == [2]


def test_cli_spec_parsing():
    from miras_lite.__main__ import parse_spec

    assert parse_spec("bias=lp,retention=lq,p=2.5") == ml.MemorySpec(bias="lp", retention="lq", p=2.5)
    with pytest.raises(ValueError, match="unknown field"):
        parse_spec("colour=red")
