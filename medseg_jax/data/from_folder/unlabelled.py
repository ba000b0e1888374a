"""Writes a label-free `from_folder` folder from image files elsewhere.

For self-supervised pretraining on scans that have no labels: links (or
copies) the given files into `<out>/images/` and writes a `dataset.json`
with `"labelled": false`, so that `from_folder` reads them with
`config.manual_dir=<out>` (see docs/pretraining.md):

  python -m medseg_jax.data.from_folder.unlabelled \
      --out=workdirs/data/isbi2012_unlabelled --name=isbi2012_unlabelled \
      --spatial_dims=2 --channel=EM \
      ../shared/data/isbi2012_em_membrane/membrane/train/image \
      ../shared/data/isbi2012_em_membrane/membrane/test

Each argument is a file or a folder (its supported files, not recursing);
a file is named `<parent folder>_<file name>` in `images/`, so that
`train/image/0.png` and `test/0.png` stay two cases (`image_0`, `test_0`).
Names ending in `_NNNN` would read as nnU-Net channel files; avoid them.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
from collections.abc import Sequence

from medseg_jax.data.from_folder import from_folder


def write_folder(
  out: str | os.PathLike[str],
  sources: Sequence[str | os.PathLike[str]],
  *,
  name: str,
  spatial_dims: int,
  channel_names: Sequence[str] = ("image",),
  copy: bool = False,
) -> list[pathlib.Path]:
  """Links (or copies) ``sources`` into ``out/images`` and writes its
  ``dataset.json``; returns the new image paths.

  Raises:
    FileNotFoundError: if a source does not exist or no image is found.
    FileExistsError: if two sources map to the same name.
  """
  out = pathlib.Path(out)
  images = out / from_folder.IMAGES_DIR
  images.mkdir(parents=True, exist_ok=True)
  files = []
  for source in map(pathlib.Path, sources):
    if not source.exists():
      raise FileNotFoundError(f"{source} does not exist.")
    if source.is_dir():
      entries = sorted(source.iterdir())
      files += [p for p in entries if p.is_file() and from_folder._stem(p)]  # noqa: SLF001
    else:
      files.append(source)
  if not files:
    raise FileNotFoundError(f"No supported image in {list(sources)}.")
  written = []
  for path in files:
    target = images / f"{path.parent.name}_{path.name}"
    if target in written:
      raise FileExistsError(f"Two sources would be {target}.")
    if target.exists() or target.is_symlink():
      target.unlink()
    if copy:
      shutil.copyfile(path, target)
    else:
      target.symlink_to(path.resolve())
    written.append(target)
  description = {
    "name": name,
    "spatial_dims": spatial_dims,
    "channel_names": list(channel_names),
    "labelled": False,
  }
  (out / from_folder.DATASET_JSON).write_text(
    json.dumps(description, indent=2) + "\n"
  )
  return written


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("sources", nargs="+", help="Image files or folders.")
  parser.add_argument("--out", required=True, help="The folder to write.")
  parser.add_argument("--name", required=True, help="Its dataset name.")
  parser.add_argument("--spatial_dims", type=int, choices=(2, 3), default=2)
  parser.add_argument(
    "--channel", action="append", help="Channel name (repeat for several)."
  )
  parser.add_argument("--copy", action="store_true", help="Copy, not link.")
  args = parser.parse_args(argv)
  written = write_folder(
    args.out,
    args.sources,
    name=args.name,
    spatial_dims=args.spatial_dims,
    channel_names=args.channel or ["image"],
    copy=args.copy,
  )
  print(f"{len(written)} images in {args.out}.")


if __name__ == "__main__":
  main()
