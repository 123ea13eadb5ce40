"""Sweeps (miras_lite.sweeps): the plan, a real PostgreSQL study with two worker processes, resuming,
a diverging trial, and a worker killed with SIGKILL in the middle of a trial.

The PostgreSQL test starts its own cluster (initdb / pg_ctl of Debian's `postgresql` package, which
`make test` installs) on 127.0.0.1 in a temporary directory, as the `postgres` user when the tests
run as root (the server refuses root), and removes it afterwards.
"""

import contextlib
import glob
import json
import math
import multiprocessing
import os
import pwd
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from itertools import product
from pathlib import Path

import optuna
import polars as pl
import pytest
from optuna.trial import TrialState

from miras_lite.sweeps import load_sweep, parse_sweep, prepare, read_trials, run_sweep, work
from miras_lite.sweeps.objective import objective
from miras_lite.sweeps.runner import worker_command
from miras_lite.sweeps.storage import open_study

ROOT = Path(__file__).resolve().parents[1]

TINY = """
name = "{name}"
sampler = "grid"
[task]
vocab_size = 16
seq_len = 16
num_kv_pairs = 2
train_examples = 64
test_examples = 8
eval_pairs = [1, 2, 3]
[model]
d_model = 8
n_layers = 1
num_heads = 1
chunk_size = 4
[spec]
preset = "gated_deltanet"
[fit]
steps = {steps}
batch_size = 4
warmup = 1
[optuna]
heartbeat_interval = 1
grace_period = 2
max_retry = 2
[space]
seed = {seeds}
[space.fit]
lr = {lrs}
"""


def tiny_sweep(tmp_path, name, steps=3, seeds=(0, 1), lrs=(1e-2, 1e30)):
    path = tmp_path / f"{name}.toml"
    path.write_text(TINY.format(name=name, steps=steps, seeds=list(seeds), lrs=list(lrs)))
    return load_sweep(path)


def trials_of(sweep, storage):
    return optuna.load_study(study_name=sweep.name, storage=storage).get_trials(deepcopy=False)


# ------------------------------------------------------------------------------------ the plan


def test_grid_plan_is_every_combination_once_in_a_fixed_order():
    sweep = load_sweep(ROOT / "sweeps" / "mqar_axes.toml")
    plan = sweep.plan
    axes = {name: values for name, values in sweep.space.items()}
    expected = {tuple(sorted(zip(axes, combo))) for combo in product(*axes.values())}
    assert len(plan) == len(expected) >= 24
    assert {tuple(sorted(p.items())) for p in plan} == expected
    assert load_sweep(ROOT / "sweeps" / "mqar_axes.toml").plan == plan  # every process plans the same


def test_random_plan_is_reproducible_and_inside_the_ranges():
    data = {"name": "r", "sampler": "random", "n_trials": 12, "seed": 3,
            "space": {"fit": {"lr": {"low": 1e-4, "high": 1e-1, "log": True}, "steps": {"low": 2, "high": 9}},
                      "spec": {"bias": ["l2", "lp"]}}}
    plan = parse_sweep(data).plan
    assert plan == parse_sweep(data).plan and len(plan) == 12
    assert all(1e-4 <= p["lr"] <= 1e-1 and isinstance(p["steps"], int) and 2 <= p["steps"] <= 9 for p in plan)
    assert {p["bias"] for p in plan} == {"l2", "lp"} and len({p["lr"] for p in plan}) == 12
    assert parse_sweep({**data, "seed": 4}).plan != plan
    settings = parse_sweep(data).settings(plan[0])
    assert settings["fit"]["lr"] == plan[0]["lr"] and settings["spec"]["bias"] == plan[0]["bias"]


@pytest.mark.parametrize("data, message", [
    ({"name": "x", "sampler": "bayes", "space": {"seed": [0]}}, "sampler='bayes'"),
    ({"name": "x", "space": {"fit": {"lr": {"low": 0.1, "high": 1.0}}}}, "space.lr"),
    ({"name": "x", "space": {"fit": {"learning_rate": [1]}}}, "space.fit.learning_rate"),
    ({"name": "x", "model": {"width": 3}, "space": {"seed": [0]}}, "[model]"),
    ({"name": "x", "space": {"spec": {"bias": ["l2", "l7"]}}}, "bias='l7'"),
    ({"name": "x", "sampler": "random", "space": {"seed": [0]}}, "n_trials"),
    ({"name": "x"}, "[space] is empty"),
])
def test_bad_sweep_files_raise_value_errors_naming_the_entry(data, message):
    with pytest.raises(ValueError) as info:
        parse_sweep(data)
    assert message in str(info.value)


@pytest.mark.slow
def test_a_random_sweep_runs_its_drawn_configurations_once_and_a_rerun_skips_them(tmp_path):
    path = tmp_path / "random.toml"
    path.write_text(TINY.format(name="random", steps=2, seeds=[0], lrs=[1e-2]).replace('sampler = "grid"', (
        'sampler = "random"\nn_trials = 3\nseed = 5')).replace("lr = [0.01]", "lr = {low = 1e-3, high = 1e-1, log = true}"))
    sweep = load_sweep(path)
    storage = f"sqlite:///{tmp_path / 'random.sqlite3'}"
    assert prepare(sweep, storage)[1] == 3
    work(sweep, storage)  # in this process: the float learning rates round-trip through the database
    frame = read_trials(storage, sweep)
    assert frame["status"].to_list() == ["complete"] * 3
    assert sorted(frame["lr"].to_list()) == sorted(p["lr"] for p in sweep.plan)
    assert prepare(sweep, storage)[1] == 0 and len(trials_of(sweep, storage)) == 3


# ------------------------------------------------------------------------------------ PostgreSQL


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A throw-away PostgreSQL cluster on 127.0.0.1: yields the URL of an empty database."""
    bindirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not bindirs:
        pytest.fail("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin): `make test` installs Debian's "
                    "`postgresql` package (`make postgres`), or run `apt-get install postgresql`")
    bindir = Path(bindirs[-1])
    as_user = []
    folder = Path(tempfile.mkdtemp(prefix="miras-pg-"))
    if os.geteuid() == 0:  # the server refuses to run as root
        postgres = pwd.getpwnam("postgres")
        os.chown(folder, postgres.pw_uid, postgres.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port, data = _free_port(), folder / "data"

    def pg(*args):
        subprocess.run([*as_user, *args], check=True, capture_output=True, timeout=120)

    try:
        pg(bindir / "initdb", "-D", data, "-U", "sweep", "--auth=trust", "--no-sync")
        pg(bindir / "pg_ctl", "-D", data, "-l", folder / "server.log", "-w", "start", "-o",
           f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off")
        pg(bindir / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "sweep", "sweeps")
        yield f"postgresql://sweep@127.0.0.1:{port}/sweeps"
    finally:
        if (data / "postmaster.pid").exists():
            pg(bindir / "pg_ctl", "-D", data, "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.postgres
@pytest.mark.slow
def test_postgres_sweep_with_two_workers_records_every_trial_and_diverged_ones(tmp_path, postgres_url):
    sweep = tiny_sweep(tmp_path, "pg_two_workers")
    out = tmp_path / "trials.parquet"
    seen = []
    frame = run_sweep(sweep, postgres_url, workers=2, out=out, on_progress=lambda done, total: seen.append(done),
                      poll_s=0.2)
    assert seen[-1] == 4

    trials = [t for t in trials_of(sweep, postgres_url) if "config_key" in t.user_attrs]
    by_lr = {lr: [t for t in trials if t.params["lr"] == lr] for lr in (1e-2, 1e30)}
    assert len(trials) == 4 and {t.params["seed"] for t in trials} == {0, 1}
    assert all(t.state == TrialState.COMPLETE for t in by_lr[1e-2])
    for t in by_lr[1e30]:  # diverged: failed, with TrainingDiverged's message, and the sweep went on
        assert t.state == TrialState.FAIL and t.user_attrs["status"] == "diverged"
        assert t.user_attrs["reason"].startswith("training diverged at step")

    stored = pl.read_parquet(out)
    assert stored.equals(frame) and stored.height == 4 and stored["trial"].n_unique() == 4
    assert read_trials(postgres_url, sweep).equals(frame)
    for row in stored.iter_rows(named=True):
        assert json.loads(row["settings"])["fit"]["lr"] == row["lr"] and row["bias"] == "l2"
        assert row["duration_s"] > 0
        if row["lr"] == 1e30:
            assert row["status"] == "diverged" and "not finite" in row["reason"] and row["recall"] is None
            continue
        curve = row["accuracy_by_pairs"]
        assert [p["num_kv_pairs"] for p in curve] == [1, 2, 3] and all(0 <= p["accuracy"] <= 1 for p in curve)
        assert row["recall"] == pytest.approx(sum(p["accuracy"] for p in curve) / 3)
        assert row["status"] == "complete" and len(row["loss_curve"]) == 3 and math.isfinite(row["final_loss"])
        assert row["final_loss"] == row["loss_curve"][-1]

    count = len(trials_of(sweep, postgres_url))
    _, queued = prepare(sweep, postgres_url)  # a re-run: every configuration is settled, nothing is queued
    assert queued == 0 and len(trials_of(sweep, postgres_url)) == count


# ------------------------------------------------------------------------------------ resilience


def _has_heartbeat(database, number):
    with sqlite3.connect(database) as db:
        return db.execute("SELECT 1 FROM trial_heartbeats JOIN trials USING (trial_id) WHERE number = ?",
                          (number,)).fetchone() is not None


@pytest.mark.slow
def test_a_worker_killed_mid_trial_loses_no_finished_trial_and_its_trial_is_retried(tmp_path):
    # 1000 steps: a trial lasts about 2 s, far longer than it takes to see it started and kill the worker
    sweep = tiny_sweep(tmp_path, "killed", steps=1000, seeds=(0, 1, 2), lrs=(1e-2,))
    database = tmp_path / "killed.sqlite3"
    storage = f"sqlite:///{database}"
    _, queued = prepare(sweep, storage)
    assert queued == 3
    worker = subprocess.Popen(worker_command(sweep, storage), stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # kill once one trial is finished and the next one has its heartbeat
            trials = trials_of(sweep, storage)
            states = [t.state for t in trials]
            if TrialState.COMPLETE in states and any(
                    t.state == TrialState.RUNNING and "settings" in t.user_attrs and _has_heartbeat(database, t.number)
                    for t in trials):
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"the worker did not finish a trial and start the next within 60 s: {states}")
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    finally:
        worker.kill()
    before = {t.number: t for t in trials_of(sweep, storage)}
    finished = {n for n, t in before.items() if t.state == TrialState.COMPLETE}
    killed = [n for n, t in before.items() if t.state == TrialState.RUNNING]
    assert finished and len(killed) == 1

    time.sleep(sweep.optuna["grace_period"] + 1)  # the killed trial's heartbeat is now stale
    _, queued = prepare(sweep, storage)  # the re-run: fails the stale trial, whose retry is queued
    waiting = [t for t in trials_of(sweep, storage) if t.state == TrialState.WAITING]
    assert queued == 0 and len(waiting) == 3 - len(finished)  # the retry and the trials never started
    work(sweep, storage)

    after = {t.number: t for t in trials_of(sweep, storage)}
    for n in finished:  # nothing finished was lost or run again
        assert after[n].state == TrialState.COMPLETE and after[n].value == before[n].value
        assert after[n].datetime_complete == before[n].datetime_complete
    assert after[killed[0]].state == TrialState.FAIL
    retries = [t for t in after.values() if t.system_attrs.get("failed_trial") == killed[0]]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == before[killed[0]].params
    complete = [t for t in after.values() if t.state == TrialState.COMPLETE]
    assert sorted(t.params["seed"] for t in complete) == [0, 1, 2]  # every configuration once

    frame = read_trials(storage, sweep)
    lost = frame.filter(pl.col("trial") == killed[0]).row(0, named=True)
    assert lost["status"] == "failed" and "no heartbeat" in lost["reason"]
    assert frame.filter(pl.col("retry_of") == killed[0])["status"].to_list() == ["complete"]


@pytest.mark.slow
def test_a_worker_killed_between_writing_metrics_and_finishing_its_trial_shows_the_trial_failed(tmp_path):
    """The objective writes a trial's metrics before Optuna marks it complete; a worker killed in between
    leaves a running trial with metrics, which the stale check fails: the frame must say failed."""
    sweep = tiny_sweep(tmp_path, "half_told", steps=2, seeds=(0,), lrs=(1e-2,))
    storage = f"sqlite:///{tmp_path / 'half_told.sqlite3'}"
    study, _ = prepare(sweep, storage)
    with pytest.warns(UserWarning, match="Heartbeat"):
        trial = study.ask()
    recall = objective(sweep)(trial)
    assert trial.user_attrs["recall"] == recall
    study.tell(trial.number, state=TrialState.FAIL)  # what the stale check does to it
    row = read_trials(storage, sweep).row(0, named=True)
    assert row["status"] == "failed" and "no heartbeat" in row["reason"]


@pytest.mark.slow
def test_a_trial_taken_by_a_worker_that_died_before_starting_it_is_queued_again(tmp_path):
    """A worker killed between taking a trial and its first heartbeat leaves a RUNNING trial that Optuna's
    stale check never fails: after grace_period the re-run fails it and queues its configuration again."""
    sweep = tiny_sweep(tmp_path, "unstarted", steps=2, seeds=(0, 1), lrs=(1e-2,))
    storage = f"sqlite:///{tmp_path / 'unstarted.sqlite3'}"
    study, _ = prepare(sweep, storage)
    with pytest.warns(UserWarning, match="Heartbeat"):  # ask() outside optimize: no heartbeat, as if killed
        taken = study.ask()
    assert prepare(sweep, storage)[1] == 0  # within the grace period it may still be starting
    time.sleep(sweep.optuna["grace_period"] + 0.5)
    assert prepare(sweep, storage)[1] == 1
    work(sweep, storage)
    trials = {t.number: t for t in trials_of(sweep, storage)}
    assert trials[taken.number].state == TrialState.FAIL
    complete = [t for t in trials.values() if t.state == TrialState.COMPLETE]
    assert sorted(t.params["seed"] for t in complete) == [0, 1]


# ------------------------------------------------------------------------------------ faults (issue 14)


@pytest.mark.parametrize("section, key, value, message", [
    ("fit", "clip", "-1.0", "fit.clip=-1.0"),
    ("fit", "steps", '"many"', "fit.steps='many'"),
    ("model", "d_model", "0", "d_model=0"),
    ("model", "chunk_size", '"big"', "chunk_size='big'"),
    ("task", "seq_len", "4", "seq_len=4"),
    ("task", "eval_pairs", "3", "task.eval_pairs=3"),
    ("spec", "p", "0.5", "p=0.5"),
    ("fit", "lr", "1e300", "fit.lr=1e+300"),
])
def test_bad_fixed_values_are_refused_when_the_file_is_parsed(tmp_path, section, key, value, message):
    """They were not checked at parse time: the worker died, and each re-run added a failed trial."""
    text = TINY.format(name="bad", steps=2, seeds=[0], lrs=[1e-2])
    header = f"[{section}]\n"
    text = re.sub(rf"(?m)^{key} = .*\n", "", text).replace(header, f"{header}{key} = {value}\n")
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_sweep(path)


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".hidden", "x" * 101, "", "runs\\x", "spaces here"])
def test_sweep_names_that_could_leave_runs_sweeps_are_refused(name):
    """name = "../../x" wrote its database and parquet outside runs/sweeps."""
    with pytest.raises(ValueError, match="name"):
        parse_sweep({"name": name, "space": {"seed": [0]}})


@pytest.mark.parametrize("table, message", [
    ({"optuna": {"grace_period": "30"}}, "optuna.grace_period"), ({"optuna": {"heartbeat_interval": 0}}, "heartbeat"),
    ({"optuna": {"grace_period": 5, "heartbeat_interval": 10}}, "must exceed"), ({"task": [1]}, "[task]"),
    ({"space": {"fit": [1]}}, "space.fit"), ({"space": {"fit": {"lr": {"low": "a", "high": 1}}}, "sampler": "random",
                                             "n_trials": 2}, "space.lr"),
    ({"seed": -1}, "seed=-1"), ({"seed": True}, "seed=True"), ({"space": {"seed": [0, 0]}}, "twice"),
])
def test_malformed_sweep_tables_are_value_errors(table, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_sweep({"name": "x", "space": {"seed": [0]}, **table})


def test_a_missing_or_malformed_sweep_file_is_a_value_error_naming_it(tmp_path):
    with pytest.raises(ValueError, match="cannot be read"):
        load_sweep(tmp_path / "absent.toml")
    (tmp_path / "broken.toml").write_text("name = [")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_sweep(tmp_path / "broken.toml")


@pytest.mark.slow
def test_editing_the_fixed_settings_starts_new_trials_and_never_mixes_results(tmp_path):
    """Editing [task] / [model] / [fit] silently mixed old and new results: the old trials counted as done."""
    sweep = tiny_sweep(tmp_path, "edited", steps=2, seeds=(0,), lrs=(1e-2,))
    storage = f"sqlite:///{tmp_path / 'edited.sqlite3'}"
    assert prepare(sweep, storage)[1] == 1
    work(sweep, storage)
    path = tmp_path / "edited.toml"
    path.write_text(path.read_text().replace("batch_size = 4", "batch_size = 8"))
    edited = load_sweep(path)
    assert edited.fixed_hash != sweep.fixed_hash and edited.plan == sweep.plan
    assert prepare(edited, storage)[1] == 1  # the same parameters under new settings: a new trial
    work(edited, storage)
    assert prepare(edited, storage)[1] == 0
    new, old = read_trials(storage, edited), read_trials(storage, sweep)
    assert new.height == 1 and old.height == 1 and new["trial"][0] != old["trial"][0]
    assert json.loads(new["settings"][0])["fit"]["batch_size"] == 8
    assert json.loads(old["settings"][0])["fit"]["batch_size"] == 4
    assert len(trials_of(sweep, storage)) == 2  # both kept in the study


@pytest.mark.parametrize("url, message", [
    ("mysql://user@host/db", "is not a supported storage URL"),
    ("sqlite:/x.sqlite3", "is not a supported storage URL"),
    ("sqlite:////nonexistent-dir/sub/x.sqlite3", "cannot open the study storage"),
    ("postgresql://user:hunter2@127.0.0.1:{port}/db", "cannot open the study storage"),
    ("postgresql+nodriver://user@127.0.0.1:{port}/db", "cannot open the study storage"),
])
def test_bad_storage_urls_and_unreachable_servers_are_one_line_value_errors(url, message):
    """They gave tracebacks (sqlalchemy ArgumentError, OperationalError, NoSuchModuleError)."""
    sweep = parse_sweep({"name": "x", "space": {"seed": [0]}})
    url = url.format(port=_free_port())
    start = time.monotonic()
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        prepare(sweep, url)
    assert "--storage" in str(info.value) and "\n" not in str(info.value) and "hunter2" not in str(info.value)
    assert time.monotonic() - start < 30


@pytest.mark.slow
def test_the_sweep_command_prints_one_error_line_for_a_bad_storage(tmp_path):
    sweep = tiny_sweep(tmp_path, "cli_storage", steps=2, seeds=(0,), lrs=(1e-2,))
    result = subprocess.run([sys.executable, "-m", "miras_lite", "sweep", str(sweep.path), "--storage",
                             f"postgresql://user@127.0.0.1:{_free_port()}/db"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: --storage=" in result.stderr and "cannot open the study storage" in result.stderr


def test_worker_liveness_is_decided_by_process():
    from miras_lite.sweeps.storage import worker_alive, worker_identity

    me = worker_identity()
    assert me["pid"] == os.getpid() and worker_alive(me)
    assert not worker_alive({**me, "start": (me["start"] or 0) + 1})  # the pid now belongs to a later process
    assert worker_alive({**me, "host": "another-machine"})  # elsewhere: the heartbeat decides
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    while Path(f"/proc/{child.pid}/stat").exists() and Path(f"/proc/{child.pid}/stat").read_text().split()[2] != "Z":
        time.sleep(0.01)
    assert not worker_alive({**me, "pid": child.pid, "start": None})  # exited, not yet reaped: a zombie
    child.wait()
    assert not worker_alive({**me, "pid": child.pid, "start": None})  # gone


def _has_trials(database):
    """The coordinator has created the schema and queued its trials (reading earlier would race its CREATE TABLEs)."""
    try:
        with sqlite3.connect(database) as db:
            return db.execute("SELECT count(*) FROM trials").fetchone()[0] > 0
    except sqlite3.Error:
        return False


def _sweep_command(sweep, storage, out):
    return [sys.executable, "-m", "miras_lite", "sweep", str(sweep.path), "--workers", "2", "--storage", storage,
            "--out", str(out)]


def _take_queued_trials(sweep_path, storage, count, results):
    study = open_study(load_sweep(sweep_path), storage)
    results.put([study.ask()._trial_id for _ in range(count)])


def test_workers_taking_queued_trials_at_once_never_take_the_same_one(tmp_path):
    """Two workers of `sweep --workers 2` once ran the same queued trial (SQLite has no row lock for Optuna's
    read-WAITING-then-write-RUNNING), and the second failed with "Cannot tell a COMPLETE trial": every queued
    trial must go to exactly one of four processes taking trials as fast as they can."""
    sweep = tiny_sweep(tmp_path, "taken_once", seeds=range(40), lrs=[1e-2, 2e-2, 3e-2])
    storage = f"sqlite:///{tmp_path / 'taken_once.sqlite3'}"
    study, queued_count = prepare(sweep, storage)
    assert queued_count == 120
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    takers = [context.Process(target=_take_queued_trials, args=(sweep.path, storage, 30, results)) for _ in range(4)]
    for taker in takers:
        taker.start()
    taken = [trial_id for _ in takers for trial_id in results.get(timeout=120)]
    for taker in takers:
        taker.join(30)
    waiting = {t._trial_id for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))}
    assert len(taken) == len(set(taken)) == 120 and not waiting


@pytest.mark.slow
def test_an_immediate_rerun_after_a_sigkilled_sweep_retries_the_killed_trials(tmp_path):
    """A re-run right after a SIGKILL of `sweep --workers 2` printed "12 trials (10 complete, 2 running)", exited 0,
    did not retry the killed trials and wrote "running" rows: it only worked once grace_period had passed. Here
    grace_period is 10 minutes, so only the workers' liveness by process can explain a retry."""
    path = tmp_path / "killed_group.toml"
    path.write_text(TINY.format(name="killed_group", steps=300, seeds=[0, 1, 2, 3], lrs=[1e-2])
                    .replace("grace_period = 2", "grace_period = 600"))
    sweep = load_sweep(path)
    database, out = tmp_path / "killed_group.sqlite3", tmp_path / "trials.parquet"
    storage = f"sqlite:///{database}"
    coordinator = subprocess.Popen(_sweep_command(sweep, storage, out), cwd=ROOT, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:  # one trial finished, two running (started: their settings are recorded)
            assert coordinator.poll() is None and time.monotonic() < deadline
            trials = trials_of(sweep, storage) if _has_trials(database) else []
            running = [t for t in trials if t.state == TrialState.RUNNING and "settings" in t.user_attrs]
            if any(t.state == TrialState.COMPLETE for t in trials) and len(running) == 2:
                break
            time.sleep(0.05)
        os.killpg(coordinator.pid, signal.SIGKILL)  # the coordinator and both workers
        coordinator.wait(10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(coordinator.pid, signal.SIGKILL)
    before = {t.number: t for t in trials_of(sweep, storage)}
    killed = sorted(n for n, t in before.items() if t.state == TrialState.RUNNING and "settings" in t.user_attrs)
    finished = {n for n, t in before.items() if t.state == TrialState.COMPLETE}
    assert len(killed) == 2 and finished

    rerun = subprocess.run(_sweep_command(sweep, storage, out), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    frame = pl.read_parquet(out)
    assert set(frame["status"]) == {"complete", "failed"}, frame.select("trial", "status", "reason")
    assert "running" not in rerun.stdout and "2 failed" in rerun.stdout
    complete = frame.filter(pl.col("status") == "complete")
    assert sorted(complete["seed"].to_list()) == [0, 1, 2, 3]  # every configuration once
    lost = frame.filter(pl.col("status") == "failed")
    assert sorted(lost["trial"].to_list()) == killed and all("is gone" in r for r in lost["reason"])
    assert sorted(frame.filter(pl.col("retry_of").is_not_null())["retry_of"].to_list()) == killed
    after = {t.number: t for t in trials_of(sweep, storage)}
    for n in finished:  # nothing finished was lost or run again
        assert after[n].datetime_complete == before[n].datetime_complete


# ------------------------------------------------------------------------------------ run directories


@pytest.fixture(autouse=True)
def _runs_in_tmp(tmp_path, monkeypatch):
    """Every sweep of these tests keeps its trials' run directories under tmp_path (MIRAS_LITE_RUNS, inherited by
    worker processes), not in the working tree's runs/."""
    monkeypatch.setenv("MIRAS_LITE_RUNS", str(tmp_path / "runs"))


def test_every_trial_trains_into_a_run_directory_named_in_the_parquet_that_load_run_opens(tmp_path):
    from miras_lite.runs import find_runs, load_run

    sweep = tiny_sweep(tmp_path, "dirs", steps=3, seeds=(0, 1), lrs=(1e-2,))
    storage, out = f"sqlite:///{tmp_path / 'dirs.sqlite3'}", tmp_path / "dirs.parquet"
    run_sweep(sweep, storage, workers=1, out=out)
    frame = pl.read_parquet(out)
    assert frame["status"].to_list() == ["complete", "complete"]
    assert frame["run_dir"].to_list() == [str(tmp_path / "runs" / "sweeps" / "dirs" / f"trial-{n}") for n in (0, 1)]
    assert find_runs(tmp_path / "runs") == [Path(p) for p in frame["run_dir"]]  # the playground lists them
    for row in frame.iter_rows(named=True):
        run = load_run(row["run_dir"])
        assert run.step == 3 and run.config.seed == row["seed"]
        assert run.metrics["loss"].to_list() == pytest.approx(row["loss_curve"])
        assert json.loads(row["settings"])["fit"] == run.config.to_dict()["fit"]


def test_a_study_started_again_under_the_same_name_never_writes_into_an_earlier_trials_directory(tmp_path):
    """Trial numbers start at 0 again in a new study (its SQLite file deleted): the new trial 0 takes trial-0-2;
    a retried trial (a new number) has a directory of its own anyway."""
    sweep = tiny_sweep(tmp_path, "again", steps=2, seeds=(0,), lrs=(1e-2,))
    first, second = (f"sqlite:///{tmp_path / name}" for name in ("first.sqlite3", "second.sqlite3"))
    frames = []
    for storage in (first, second):
        prepare(sweep, storage)
        work(sweep, storage)
        frames.append(read_trials(storage, sweep))
    folder = tmp_path / "runs" / "sweeps" / "again"
    assert [f["run_dir"].to_list() for f in frames] == [[str(folder / "trial-0")], [str(folder / "trial-0-2")]]
    assert (folder / "trial-0" / "checkpoint.pt").is_file() and (folder / "trial-0-2" / "checkpoint.pt").is_file()


def test_a_sigkilled_trials_retry_trains_into_a_new_directory(tmp_path):
    """The killed attempt keeps its directory (what it wrote before the kill); the retry, a trial of its own, writes
    its model elsewhere, and the parquet names the retry's directory."""
    from miras_lite.runs import load_run

    sweep = tiny_sweep(tmp_path, "retried", steps=1000, seeds=(0,), lrs=(1e-2,))
    storage = f"sqlite:///{tmp_path / 'retried.sqlite3'}"
    prepare(sweep, storage)
    worker = subprocess.Popen(worker_command(sweep, storage), stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("run_dir" in t.user_attrs for t in trials_of(sweep, storage)):
            time.sleep(0.05)
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    finally:
        worker.kill()
    frame = run_sweep(sweep, storage, workers=1)  # the dead worker's trial is failed and retried at once
    killed = frame.filter(pl.col("status") == "failed").row(0, named=True)
    retry = frame.filter(pl.col("retry_of") == killed["trial"]).row(0, named=True)
    assert retry["status"] == "complete" and retry["run_dir"] != killed["run_dir"]
    assert Path(killed["run_dir"]).is_dir() and load_run(retry["run_dir"]).step == 1000
