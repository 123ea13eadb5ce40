"""`benchmarks.gpu_check`: its CPU smoke run writes one results file in which every part measured something, the
wheels it carries install without a network (pip or unzipped) and only where the machine lacks them, the stub
polars, the pytest report it reads, the target ratios without polars, and conftest's switch of test tensors to
another device."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check, kernels
from conftest import TensorsOn

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.kernels
def test_quick_check_writes_one_file_in_which_every_part_measured(tmp_path):
    out = tmp_path / "gpu_check.json"
    command = [sys.executable, "-m", "benchmarks.gpu_check", "--quick", "--out", str(out), "--wheels",
               str(tmp_path / "no_wheels"), "--kernels-budget", "3"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["gpu"] is None and results["quick"] and results["date"]
    assert results["versions"]["torch"] == torch.__version__
    assert results["wheels"]["found"] is False and results["wheels"]["installed"] == []
    tests, bench, training = (results["parts"][name] for name in gpu_check.PARTS)
    assert tests["status"] == "ok" and tests["passed"] > 0 and tests["failed"] == tests["errors"] == 0
    assert "tests/test_dispatch.py" in tests["files"] and "tests/test_kernels_bench.py" not in tests["files"]
    assert bench["status"] in ("ok", "partial") and bench["rows"]
    assert all(row["tokens_per_s"] > 0 and row["seconds"] > 0 for row in bench["rows"])
    assert {target["what"] for target in bench["targets"]} == {what for what, *_ in kernels.TARGETS}
    assert training["status"] == "ok" and [row["preset"] for row in training["rows"]] == list(gpu_check.QUICK_PRESETS)
    for row in training["rows"]:
        assert row["tokens_per_s_auto"] > 0 and row["tokens_per_s_torch"] > 0 and row["ratio"] > 0
        assert row["auto_runs"].startswith("torch/")  # CPU tensors: "auto" runs torch
    markdown = results["markdown"]
    assert "| preset | chunk | auto runs |" in markdown and "| method | spec | D | T |" in markdown
    assert markdown in result.stdout


def _wheel(folder, name, version="1.0", tags="py3-none-any"):
    """A minimal wheel of one module `name` (VALUE = 1) with its metadata."""
    path = folder / f"{name}-{version}-{tags}.whl"
    info = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": "VALUE = 1\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tags}\n"}
    files[f"{info}/RECORD"] = "".join(f"{file},,\n" for file in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as archive:
        for file, text in files.items():
            archive.writestr(file, text)
    return path


@pytest.mark.parametrize("installer", ["unzip", "pip"])
def test_wheels_install_only_what_this_python_lacks(tmp_path, installer):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    probe = _wheel(wheels, "gpu_check_probe")
    _wheel(wheels, "gpu_check_other", tags="cp27-cp27m-win32")  # for another Python and platform: left alone
    _wheel(wheels, "torch", version="0.0")  # installed here: the machine's own version stays
    site = tmp_path / "site"
    report = gpu_check.install_missing(wheels, site, installer=installer)
    assert report == dict(installer=installer, installed=[probe.name],
                          present=[f"torch {torch.__version__}"], polars_stub=False)
    assert not (site / "torch").exists() and not (site / "gpu_check_other").exists()
    imported = subprocess.run([sys.executable, "-c", "import gpu_check_probe; print(gpu_check_probe.VALUE)"],
                              env={"PYTHONPATH": str(site)}, capture_output=True, text=True)
    assert imported.stdout.strip() == "1", imported.stderr


def test_a_machine_without_polars_gets_a_stub_that_refuses_to_be_used(tmp_path, monkeypatch):
    find_spec = gpu_check.importlib.util.find_spec
    monkeypatch.setattr(gpu_check.importlib.util, "find_spec",
                        lambda name: None if name == "polars" else find_spec(name))
    site = tmp_path / "site"
    assert gpu_check.install_missing(tmp_path / "no_wheels", site)["polars_stub"]
    code = "import polars as pl\ntry:\n    pl.DataFrame\nexcept ImportError as error:\n    print(error)"
    used = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(site)}, capture_output=True, text=True)
    assert "polars.DataFrame: polars is not installed here" in used.stdout, used.stderr
    with pytest.raises(ValueError, match="^installer="):
        gpu_check.install_missing(tmp_path, site, installer="conda")


@pytest.mark.parametrize("filename, python, machine, fits", [
    ("pytest-9.2.0-py3-none-any.whl", (3, 12), "x86_64", True),
    ("numpy-2.4.6-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl", (3, 12), "x86_64", True),
    ("numpy-2.4.6-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl", (3, 11), "x86_64", False),
    ("numpy-2.4.6-cp311-cp311-manylinux_2_17_aarch64.whl", (3, 11), "x86_64", False),
    ("numpy-2.4.6-cp311-cp311-win_amd64.whl", (3, 11), "x86_64", False),
])
def test_wheel_compatibility(filename, python, machine, fits):
    assert gpu_check.compatible(filename, python, machine) is fits


def test_junit_counts_and_failures(tmp_path):
    report = tmp_path / "report.xml"
    report.write_text('<testsuites><testsuite tests="4" failures="1" errors="1" skipped="1">'
                      '<testcase classname="tests.test_a" name="test_ok"/>'
                      '<testcase classname="tests.test_a" name="test_bad"><failure message="assert 1 == 2">...'
                      '</failure></testcase><testcase classname="tests.test_b" name="test_err"><error message="boom"/>'
                      '</testcase><testcase classname="tests.test_b" name="test_skip"><skipped/></testcase>'
                      '</testsuite></testsuites>')
    assert gpu_check.junit_counts(report) == dict(
        passed=1, failed=1, errors=1, skipped=1,
        failures=[dict(test="tests.test_a::test_bad", message="assert 1 == 2"),
                  dict(test="tests.test_b::test_err", message="boom")])


def test_target_ratios_from_plain_rows():
    def row(method, tokens_per_s, passes="fwd+bwd", interpreted=False):
        return dict(method=method, spec="gated_deltanet", T=4096, D=128, passes=passes, tokens_per_s=tokens_per_s,
                    interpreted=interpreted)

    rows = [row("triton/recurrent", 600.0), row("torch/recurrent", 10.0), row("torch/recurrent", 1.0, passes="fwd"),
            row("triton/delta_rule", 5.0, interpreted=True), row("fla/chunk", 5.0)]
    ratios = {r["what"]: r for r in kernels.target_ratios(rows)}
    assert ratios["recurrent kernel vs torch token loop"] == dict(
        what="recurrent kernel vs torch token loop", T=4096, D=128, ratio=60.0, target=50.0, needs="a GPU")
    assert ratios["exact delta-rule kernel vs fla chunk"]["ratio"] is None  # the kernel's row is interpreted


@pytest.mark.parametrize("argv, option", [(["--quick", "--tests-budget", "0"], "--tests-budget"),
                                          (["--quick", "--deadline", "-1"], "--deadline"),
                                          ([], "--quick")])
def test_bad_options_are_refused_by_name(argv, option, capsys):
    if option == "--quick" and torch.cuda.is_available():
        pytest.skip("with a GPU the full check is what runs")
    with pytest.raises(SystemExit):
        gpu_check.main(argv)
    assert f"error: {option}" in capsys.readouterr().err


def test_conftest_puts_the_tests_own_tensors_on_the_device():
    elsewhere = {"torch": torch}
    with TensorsOn("meta"):
        drawn = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
        zeros = torch.zeros(3)
        explicit = torch.ones(2, device="cpu")
        exec(compile("made = torch.zeros(2)", str(ROOT / "miras_lite" / "made.py"), "exec"), elsewhere)
    assert drawn.device.type == zeros.device.type == "meta" and drawn.is_leaf and drawn.requires_grad
    assert explicit.device.type == elsewhere["made"].device.type == "cpu"


def test_markdown_shows_failures_errors_and_skipped_parts():
    kernel_row = dict(method="triton/delta_rule", spec="gated_deltanet", T=4096, D=128, interpreted=False)
    versions = dict(torch="2.11.0", fla="0.6.0")
    results = dict(gpu="NVIDIA H100", date="2026-12-05", quick=False, versions=versions, parts=dict(
        tests=dict(status="failed", files=["tests/test_dispatch.py"], select=None, device="cuda", seconds=9.0, passed=3,
                   failed=1, errors=0, skipped=0, failures=[dict(test="tests.test_dispatch::test_x", message="a | b")]),
        kernels=dict(status="failed", B=8, H=16, dtype="bfloat16", fla_error=None, seconds=60.0, targets=[],
                     rows=[dict(kernel_row, passes="fwd", tokens_per_s=2e6, tflops=1.0, seconds=0.1),
                           dict(kernel_row, passes="fwd+bwd", tokens_per_s=1e6, tflops=1.5, seconds=0.3),
                           dict(kernel_row, method="fla/chunk", error="OutOfMemoryError: CUDA out of memory")]),
        training=dict(status="skipped", error="the deadline (--deadline) has passed")))
    markdown = gpu_check.markdown(results)
    assert "Measured on NVIDIA H100, 2026-12-05 (torch 2.11.0, fla 0.6.0)" in markdown
    assert "3 passed, 1 failed" in markdown and "- `tests.test_dispatch::test_x`: a | b" in markdown
    assert "| triton/delta_rule | gated_deltanet | 128 | 4096 | 2,000,000 | 1,000,000 | 1.5 |" in markdown
    assert "| fla/chunk | gated_deltanet | 128 | 4096 | - | - | OutOfMemoryError: CUDA out of memory |" in markdown
    assert "**training**: skipped, no rows: `the deadline (--deadline) has passed`" in markdown


def test_a_stopped_pytest_run_is_counted_from_its_output():
    output = ("collecting ... collected 5 items\n"
              "tests/test_a.py::test_one PASSED [ 20%]\n"
              "tests/test_a.py::test_two[x-1] FAILED [ 40%]\n"
              "tests/test_b.py::test_three SKIPPED (no GPU) [ 60%]\n"
              "tests/test_b.py::test_four ERROR [ 80%]\n"
              "tests/test_b.py::test_five ")
    assert gpu_check.progress_counts(output) == dict(
        passed=1, failed=1, errors=1, skipped=1,
        failures=[dict(test="tests/test_a.py::test_two[x-1]", message=""),
                  dict(test="tests/test_b.py::test_four", message="")])


def test_a_stopped_pytest_xdist_run_is_counted_from_its_output():
    """Under pytest-xdist (the tests part's workers on a GPU machine) each result line starts with its worker."""
    output = ("[gw1] [ 12%] PASSED tests/test_dispatch.py::test_torch_rows[spec2-None-torch/materialised-64] \n"
              "[gw0] [ 25%] FAILED tests/test_kernels_mlp.py::test_shapes[T1] \n"
              "[gw0] [ 37%] SKIPPED tests/test_kernels_mlp.py::test_limits \n")
    assert gpu_check.progress_counts(output) == dict(
        passed=1, failed=1, errors=0, skipped=1, failures=[dict(test="tests/test_kernels_mlp.py::test_shapes[T1]",
                                                                message="")])
