"""The quickstart notebook runs top to bottom and erasure lowers leakage in it."""

from pathlib import Path

import pytest

from erase import toyworld

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


@pytest.mark.skipif(not toyworld.t2i_path().exists(), reason="toy world weights not built")
def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.chdir(tmp_path)
    # a short erasure budget: the notebook's code path end to end (tests/test_toy_erasure.py checks the recipe erases)
    monkeypatch.setenv("ERASE_QUICKSTART_STEPS", "16")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "base model:" in outputs and "after ESD-x, 16 steps" in outputs
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
