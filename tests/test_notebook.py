"""The example notebook runs top to bottom (a small subset and few epochs, through its parameters cell)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
NOTEBOOK = Path(__file__).parents[1] / "examples" / "small_journey.ipynb"


def test_the_example_notebook_runs(mnist_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat", reason="the [notebook] extra is not installed")
    nbclient = pytest.importorskip("nbclient", reason="the [notebook] extra is not installed")
    monkeypatch.setenv("TINYMNIST_DATA", str(mnist_dir))  # the real MNIST when set, else synthetic files
    nb = nbformat.read(NOTEBOOK, as_version=4)
    parameters = next(cell for cell in nb.cells if "parameters" in cell.metadata.get("tags", []))
    parameters.source = "SUBSET = 2000\nEPOCHS = 2\nSEEDS = [1001, 1002]"
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3").execute()
    outputs = {i: cell.outputs for i, cell in enumerate(nb.cells) if cell.cell_type == "code"}
    text = "\n".join(o.get("data", {}).get("text/plain", "") for cells in outputs.values() for o in cells)
    assert "total: " in text and "final receptive field" in text  # the layer table
    assert text.count("targets NOT met") == 2  # two epochs cannot hold for five
    assert "0 of 2 (95% interval 0-85%)" in text
    assert sum("image/png" in o.get("data", {}) for cells in outputs.values() for o in cells) == 2  # two plots
