"""Session-wide strict numerics and shared fixtures for the parity suite.

Every test runs in float32 with JAX matmuls at "highest" precision and torch TF32 off (matmul and cuDNN),
so that a 1e-5 tolerance measures implementation differences, not reduced-precision kernels.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import jax
import pytest
import torch

jax.config.update("jax_default_matmul_precision", "highest")
jax.config.update("jax_enable_x64", False)
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.set_default_dtype(torch.float32)
torch.set_num_threads(2)

# pytest runs with --import-mode=importlib, which does not put test folders on sys.path: make the shared
# harness importable as a plain module (one module object for conftest and every test file).
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import harness  # noqa: E402


@pytest.fixture(autouse=True)
def _strict_numerics() -> Iterator[None]:
    """Re-assert the numeric settings around each test, in case a test or library changed them."""
    yield
    assert jax.config.jax_default_matmul_precision == "highest"
    assert not torch.backends.cuda.matmul.allow_tf32
    assert not torch.backends.cudnn.allow_tf32
    assert torch.get_default_dtype() == torch.float32


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> harness.CheckpointCache:
    """HF checkpoints of the shared tiny config, one per task, made once and loaded once per backend."""
    return harness.CheckpointCache(tmp_path_factory.mktemp("checkpoints"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Heavy cases run only when asked for (``-m slow``); otherwise they are deselected, which pytest
    reports in its summary line, rather than skipped."""
    if "slow" in (config.getoption("markexpr") or ""):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not harness.MAX_DIFFS:
        return
    terminalreporter.section("largest differences observed (max abs; gradients relative)")
    for kind, value in sorted(harness.MAX_DIFFS.items()):
        terminalreporter.write_line(f"{kind:<48} {value:.3e}")
