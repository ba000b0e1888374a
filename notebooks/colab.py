r"""Keeps the notebooks' Colab links and set-up cell in one place.

  python notebooks/colab.py            # rewrite every notebook in place
  python notebooks/colab.py --check    # exit 1 if a notebook is out of date

Every notebook in this folder starts with a markdown cell whose first line
is the "Open in Colab" badge, then the set-up cell. Both are written from
this file: `GITHUB_REPO` must name where the repository is hosted (the
badge opens `notebooks/NAME.ipynb` of that repository's `BRANCH` in Colab,
and a fresh Colab runtime clones it from there). After changing them, run
this script; `tests/notebooks_test.py` fails while a notebook disagrees.

The script also strips outputs, execution counts and per-cell metadata and
numbers the cell ids, so that committed notebooks stay small and diff
cleanly.
"""

from __future__ import annotations

import pathlib
import sys

import nbformat

# Where the repository is hosted, as GitHub's owner/name, and its branch.
GITHUB_REPO = "medseg-jax/medseg_jax"
BRANCH = "main"

HERE = pathlib.Path(__file__).resolve().parent
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"

# The first code cell of every notebook. In a checkout (the notebook opened
# from its root or from notebooks/) it installs nothing and moves to the
# checkout's root, where `medseg_jax` and `configs` import. Elsewhere (a
# fresh Colab runtime) it clones the repository, installs it with pip unless
# medseg_jax is already importable, adding the GPU or TPU build of JAX when
# the runtime has that accelerator, and moves into the clone.
SETUP_CELL = """\
# Set-up: in a checkout of medseg_jax this installs nothing; in a fresh
# Colab runtime it clones and installs it (GPU or TPU JAX where available).
import glob
import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys

GITHUB_REPO = "{repo}"  # Must match where the repo is hosted.
JAX = "jax[{{}}]==0.12.1"  # The version requirements.txt pins.

here = pathlib.Path.cwd()
root = next(
  (
    p
    for p in (here, *here.parents)
    if (p / "medseg_jax" / "__init__.py").is_file() and (p / "configs").is_dir()
  ),
  None,
)
if root is None:  # Not inside a checkout: a fresh Colab runtime.
  root = pathlib.Path("medseg_jax_repo").resolve()
  if not root.exists():
    url = f"https://github.com/{{GITHUB_REPO}}.git"
    subprocess.check_call(["git", "clone", "-q", "--depth=1", url, str(root)])
  if importlib.util.find_spec("medseg_jax") is None:
    extra = []
    if shutil.which("nvidia-smi"):
      extra = [JAX.format("cuda12")]
    elif glob.glob("/dev/accel*") or "COLAB_TPU_ADDR" in os.environ:
      extra = [JAX.format("tpu")]
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    subprocess.check_call([*pip, str(root), *extra])
# Run from the checkout's root: `configs` and relative data paths resolve.
sys.path.insert(0, str(root))
os.chdir(root)
print("medseg_jax from", root)"""


def badge(name: str) -> str:
  """The markdown "Open in Colab" badge of notebook `name` (a file name)."""
  url = (
    f"https://colab.research.google.com/github/{GITHUB_REPO}/blob/{BRANCH}/"
    f"notebooks/{name}"
  )
  return f"[![Open In Colab]({BADGE_IMAGE})]({url})"


def setup_source() -> str:
  return SETUP_CELL.format(repo=GITHUB_REPO)


def notebooks() -> list[pathlib.Path]:
  return sorted(HERE.glob("[0-9][0-9]_*.ipynb"))


def tidy(notebook: nbformat.NotebookNode, name: str) -> nbformat.NotebookNode:
  """Returns `notebook` with current badge and set-up cell, outputs off."""
  notebook = nbformat.from_dict(notebook)
  cells = notebook.cells
  if len(cells) < 2 or cells[0].cell_type != "markdown":
    raise ValueError(f"{name}: the first cell must be markdown (the badge).")
  if cells[1].cell_type != "code":
    raise ValueError(f"{name}: the second cell must be the set-up code.")
  lines = cells[0].source.split("\n")
  if lines[0].startswith("[![Open In Colab]"):
    lines = lines[1:]
  cells[0].source = "\n".join([badge(name), *lines])
  cells[1].source = setup_source()
  for index, cell in enumerate(cells):
    cell.id = f"cell-{index:02d}"  # Stable ids: rewrites give small diffs.
    cell.metadata = {}
    if cell.cell_type == "code":
      cell.outputs = []
      cell.execution_count = None
  notebook.metadata = {
    "kernelspec": {
      "display_name": "Python 3",
      "language": "python",
      "name": "python3",
    },
    "language_info": {"name": "python"},
    "colab": {"provenance": []},
    "accelerator": "GPU",
  }
  return notebook


def main(argv: list[str]) -> int:
  check = "--check" in argv
  stale = []
  for path in notebooks():
    text = path.read_text()
    current = nbformat.reads(text, as_version=4)
    wanted = nbformat.writes(tidy(current, path.name)) + "\n"
    if wanted != text:
      stale.append(path.name)
      if not check:
        path.write_text(wanted)
  if check and stale:
    print("Out of date (run python notebooks/colab.py):", ", ".join(stale))
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
