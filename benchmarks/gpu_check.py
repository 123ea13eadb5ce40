"""`python -m benchmarks.gpu_check`: the whole GPU check of kernels/README.md in one command and one results file.

    python -m benchmarks.gpu_check --prepare   here, with the package registries: the wheels the check needs, in
                                               .gpu_wheels/ (carried to the GPU machine with the working tree)
    python3 -m benchmarks.gpu_check            there: one CUDA GPU, torch and triton, no network; about 8 minutes
    python -m benchmarks.gpu_check --quick     a smoke run of the same on a CPU (kernels interpreted, tiny sizes)

The check first installs the wheels of .gpu_wheels/ that this Python lacks (the machine's own versions stay) into
a temporary folder put first on the path, with pip, or by unzipping them where pip is missing. `import miras_lite`
imports polars (its training loop and tasks report with it), which the check never calls and which is too big to
carry (54 MB): where polars is missing, that folder gets a stub `polars` whose attributes raise ImportError. Then
three parts run, each in its own process with its own time budget, so that a part that fails, crashes the CUDA
context or runs out of time records why and the next one still runs:

    tests     pytest tests/test_kernels_*.py tests/test_dispatch.py natively on CUDA (MIRAS_TEST_DEVICE=cuda: see
              tests/conftest.py; TRITON_INTERPRET unset); test_kernels_bench.py is left out (the next part)
    kernels   the rows of `benchmarks.kernels` (T ∈ {1k, 4k, 16k}, D ∈ {64, 128}, bf16, fla when importable; the
              size of the fla target, T=4096 and D=128, first) and its target ratios
    training  training tokens/s of the playground's MirasLM on MQAR for every preset at its recommended chunk size,
              backend="auto" vs backend="torch" on the same GPU, with what dispatch.plan runs for "auto"

It writes one JSON file ($OUT/gpu_check.json where $OUT is set, else runs/gpu_check.json; --out), rewritten after
every part: the GPU, the date, the versions, each part's results and `markdown`, tables for kernels/README.md,
which it also prints.
"""

import argparse
import functools
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ElementTree
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ".gpu_wheels"
# pytest (it pulls iniconfig, pluggy, packaging, pygments) and numpy (miras_lite.tasks imports it) at the versions of
# requirements.txt; fla's kernels: fla-core, the ops without flash-linear-attention's models (which need
# transformers), pure Python, for torch >= 2.7 and triton >= 3.3, and einops, which it imports
# and pytest-xdist (with execnet), so that the tests' kernels compile on several cores at once
WHEEL_REQUIREMENTS = ("pytest==9.2.0", "numpy==2.4.6", "fla-core==0.6.0", "einops==0.8.2", "pytest-xdist==3.8.0",
                      "execnet==2.1.2")
PYTHONS = ((3, 11), (3, 12))  # the GPU machine's CPython is one of these
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
CARRY_LIMIT_MIB = 64  # the working tree and the carried paths together
PARTS = ("tests", "kernels", "training")
BUDGETS = dict(tests=150, kernels=150, training=150)  # seconds
TEST_WORKERS = 8  # pytest-xdist processes on a GPU machine: compiling the kernels' variants is most of the tests' time
DEADLINE = 480  # seconds for all the parts together
GRACE = 20  # seconds a part may run past its budget (the row in hand) before it is stopped
KERNEL_SIZES = dict(lengths=(4096, 1024, 16384), dims=(128, 64))  # the fla target's size first
QUICK_KERNEL_SIZES = dict(lengths=(1024,), dims=(64,))  # --quick on a GPU
TRAINING = dict(vocab_size=64, seq_len=32, num_kv_pairs=4, batch_size=16)  # the playground's MQAR
TRAINING_TARGET = 3.0  # backend="auto" over backend="torch"
QUICK_PRESETS = ("gated_deltanet", "titans")
QUICK_TESTS = "test_a_single_token or test_torch_rows"
TAIL = 3000  # characters of a part's output kept when it did not succeed
VERBOSE_RESULT = re.compile(r"^(tests/\S+::.*?) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", re.MULTILINE)
XDIST_RESULT = re.compile(r"^\[gw\d+\] \[\s*\d+%\] (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) (tests/\S+::\S+)",
                          re.MULTILINE)  # the same line under pytest-xdist
OUTCOMES = dict(PASSED="passed", XPASS="passed", FAILED="failed", ERROR="errors", SKIPPED="skipped", XFAIL="skipped")
POLARS_STUB = '''"""A stub written by benchmarks.gpu_check on a machine without polars: `import miras_lite` imports
polars, but the GPU check never calls it."""


def __getattr__(name):
    raise ImportError(f"polars.{name}: polars is not installed here (this is benchmarks.gpu_check's stub)")
'''


# ------------------------------------------------------------------------------------------------ wheels


def _distribution(name):
    """A distribution's name as wheel file names spell it (PEP 427: runs of -_. as one _, lower case)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def wheel_tags(filename):
    """(distribution, python tags, platform tags) of a wheel's file name."""
    parts = filename.removesuffix(".whl").split("-")
    return _distribution(parts[0]), parts[-3].split("."), parts[-1].split(".")


def compatible(filename, python=None, machine=None):
    """Whether a wheel installs on CPython `python` ((major, minor), default this one) on Linux on `machine`
    (default this one): a pure wheel, or one for that CPython on a Linux of that machine."""
    major, minor = python or sys.version_info[:2]
    machine = machine or platform.machine()
    _, pythons, platforms = wheel_tags(filename)
    python_fits = f"py{major}" in pythons or f"cp{major}{minor}" in pythons
    return python_fits and any(p == "any" or ("linux" in p and p.endswith(f"_{machine}")) for p in platforms)


def install_missing(wheel_dir, site, installer=None):
    """Install into `site` the wheels of `wheel_dir` that fit this Python and whose distribution it does not have
    (the machine's own versions stay), with pip (--no-index --no-deps --target) or, where pip is missing or
    installer="unzip", by unzipping them (a wheel is a zip file); where polars is missing, write the stub polars
    there (module docstring). Returns {installer, installed, present, polars_stub}."""
    if installer not in (None, "pip", "unzip"):
        raise ValueError(f"installer={installer!r} is not supported; allowed values: None, 'pip', 'unzip'")
    wheels = [w for w in sorted(Path(wheel_dir).glob("*.whl")) if compatible(w.name)]
    present, missing = [], []
    for wheel in wheels:
        name = wheel_tags(wheel.name)[0]
        try:
            present.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            missing.append(wheel)
    installer = installer or ("pip" if importlib.util.find_spec("pip") else "unzip")
    if missing and installer == "pip":
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
                        "--target", str(site), *map(str, missing)], check=True)
    elif missing:
        for wheel in missing:
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(site)
    stub = importlib.util.find_spec("polars") is None
    if stub:
        (Path(site) / "polars").mkdir(parents=True, exist_ok=True)
        (Path(site) / "polars" / "__init__.py").write_text(POLARS_STUB)
    return dict(installer=installer if missing else None, installed=[w.name for w in missing], present=present,
                polars_stub=stub)


def _working_tree_bytes():
    """Bytes of what the device tool sends besides the carried paths: tracked and untracked, not ignored files."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    return sum((ROOT / name).stat().st_size for name in listed if name and (ROOT / name).is_file())


def prepare(wheel_dir):
    """Download the wheels of WHEEL_REQUIREMENTS (with what they need) into `wheel_dir`, emptied first, for CPython
    3.11 and 3.12 on manylinux x86_64; check that each has a wheel for both and that the folder and the working tree
    fit what the device tool carries; print the wheels, their sizes and the command to run there."""
    wheel_dir = Path(wheel_dir)
    wheel_dir.mkdir(parents=True, exist_ok=True)
    for old in wheel_dir.glob("*.whl"):
        old.unlink()
    platforms = [argument for name in PLATFORMS for argument in ("--platform", name)]
    for major, minor in PYTHONS:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--python-version",
                        f"{major}.{minor}", "--implementation", "cp", *platforms, "--dest", str(wheel_dir),
                        *WHEEL_REQUIREMENTS], check=True)
    wheels = sorted(wheel_dir.glob("*.whl"))
    for python in PYTHONS:
        found = {wheel_tags(w.name)[0] for w in wheels if compatible(w.name, python, "x86_64")}
        if lacking := {_distribution(r.split("==")[0]) for r in WHEEL_REQUIREMENTS} - found:
            raise SystemExit(f"no wheel for CPython {python} on manylinux x86_64: {', '.join(sorted(lacking))}")
    for wheel in wheels:
        print(f"{wheel.stat().st_size / 2**20:8.2f} MiB  {wheel.name}")
    wheel_bytes, tree_bytes = sum(w.stat().st_size for w in wheels), _working_tree_bytes()
    total = (wheel_bytes + tree_bytes) / 2**20
    print(f"{wheel_bytes / 2**20:8.2f} MiB  {wheel_dir} in all; with the working tree ({tree_bytes / 2**20:.2f} MiB): "
          f"{total:.2f} of the {CARRY_LIMIT_MIB} MiB the device tool carries")
    if total > CARRY_LIMIT_MIB:
        raise SystemExit(f"{total:.1f} MiB is more than the device tool carries ({CARRY_LIMIT_MIB} MiB)")
    print(f"on the GPU machine: carry ['{wheel_dir}'], command 'PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu_check', "
          "timeout_s 600")


# ------------------------------------------------------------------------------------------------ parts


def _run(command, env, timeout):
    """Run `command` in the repository with its output in a log: (exit code, or None when it was stopped after
    `timeout` seconds; seconds; the output)."""
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as log:
        start = time.monotonic()
        try:
            code = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = None
        seconds = time.monotonic() - start
        log.seek(0)
        return code, seconds, log.read()


def kernel_test_files():
    """The kernel test modules (test_kernels_bench.py aside: it runs the benchmark's command) and test_dispatch.py."""
    kernel_tests = sorted(p for p in (ROOT / "tests").glob("test_kernels_*.py") if p.name != "test_kernels_bench.py")
    return [str(p.relative_to(ROOT)) for p in kernel_tests] + ["tests/test_dispatch.py"]


def junit_counts(path):
    """passed, failed, errors, skipped and the failures' first lines (at most 50) of a pytest --junitxml report."""
    suite = ElementTree.parse(path).getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
    tests, failed, errors, skipped = (int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped"))
    failures = [dict(test=f"{case.get('classname')}::{case.get('name')}", message=(problem.get("message") or "")[:300])
                for case in suite.iter("testcase") for problem in case if problem.tag in ("failure", "error")]
    return dict(passed=tests - failed - errors - skipped, failed=failed, errors=errors, skipped=skipped,
                failures=failures[:50])


def progress_counts(output):
    """The counts of what `pytest -v` printed (all there is of a run stopped before its report), and the tests that
    failed, without their messages."""
    outcomes = [(test, OUTCOMES[word]) for test, word in VERBOSE_RESULT.findall(output)]
    outcomes += [(test, OUTCOMES[word]) for word, test in XDIST_RESULT.findall(output)]
    counts = {key: sum(outcome == key for _, outcome in outcomes) for key in ("passed", "failed", "errors", "skipped")}
    return dict(counts, failures=[dict(test=test, message="") for test, outcome in outcomes
                                  if outcome in ("failed", "errors")][:50])


def tests_part(args, env, budget, work):
    """pytest on the kernel tests in a process of its own, stopped after `budget` seconds (then the counts are
    those of its output so far)."""
    report = work / "tests.xml"
    select = args.tests_k if args.tests_k is not None else QUICK_TESTS if args.quick else None
    files = kernel_test_files()
    workers = ["-n", str(TEST_WORKERS)] if torch.cuda.is_available() and importlib.util.find_spec("xdist") else []
    command = [sys.executable, "-m", "pytest", *files, "-v", "-rfE", "-p", "no:cacheprovider", "--junitxml",
               str(report), *workers, *(["-k", select] if select else [])]
    code, seconds, output = _run(command, env, budget)
    result = dict(files=files, select=select, device=env.get("MIRAS_TEST_DEVICE", "cpu"), seconds=seconds,
                  budget_s=budget, workers=int(workers[1]) if workers else 1)
    result.update(junit_counts(report) if report.exists() else dict(progress_counts(output), counted_from="output"))
    failed = code == 1 and report.exists()  # pytest's code for failed tests (a Python that cannot start pytest: 1 too)
    result["status"] = "timeout" if code is None else "ok" if code == 0 else "failed" if failed else "error"
    return result, output


def module_part(name, args, env, budget, work):
    """The part `name` run by this module's --part in a process of its own: it stops starting rows after `budget`
    seconds, and is stopped GRACE seconds later. Its results are what it saved last, with a status."""
    saved = work / f"{name}.json"
    command = [sys.executable, "-m", "benchmarks.gpu_check", "--part", name, "--result", str(saved),
               "--budget", f"{budget:.0f}", *(["--quick"] if args.quick else [])]
    code, seconds, output = _run(command, env, budget + GRACE)
    result = json.loads(saved.read_text()) if saved.exists() else {}
    finished = "partial" if "stopped" in result else "failed" if any("error" in r for r in result.get("rows", ())) \
        else "ok"
    result.update(seconds=seconds, budget_s=budget, status="timeout" if code is None else finished if code == 0
                  else "error")
    return result, output


def kernels_part(args, deadline, result, save):
    """`benchmarks.kernels`' rows and target ratios on this machine, saved after every method; no new method
    starts after `deadline`."""
    from . import kernels

    gpu = torch.cuda.is_available()
    bench_args = kernels.build_parser().parse_args(["--repeats", "1" if args.quick else "3"])
    grid = {**kernels.GPU_GRID, **(QUICK_KERNEL_SIZES if args.quick else KERNEL_SIZES)} if gpu else kernels.QUICK_GRID
    fla_error = kernels.fla_missing()
    result.update(B=grid["B"], H=grid["H"], dtype=str(grid["dtype"]).removeprefix("torch."), fla_error=fla_error,
                  repeats=bench_args.repeats)
    for row in kernels.bench_rows(bench_args, grid, gpu and fla_error is None, errors=True):
        result["rows"].append(row)
        result["targets"] = kernels.target_ratios(result["rows"])
        save()
        if row.get("passes") != "fwd" and time.monotonic() > deadline:
            result["stopped"] = "budget"
            return


def _playground_model(name, backend, device):
    """The playground's MirasLM (d_model=64, 2 layers, 1 head) for a preset at its recommended chunk size and
    η_max, every MirasLayer on `backend` (the layer passes it to memory_scan at every forward)."""
    from miras_lite.config import MirasLMConfig
    from miras_lite.layers import MirasLayer
    from miras_lite.presets import named_preset

    recommended = named_preset(name).recommended
    torch.manual_seed(0)
    config = MirasLMConfig(d_model=64, n_layers=2, num_heads=1, chunk_size=recommended.chunk_size,
                           eta_max=recommended.eta_max)
    model = config.build(TRAINING["vocab_size"], name).to(device)
    for layer in model.modules():
        if isinstance(layer, MirasLayer):
            layer.backend = backend
    return model


def auto_plan(name, device):
    """What dispatch.plan runs for backend="auto" in the playground model's memory layers: {chunk_size,
    auto_runs, passed_over}."""
    from miras_lite import dispatch
    from miras_lite.layers import MirasLayer

    layer = next(m for m in _playground_model(name, "auto", device).modules() if isinstance(m, MirasLayer))
    x = torch.zeros(TRAINING["batch_size"], TRAINING["seq_len"], layer.num_heads, layer.head_dim, device=device)
    plan = dispatch.plan(layer.spec, layer.chunk_size, "auto", like=x, value_like=x, chunk_rule=layer.chunk_rule)
    return dict(chunk_size=layer.chunk_size, auto_runs=plan.implementation.name, passed_over=list(plan.passed_over))


def training_tokens_per_s(name, backend, device, warmup, steps):
    """Training tokens/s of the playground model on the playground's MQAR: AdamW at the preset's learning rate and
    gradient clipping as in miras_lite.fit, timed over `steps` steps after `warmup` (which compile and autotune)."""
    from miras_lite.presets import named_preset
    from miras_lite.tasks.mqar import MQAR
    from miras_lite.train import make_optimizer

    model = _playground_model(name, backend, device)
    optimizer = make_optimizer(model, named_preset(name).recommended.lr, weight_decay=0.1)
    B = TRAINING["batch_size"]
    task = MQAR(TRAINING["vocab_size"], TRAINING["seq_len"], TRAINING["num_kv_pairs"],
                train_examples=B * (warmup + steps), test_examples=1)
    batches = [[x.to(device) for x in task.batch(B, step)] for step in range(warmup + steps)]

    def step(inputs, labels):
        optimizer.zero_grad(set_to_none=True)
        model(inputs, labels)["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    for batch in batches[:warmup]:
        step(*batch)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for batch in batches[warmup:]:
        step(*batch)
    if device == "cuda":
        torch.cuda.synchronize()
    return B * TRAINING["seq_len"] * steps / (time.perf_counter() - start)


def compile_in_parallel(names, timeout):
    """One training step of each preset's playground model on backend="auto", every preset in a process of its own
    and all at once: Triton compiles their kernels on as many cores into its on-disk cache, where the timed runs
    find them. Returns the seconds it took and the presets whose step failed or did not finish in `timeout`."""
    code = "import sys, benchmarks.gpu_check as g; g.training_tokens_per_s(sys.argv[1], 'auto', 'cuda', 1, 1)"
    start = time.monotonic()
    processes = {name: subprocess.Popen([sys.executable, "-c", code, name], cwd=ROOT, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL) for name in names}
    failed = []
    for name, process in processes.items():
        try:
            if process.wait(max(1.0, timeout - (time.monotonic() - start))) != 0:
                failed.append(name)
        except subprocess.TimeoutExpired:
            process.kill()
            failed.append(name)
    return time.monotonic() - start, failed


def training_part(args, deadline, result, save):
    """Training tokens/s of every preset (--quick: QUICK_PRESETS) with backend "auto" and "torch", and what "auto"
    runs, saved after every preset; no new preset starts after `deadline`."""
    from miras_lite.presets import NAMED_PRESETS

    device = "cuda" if torch.cuda.is_available() else "cpu"
    warmup, steps = (1, 2) if args.quick else (3, 20)
    result.update(device=device, warmup_steps=warmup, timed_steps=steps, target=TRAINING_TARGET, **TRAINING)
    names = QUICK_PRESETS if args.quick else tuple(NAMED_PRESETS)
    if device == "cuda":
        seconds, failed = compile_in_parallel(names, (deadline - time.monotonic()) / 2)
        result.update(compile_seconds=seconds, compile_failed=failed)
        save()
    for name in names:
        row = dict(preset=name)
        try:
            row.update(auto_plan(name, device))
            for backend in ("auto", "torch"):
                row[f"tokens_per_s_{backend}"] = training_tokens_per_s(name, backend, device, warmup, steps)
            row["ratio"] = row["tokens_per_s_auto"] / row["tokens_per_s_torch"]
        except Exception as error:
            row["error"] = f"{type(error).__name__}: {error}"
        result["rows"].append(row)
        save()
        if time.monotonic() > deadline:
            result["stopped"] = "budget"
            return


MODULE_PARTS = dict(kernels=kernels_part, training=training_part)


def part_main(args):
    """--part: run one part in this process, saving its results to --result as they come."""
    result = dict(rows=[])
    try:
        MODULE_PARTS[args.part](args, time.monotonic() + args.budget, result, lambda: _write_json(args.result, result))
    except Exception:
        result["error"] = traceback.format_exc()[-TAIL:]
        _write_json(args.result, result)
        raise
    _write_json(args.result, result)


# ------------------------------------------------------------------------------------------------ report


def _markdown_table(columns, rows):
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    cells = (" | ".join(str(cell).replace("|", "/").replace("\n", " ") for cell in row) for row in rows)
    return "\n".join(lines + [f"| {row} |" for row in cells])


def _tokens(x):
    return "-" if x is None else f"{x:,.0f}"


def _tests_markdown(part):
    counts = ", ".join(f"{part[key]} {key}" for key in ("passed", "failed", "errors", "skipped") if key in part)
    if part.get("counted_from") == "output":
        counts += " (counted in its output: it stopped before its report)"
    select = f" -k '{part['select']}'" if part.get("select") else ""
    lines = [f"**Kernel tests** (`pytest {' '.join(part.get('files', ()))}{select}`, tensors on {part.get('device')}):"
             f" {counts or 'no report'} ({part['status']}, {part.get('seconds', 0):.0f} s)"]
    return "\n".join(lines + [f"- `{f['test']}`: {f['message']}" for f in part.get("failures", ())])


def _kernel_cells(passes):
    """tokens/s forward, forward+backward and TFLOP/s forward+backward of one method and size, or its error."""
    if "error" in passes:
        return "-", "-", passes["error"]["error"][:80]
    return (_tokens(passes.get("fwd", {}).get("tokens_per_s")), _tokens(passes.get("fwd+bwd", {}).get("tokens_per_s")),
            f"{passes['fwd+bwd']['tflops']:.3g}" if "fwd+bwd" in passes else "-")


def _kernels_markdown(part):
    by_size = {}
    for row in part.get("rows", ()):
        by_size.setdefault((row["method"], row["spec"], row["D"], row["T"]), {})[row.get("passes", "error")] = row
    rows = [(*key, *_kernel_cells(passes)) for key, passes in by_size.items()]
    targets = [(t["what"], t["T"] or "-", t["D"] or "-", "-" if t["ratio"] is None else f"{t['ratio']:.2f}x",
                f">= {t['target']}x", "-" if t["ratio"] is None else "yes" if t["ratio"] >= t["target"] else "no")
               for t in part.get("targets", ())]
    title = (f"**Kernels** (`benchmarks.kernels`, B={part.get('B')}, H={part.get('H')}, {part.get('dtype')}; "
             f"fla: {part.get('fla_error') or 'importable'}; {part['status']}, {part.get('seconds', 0):.0f} s)")
    return "\n\n".join([title, _markdown_table(("method", "spec", "D", "T", "fwd tokens/s", "fwd+bwd tokens/s",
                                                "fwd+bwd TFLOP/s"), rows),
                        _markdown_table(("target (fwd+bwd)", "T", "D", "ratio", "target", "met"), targets)])


def _chunk(row):
    return "exact" if "chunk_size" in row and row["chunk_size"] is None else row.get("chunk_size", "-")


def _training_markdown(part):
    rows = [(r["preset"], _chunk(r), r.get("auto_runs", "-"), _tokens(r.get("tokens_per_s_auto")),
             _tokens(r.get("tokens_per_s_torch")), f"{r['ratio']:.2f}x" if "ratio" in r else r.get("error", "-")[:80],
             "-" if "ratio" not in r else "yes" if r["ratio"] >= TRAINING_TARGET else "no")
            for r in part.get("rows", ())]
    title = (f"**Training** (MirasLM d_model=64, 2 layers, 1 head on MQAR V=64, L=32, batch 16, float32, "
             f"{part.get('timed_steps')} steps timed; {part['status']}, {part.get('seconds', 0):.0f} s)")
    return "\n\n".join([title, _markdown_table(("preset", "chunk", "auto runs", "auto tokens/s", "torch tokens/s",
                                                "auto / torch", f"met (>= {TRAINING_TARGET:g}x)"), rows)])


def markdown(results):
    """The results as markdown for kernels/README.md: a heading line, then one block per part."""
    versions = ", ".join(f"{k} {v}" for k, v in results["versions"].items())
    blocks = [f"Measured on {results['gpu'] or 'a CPU (smoke run)'}, {results['date']} ({versions}) by "
              f"`python -m benchmarks.gpu_check{' --quick' if results['quick'] else ''}`."]
    writers = dict(tests=_tests_markdown, kernels=_kernels_markdown, training=_training_markdown)
    for name, part in results["parts"].items():
        if part["status"] == "skipped" or (name != "tests" and not part.get("rows")):
            why = part.get("error") or part.get("output_tail", "")
            blocks.append(f"**{name}**: {part['status']}, no rows: `{why[-300:].strip()}`")
        else:
            blocks.append(writers[name](part))
    return "\n\n".join(blocks)


def _write_json(path, data):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(data, indent=1, default=str))
    partial.replace(path)


def _versions():
    found = {}
    for name, distribution in (("torch", "torch"), ("triton", "triton"), ("fla", "fla-core")):
        try:
            found[name] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return dict(python=platform.python_version(), **found, cuda=torch.version.cuda)


def _child_env(site, gpu):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(site), os.environ.get("PYTHONPATH"))))
    if gpu:
        env.pop("TRITON_INTERPRET", None)
        env["MIRAS_TEST_DEVICE"] = "cuda"
    else:
        env["TRITON_INTERPRET"] = "1"
    return env


def _start(args, work):
    """The results' heading (GPU, date, versions, wheels) and the environment of the parts, once the wheels this
    Python lacks are installed into work/site, which goes first on the path."""
    gpu = torch.cuda.is_available()
    site = work / "site"
    wheels = dict(folder=str(args.wheels), found=Path(args.wheels).is_dir(), **install_missing(args.wheels, site))
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    results = dict(gpu=torch.cuda.get_device_name() if gpu else None, quick=args.quick,
                   date=datetime.now(timezone.utc).isoformat(timespec="seconds"), versions=_versions(), wheels=wheels,
                   parts={})
    return results, _child_env(site, gpu)


def check(args):
    """Check mode: the wheels, then each part within its budget and the deadline, the results file rewritten after
    every part. Returns the results."""
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
        results, env = _start(args, Path(work))
        end = time.monotonic() + args.deadline
        for name in PARTS:
            budget = min(getattr(args, f"{name}_budget"), end - time.monotonic() - GRACE)
            if budget <= 0:
                results["parts"][name] = dict(status="skipped", error="the deadline (--deadline) has passed")
                continue
            print(f"# {name}: at most {budget:.0f} s", flush=True)
            run = tests_part if name == "tests" else functools.partial(module_part, name)
            part, output = run(args, env, budget, Path(work))
            if part["status"] != "ok":
                part["output_tail"] = output[-TAIL:]
            print(output[-TAIL:], flush=True)
            results["parts"][name] = part
            _write_json(args.out, results)
    results["markdown"] = markdown(results)
    _write_json(args.out, results)
    print(results["markdown"], f"\n# wrote {args.out}", flush=True)
    return results


def _check_options(args):
    """ValueError naming the option that cannot run here."""
    for name in ("deadline", *(f"{part}_budget" for part in PARTS)):
        if not getattr(args, name) > 0:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)!r} must be a number of seconds > 0")
    if not (args.prepare or args.part or args.quick or torch.cuda.is_available()):
        raise ValueError("--quick: without a CUDA GPU only the smoke run runs; pass --quick")


def build_parser():
    out = Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else Path("runs/gpu_check.json")
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepare", nargs="?", const=WHEELS, metavar="DIR",
                        help=f"download the wheels the check needs into DIR (default {WHEELS}) and stop")
    parser.add_argument("--wheels", default=WHEELS, help=f"the wheel folder the check installs from (default {WHEELS})")
    parser.add_argument("--out", default=out, help=f"the results file (default {out})")
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny sizes, two presets, a few tests")
    parser.add_argument("--deadline", type=float, default=DEADLINE,
                        help=f"seconds for all the parts together (default {DEADLINE})")
    for name in PARTS:
        parser.add_argument(f"--{name}-budget", type=float, default=BUDGETS[name],
                            help=f"seconds for the {name} part (default {BUDGETS[name]})")
    parser.add_argument("--tests-k", metavar="EXPR", help=f"pytest -k of the tests part (--quick: {QUICK_TESTS!r})")
    parser.add_argument("--part", choices=tuple(MODULE_PARTS), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, help=argparse.SUPPRESS)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _check_options(args)
    except ValueError as error:
        parser.error(str(error))
    if args.prepare:
        prepare(args.prepare)
    elif args.part:
        part_main(args)
    else:
        check(args)


if __name__ == "__main__":
    main()
