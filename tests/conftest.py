"""Shared pytest setup for the miras_lite core tests.

* makes `tests/reference.py` importable as `reference`;
* one intra-op thread per process: the tests use tiny tensors, for which torch's thread pool costs
  far more than it saves (a 3×4 softmax over dim -2 takes ~8 ms with 2 threads, ~2 µs with 1), and
  `pytest -n 2` already uses both cores; OMP_NUM_THREADS=1 passes the same to every subprocess the tests
  start (notebook scripts, marimo servers, sweep workers): two busy threads per process on two shared
  cores made torch up to 50x slower;
* without a GPU, Triton kernels run under the interpreter (TRITON_INTERPRET=1, set before triton is
  first imported);
* MIRAS_TEST_DEVICE=cuda (`benchmarks.gpu_check` sets it): the tensors the test files make are CUDA tensors
  (`TensorsOn`), so the kernel tests run natively on a GPU; unset (or "cpu"), nothing changes;
* `browser`: Debian's Chromium driven by Playwright, for the tests of the apps in a browser;
* hypothesis profiles: "miras" (default: no deadline, derandomized so CI is reproducible) and
  "miras-random" (random search; select with HYPOTHESIS_PROFILE=miras-random).
"""

import os
import sys

import pytest
import torch
from torch.overrides import TorchFunctionMode

TESTS = os.path.dirname(os.path.abspath(__file__))
TEST_DEVICES = ("cpu", "cuda")
sys.path.insert(0, TESTS)
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


class TensorsOn(TorchFunctionMode):
    """Tensors that code in tests/ makes with a factory (torch.randn, zeros, tensor, ...) and no device go to
    `device`, like `torch.set_default_device` but for the tests' own calls only: the library's code runs as
    it would for a user, so a tensor it makes on the wrong device still fails. Draws from a CPU generator are
    made on the CPU and moved, so the tests see the same numbers as on a CPU."""

    def __init__(self, device):
        from torch.utils._device import _device_constructors  # what torch.set_default_device redirects

        super().__init__()
        self.device, self.constructors = torch.device(device), _device_constructors()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if (func in self.constructors and kwargs.get("device") is None
                and sys._getframe(1).f_code.co_filename.startswith(TESTS + os.sep)):
            generator = kwargs.get("generator")
            if generator is not None and generator.device.type != self.device.type:
                requires_grad = kwargs.pop("requires_grad", False)
                return func(*args, **kwargs).to(self.device).requires_grad_(requires_grad)
            kwargs["device"] = self.device
        return func(*args, **kwargs)


TEST_DEVICE = os.environ.get("MIRAS_TEST_DEVICE", "cpu")
if TEST_DEVICE not in TEST_DEVICES:
    raise ValueError(f"MIRAS_TEST_DEVICE={TEST_DEVICE!r} is not supported; allowed values: {TEST_DEVICES}")
if TEST_DEVICE == "cuda":
    if not torch.cuda.is_available():
        raise ValueError("MIRAS_TEST_DEVICE='cuda' needs a CUDA GPU; none is visible to torch")
    TensorsOn("cuda").__enter__()  # for the whole session, as torch.set_default_device does

try:
    from hypothesis import settings

    settings.register_profile("miras", deadline=None, print_blob=True, derandomize=True, database=None)
    settings.register_profile("miras-random", deadline=None, print_blob=True)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "miras"))
except ImportError:  # pragma: no cover
    pass


@pytest.fixture()
def browser():
    """Debian's Chromium (`browser.launch_chromium`), headless, closed after the test."""
    from playwright.sync_api import sync_playwright

    from browser import launch_chromium

    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()
