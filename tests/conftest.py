from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own cache file and no CUDA detection surprises."""
    monkeypatch.setenv("PIS_TUI_CACHE", str(tmp_path / "cache.duckdb"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield


@pytest.fixture(scope="module")
def device_ctx():
    """The local device opened for measuring (once per test module), its pools freed after."""
    pytest.importorskip("torch")
    from pis_tui import timing

    c = timing.open_device("local")
    yield c
    c.free()


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


