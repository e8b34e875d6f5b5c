"""Small notebooks written for a test: a parameters cell, then code cells."""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

KERNEL = {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
          "language_info": {"name": "python"}}


def write_notebook(path: Path, parameters: str, *cells: str) -> Path:
    nb = new_notebook(metadata=KERNEL)
    nb.cells = [new_code_cell(parameters, metadata={"tags": ["parameters"]})] + [new_code_cell(c) for c in cells]
    nbformat.write(nb, path)
    return path


def outputs(path, kind: str | None = None) -> list:
    """Every output of an executed notebook, or those of one output_type."""
    nb = nbformat.read(path, as_version=4)
    return [o for cell in nb.cells for o in cell.get("outputs", []) if kind in (None, o.output_type)]
