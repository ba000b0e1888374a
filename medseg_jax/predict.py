r"""Segments new images with a trained run and writes the masks.

  python -m medseg_jax.predict --workdir=workdirs/unet3d_lesjak \
      --output=/tmp/masks \
      --input=/data/new/case1.nii.gz --input=/data/new/case2.nii.gz

  python -m medseg_jax.predict --workdir=workdirs/isbi --output=/tmp/masks \
      --input=/data/em/*.png [--config.eval.sliding_window=True]

The run's saved config (`WORKDIR/config.json`) gives the model, the
dataset's preprocessing and `config.eval`; `--config.FIELD=VALUE`
overrides a field, `--config=FILE` replaces it (same model and dataset).

A folds directory of `python -m medseg_jax.cross_validate` (`fold_<k>/`
runs) predicts with the ensemble of its folds: their softmax outputs are
averaged, and the largest-component post-processing chosen on the
cross-validation is applied (`--postprocess=on|off` overrides it);
`--config.FIELD=VALUE` then overrides `eval` fields of every fold
(default: fold 0's config). `--tta` adds flip test-time augmentation over
every spatial axis, for one run or each fold.

Inputs and outputs:

  NIfTI (.nii, .nii.gz)        -> <name>_seg.nii.gz, with the input's shape,
                                  affine and header (orientation kept)
  a DICOM series (a directory) -> <directory name>_seg.nii.gz
  PNG/JPEG/TIFF/BMP            -> <name>_seg.png (class ids as pixel values)
  MetaImage (.mhd, .mha)       -> <name>_seg.nii.gz

Each input goes through the dataset's build-time preprocessing
(reorientation, cropping, resampling, normalisation; `registry.
input_preprocessing`) and the config's normalisation, then the model
(whole-image or sliding-window, TTA and clean-up as in `config.eval`); the
mask is mapped back onto the input's own grid by nearest neighbour. A
multi-channel model takes one 4-D NIfTI (channels last) or one colour image
per case. An input that cannot be read or predicted is reported and
skipped; the others still run, and the exit code is 1 if any failed.
"""

from __future__ import annotations

import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from medseg_jax import xla_cpu  # noqa: E402


def output_path(source: pathlib.Path, output_dir: pathlib.Path) -> pathlib.Path:
  """Where the mask of `source` goes (see the module docstring)."""
  from medseg_jax.data import medical_io  # noqa: PLC0415

  kind = medical_io.file_kind(source)
  name = source.name
  for suffix in (
    ".nii.gz",
    ".nii",
    ".mhd",
    ".mha",
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".tiff",
    ".tif",
    ".dcm",
  ):
    if name.lower().endswith(suffix):
      name = name[: -len(suffix)]
      break
  if kind in ("image", "tiff"):
    return output_dir / f"{name}_seg.png"
  return output_dir / f"{name}_seg.nii.gz"


class Predictor:
  """Reads, preprocesses, predicts and writes one input at a time."""

  def __init__(
    self,
    workdir: str,
    checkpoint: str = "best",
    config=None,
    *,
    tta: bool = False,
    postprocess: str = "auto",
  ):
    from medseg_jax.data import registry  # noqa: PLC0415
    from medseg_jax.data import transforms  # noqa: PLC0415
    from medseg_jax.evaluation import case_predictor  # noqa: PLC0415
    from medseg_jax.evaluation import ensemble  # noqa: PLC0415

    if postprocess not in POSTPROCESS:
      raise ValueError(
        f"Unknown postprocess={postprocess!r}; valid: {POSTPROCESS}."
      )
    largest = {"auto": None, "on": True, "off": False}[postprocess]
    if ensemble.is_folds_dir(workdir):

      def overrides(member):
        if config is not None:
          member.eval = config.eval
          member.data_dir = config.data_dir
        return member

      self.model, self.trained = ensemble.load_ensemble(
        workdir,
        checkpoint,
        largest_component=largest,
        tta_flip_axes="all" if tta else None,
        config_overrides=overrides,
      )
      self.config = config = self.trained.config
    else:
      self.trained = case_predictor.load_trained(workdir, checkpoint, config)
      self.config = config = self.trained.config
      if tta:
        config.eval.tta_flip_axes = self._all_axes()
      if largest is not None:
        config.eval.largest_component = largest
      self.model = case_predictor.CasePredictor.from_config(
        config, self.trained.model, self.trained.variables
      )
    self.preprocess = registry.input_preprocessing(
      config.dataset,
      os.path.expanduser(config.data_dir),
      config.get("manual_dir"),
    )
    self.normalize = transforms.build(
      [s for s in config.data.train_transforms if s["op"] == "normalize"]
    )

  def prepare(self, source: pathlib.Path):
    """Reads `source` and brings it to what the model saw in training.

    Returns:
      `(volume, stored, image)`: the input as read (`medical_io.Volume`, on
      its own grid), the preprocessed volume (on the stored grid, with its
      affine) and `image: f32[*S, C]`, `stored`'s data after the config's
      normalisation. `python -m medseg_jax.explain` reads inputs through
      this too.
    """
    import dataclasses  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415

    from medseg_jax.data import checks  # noqa: PLC0415
    from medseg_jax.data import medical_io  # noqa: PLC0415

    spec = self.trained.spec
    case_id = source.name
    volume = medical_io.read(source, case_id=case_id)
    if volume.spatial_dims != spec.spatial_dims:
      raise checks.InvalidExampleError(
        f"{source}: {volume.spatial_dims}-D input of shape "
        f"{volume.data.shape}; the model is {spec.spatial_dims}-D."
      )
    data = np.asarray(volume.data)
    if data.dtype == np.uint8:  # 8-bit images are stored in [0, 1].
      data = data.astype(np.float32) / 255.0
    volume = dataclasses.replace(volume, data=data)
    if self.preprocess is not None:
      stored, _ = self.preprocess.apply([volume], None, case_id=case_id)
    else:
      if data.ndim == volume.spatial_dims:
        data = data[..., None]
      stored = dataclasses.replace(volume, data=data.astype(np.float32))
    if stored.data.shape[-1] != spec.num_channels:
      raise checks.InvalidExampleError(
        f"{source}: {stored.data.shape[-1]} channel(s); the model takes "
        f"{spec.num_channels} ({', '.join(self._channel_names())})."
      )
    example = {
      "image": stored.data,
      "label": np.zeros(stored.shape, np.uint8),
    }
    for transform in self.normalize:
      example = transform.map(example)
    return volume, stored, np.asarray(example["image"], np.float32)

  def __call__(self, source: pathlib.Path, output_dir: pathlib.Path):
    """Segments `source`; returns the path written."""
    import numpy as np  # noqa: PLC0415

    from medseg_jax.data import medical_io  # noqa: PLC0415
    from medseg_jax.data import preprocessing  # noqa: PLC0415

    volume, stored, image = self.prepare(source)
    label = self.model.predict_label(image)
    label = preprocessing.to_original_grid(
      label, stored.affine, volume.affine, volume.shape
    ).astype(np.uint8)
    target = output_path(source, output_dir)
    tmp = target.with_name(".tmp_" + target.name)
    if target.suffix == ".png":
      medical_io.write_image_2d(tmp, label)
    else:
      medical_io.write_nifti(
        tmp,
        label,
        volume.affine,
        like=source if medical_io.file_kind(source) == "nifti" else None,
      )
    tmp.replace(target)  # Never a half-written mask under the final name.
    return target

  def _all_axes(self) -> tuple[int, ...]:
    return tuple(range(self.trained.spec.spatial_dims))

  def _channel_names(self):
    return [str(i) for i in range(self.trained.spec.num_channels)]


POSTPROCESS = ("auto", "on", "off")


def predict_all(
  workdir: str,
  inputs: list[str],
  output: str,
  checkpoint: str = "best",
  config=None,
  *,
  tta: bool = False,
  postprocess: str = "auto",
) -> tuple[list[pathlib.Path], list[tuple[str, str]]]:
  """Segments every input; returns (written paths, [(input, error)]).

  `config` (default: the run's `config.json`) may override anything but
  the model and dataset. `workdir` may be a folds directory (an ensemble).
  """
  from medseg_jax import console  # noqa: PLC0415

  output_dir = pathlib.Path(output)
  output_dir.mkdir(parents=True, exist_ok=True)
  predictor = Predictor(
    workdir, checkpoint, config, tta=tta, postprocess=postprocess
  )
  written, failed = [], []
  for item in console.progress(inputs, desc="predict", unit="case"):
    source = pathlib.Path(item)
    try:
      written.append(predictor(source, output_dir))
    except Exception as e:  # noqa: BLE001 - report, skip, go on.
      message = f"{type(e).__name__}: {e}"
      failed.append((item, message))
      console.write(f"FAILED {item}: {message}")
  return written, failed


def _define_flags(argv):
  """Flags exist only when run as a program, so tests can import this."""
  from medseg_jax import run_config  # noqa: PLC0415
  from medseg_jax.evaluation import ensemble  # noqa: PLC0415

  workdir = run_config._flag_value(argv, "workdir")  # noqa: SLF001
  folds = ensemble.fold_dirs(workdir) if workdir else []
  if folds and run_config._flag_value(argv, "config") is None:  # noqa: SLF001
    from ml_collections import config_flags  # noqa: PLC0415

    config_flags.DEFINE_config_dict(
      "config",
      run_config.load(folds[0]),
      "Fold 0's config.json; --config.eval.FIELD=VALUE overrides the "
      "evaluation options of every fold.",
    )
  else:
    run_config.define_config_flag(argv)
  flags.DEFINE_string("workdir", None, "The trained run.")
  flags.DEFINE_string("checkpoint", "best", "best, latest, or a step number.")
  flags.DEFINE_multi_string(
    "input", [], "Input file or DICOM directory; repeat for several."
  )
  flags.DEFINE_string("output", None, "Output directory.")
  flags.DEFINE_bool(
    "tta", False, "Flip test-time augmentation over every spatial axis."
  )
  flags.DEFINE_enum(
    "postprocess",
    "auto",
    list(POSTPROCESS),
    "Largest component per class: auto (the cross-validation's choice for "
    "a folds directory, config.eval for a run), on or off.",
  )
  flags.mark_flags_as_required(["workdir", "output"])


def main(argv):
  xla_cpu.configure_for(flags.FLAGS.config)  # Before any JAX computation.
  inputs = list(flags.FLAGS.input) + list(argv[1:])
  if not inputs:
    raise app.UsageError("Give at least one --input.")
  from medseg_jax import console  # noqa: PLC0415

  # The run's log.txt gets this prediction's log too.
  console.setup(flags.FLAGS.workdir, process_index=0)
  written, failed = predict_all(
    flags.FLAGS.workdir,
    inputs,
    flags.FLAGS.output,
    flags.FLAGS.checkpoint,
    config=flags.FLAGS.config,
    tta=flags.FLAGS.tta,
    postprocess=flags.FLAGS.postprocess,
  )
  print(
    f"{len(written)} mask(s) written to {flags.FLAGS.output}; {len(failed)} failed."
  )
  for item, message in failed:
    print(f"  {item}: {message}")
  if failed:
    sys.exit(1)


if __name__ == "__main__":
  _define_flags(sys.argv)
  app.run(main)
