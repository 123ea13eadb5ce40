"""Shared pytest setup for the miras_lite core tests.

* makes `tests/reference.py` importable as `reference`;
* one intra-op thread per process: the tests use tiny tensors, for which torch's thread pool costs
  far more than it saves (a 3×4 softmax over dim -2 takes ~8 ms with 2 threads, ~2 µs with 1), and
  `pytest -n 2` already uses both cores; OMP_NUM_THREADS=1 passes the same to every subprocess the tests
  start (notebook scripts, marimo servers, sweep workers): two busy threads per process on two shared
  cores made torch up to 50x slower;
* without a GPU, Triton kernels run under the interpreter (TRITON_INTERPRET=1, set before triton is
  first imported);
* `browser`: Debian's Chromium driven by Playwright, for the tests of the apps in a browser;
* hypothesis profiles: "miras" (default: no deadline, derandomized so CI is reproducible) and
  "miras-random" (random search; select with HYPOTHESIS_PROFILE=miras-random).
"""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

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
