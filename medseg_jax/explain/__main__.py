r"""Explanation maps of a trained run's predictions on new images.

  python -m medseg_jax.explain --workdir=workdirs/isbi \
      --input=slice.png --output=/tmp/maps                # every method
  python -m medseg_jax.explain --workdir=workdirs/unet3d_lesjak \
      --input=case1.nii.gz --method=gradcam --method=occlusion \
      --class=lesion --region=largest_component --output=/tmp/maps \
      --option=window=16 --option=stride=8 --layer=up_1

The run's saved config (`WORKDIR/config.json`) gives the model, its
checkpoint (`--checkpoint`), the dataset's preprocessing and
normalisation: inputs are read and prepared exactly as by
`python -m medseg_jax.predict` (`predict.Predictor.prepare`), padded as
the predictor pads them, and explained whole, or window by window where
`config.eval.sliding_window` is set (or `--windowed`).

Target: `--class` (a class name or id; default the first foreground class)
and `--region`: `predicted` (the voxels predicted as that class, default),
`largest_component`, `all`, `voxel` (with `--voxel=y,x` or `z,y,x` in the
input's own indices) or `mask` (with `--mask=FILE`, a mask on the input's
grid). Options of the methods: `--layer` (Grad-CAM), `--gate` (attention)
and `--option=NAME=VALUE` for the others (`explain.method_options`).

Outputs, per input and method, in `--output`:

  2-D input   <name>_<method>.png      heat map over the image, region outlined
              <name>_<method>.npy      the map, f32 on the input's grid
  3-D input   <name>_<method>.nii.gz   the map, f32, in the input's space
                                       (affine and header kept)
              <name>_<method>.png      three axial slices where it is strongest
"""

from __future__ import annotations

import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from medseg_jax import xla_cpu  # noqa: E402


def _parse_value(text: str):
  """`"3"` -> 3, `"0.5"` -> 0.5, `"16,16"` -> (16, 16), else the string."""
  parts = [p.strip() for p in text.split(",")]
  values = []
  for part in parts:
    for cast in (int, float):
      try:
        values.append(cast(part))
        break
      except ValueError:
        continue
    else:
      if part in ("True", "False"):
        values.append(part == "True")
      else:
        values.append(part)
  return tuple(values) if len(values) > 1 else values[0]


def parse_options(items: list[str]) -> dict:
  """`["window=16", "fill=mean"]` -> `{"window": 16, "fill": "mean"}`."""
  options = {}
  for item in items:
    name, sep, value = item.partition("=")
    if not sep or not name:
      raise ValueError(f"--option={item!r}: expected NAME=VALUE.")
    options[name.strip()] = _parse_value(value)
  return options


def options_for(method: str, options: dict) -> dict:
  """The entries of `options` that `method` takes."""
  from medseg_jax import explain  # noqa: PLC0415

  valid = explain.method_options(method)
  return {k: v for k, v in options.items() if k in valid}


def check_all_used(methods: list[str], options: dict) -> None:
  """Raises a ValueError for an option none of `methods` takes."""
  from medseg_jax import explain  # noqa: PLC0415

  valid = {o for m in methods for o in explain.method_options(m)}
  unused = sorted(set(options) - valid)
  if unused:
    raise ValueError(
      f"Option(s) {unused} are not options of {methods}; valid options: "
      f"{sorted(valid)}."
    )


def applicable_methods(model) -> list[str]:
  """Every method, attention only for a model with gates."""
  from medseg_jax import explain  # noqa: PLC0415
  from medseg_jax.models import attention_unet  # noqa: PLC0415

  gated = isinstance(model, attention_unet.AttentionUNet)
  return [m for m in explain.METHODS if m != "attention" or gated]


def output_stem(source: pathlib.Path) -> str:
  """The input's name without its image suffix (as `predict` names it)."""
  from medseg_jax import predict  # noqa: PLC0415

  name = predict.output_path(source, pathlib.Path(".")).name
  for suffix in ("_seg.png", "_seg.nii.gz"):
    if name.endswith(suffix):
      return name[: -len(suffix)]
  return name


class Explainer:
  """Reads, prepares and explains one input at a time."""

  def __init__(
    self,
    workdir: str,
    *,
    methods: list[str] | None = None,
    class_name: str | None = None,
    region: str = "predicted",
    voxel: tuple[int, ...] | None = None,
    options: dict | None = None,
    checkpoint: str = "best",
    config=None,
    windowed: bool | None = None,
  ):
    from medseg_jax import explain  # noqa: PLC0415
    from medseg_jax import predict  # noqa: PLC0415

    self.predictor = predict.Predictor(workdir, checkpoint, config)
    trained = self.predictor.trained
    self.model, self.variables = trained.model, trained.variables
    self.spec, self.config = trained.spec, trained.config
    self.methods = list(methods or applicable_methods(self.model))
    for method in self.methods:
      explain.get_method(method)
    self.options = dict(options or {})
    check_all_used(self.methods, self.options)
    default = 1 if self.spec.num_classes > 1 else 0
    self.class_index = explain.class_index(
      self.spec.class_names, default if class_name is None else class_name
    )
    if region not in explain.REGIONS:
      raise ValueError(
        f"Unknown --region {region!r}; valid regions: {explain.REGIONS}."
      )
    self.region, self.voxel = region, voxel
    predictor = self.predictor.model
    self.window = predictor.window
    if windowed is not None:
      self.window = (
        (predictor.window or predictor.min_shape) if windowed else None
      )
    self._fns = {}

  def _fn(self, method: str, target):
    from medseg_jax import explain  # noqa: PLC0415

    key = (method, target.region, target.voxel)
    if key not in self._fns:
      self._fns[key] = explain.make_explainer(
        self.model, method, target, **options_for(method, self.options)
      )
    return self._fns[key]

  def __call__(
    self,
    source: pathlib.Path,
    output_dir: pathlib.Path,
    mask_path: pathlib.Path | None = None,
  ) -> list[pathlib.Path]:
    """Writes every method's map of `source`; returns the paths."""
    import numpy as np  # noqa: PLC0415

    from medseg_jax import console  # noqa: PLC0415
    from medseg_jax import explain  # noqa: PLC0415
    from medseg_jax.data import medical_io  # noqa: PLC0415
    from medseg_jax.data import preprocessing  # noqa: PLC0415
    from medseg_jax.evaluation import case_predictor  # noqa: PLC0415
    from medseg_jax.explain import render  # noqa: PLC0415
    from medseg_jax.explain import targets  # noqa: PLC0415

    volume, stored, image = self.predictor.prepare(source)
    shape = image.shape[:-1]
    predictor = self.predictor.model
    padded_to = case_predictor.padded_shape(
      shape, predictor.min_shape, predictor.pad_multiple
    )
    pads = case_predictor.center_pads(shape, padded_to)
    padded = np.pad(image, [*pads, (0, 0)])
    crop = tuple(slice(b, b + s) for (b, _), s in zip(pads, shape, strict=True))

    mask = None
    if self.region == "mask":
      if mask_path is None:
        raise ValueError("--region=mask needs --mask=FILE.")
      user = np.asarray(medical_io.read(mask_path, case_id=mask_path.name).data)
      user = user.reshape(user.shape[: volume.spatial_dims])
      if user.shape != tuple(volume.shape):
        raise ValueError(
          f"--mask {mask_path} has shape {user.shape}; the input {source} "
          f"has {tuple(volume.shape)}."
        )
      on_stored = preprocessing.to_original_grid(
        (user != 0).astype(np.uint8), volume.affine, stored.affine, shape
      )
      mask = np.pad(on_stored, pads) != 0
    voxel = None
    if self.region == "voxel":
      voxel = self._stored_voxel(volume, stored, pads)
    target = explain.Target(
      class_index=self.class_index,
      region=self.region,
      voxel=voxel,
      mask=mask,
    )

    region = np.asarray(
      targets.region_of(self.model, self.variables, padded[None], target)
    )[0]
    if not region.any():
      console.write(
        f"{source}: the region is empty (class "
        f"{self.spec.class_names[self.class_index]!r}, region "
        f"{self.region!r}); its maps are zero. Try --region=all or another "
        "--class."
      )

    def to_input(a: np.ndarray) -> np.ndarray:
      return preprocessing.to_original_grid(
        np.asarray(a)[crop], stored.affine, volume.affine, volume.shape
      )

    shown = np.asarray(volume.data, np.float32)
    if shown.ndim == volume.spatial_dims:
      shown = shown[..., None]
    region_in = to_input(region.astype(np.uint8)) != 0
    stem = output_stem(source)
    written = []
    for method in self.methods:
      fn = self._fn(method, target)
      if self.window is None:
        heat = np.asarray(fn(self.variables, padded[None], mask))[0]
      else:
        heat = explain.sliding_window_explain(
          lambda w, m, fn=fn: fn(self.variables, w, m),
          padded,
          window=self.window,
          overlap=predictor.overlap,
          mask=mask,
        )
      heat = to_input(heat.astype(np.float32))
      picture = render.render(
        shown, heat, region=region_in, title=f"{stem}: {method}"
      )
      png = output_dir / f"{stem}_{method}.png"
      picture.save(png)
      written.append(png)
      if volume.spatial_dims == 2:
        raw = output_dir / f"{stem}_{method}.npy"
        np.save(raw, heat)
      else:
        raw = output_dir / f"{stem}_{method}.nii.gz"
        medical_io.write_nifti(
          raw,
          heat,
          volume.affine,
          like=source if medical_io.file_kind(source) == "nifti" else None,
        )
      written.append(raw)
    return written

  def _stored_voxel(self, volume, stored, pads) -> tuple[int, ...]:
    import numpy as np  # noqa: PLC0415

    if self.voxel is None:
      raise ValueError("--region=voxel needs --voxel=y,x (or z,y,x).")
    d = volume.spatial_dims
    if len(self.voxel) != d or not all(
      0 <= v < s for v, s in zip(self.voxel, volume.shape, strict=True)
    ):
      raise ValueError(
        f"--voxel={self.voxel} is not inside the input's shape "
        f"{tuple(volume.shape)}."
      )
    # Input voxel -> world -> stored voxel (affines are 4x4 in 2-D too).
    point = np.zeros(4)
    point[:d], point[3] = self.voxel, 1.0
    index = np.linalg.inv(stored.affine) @ volume.affine @ point
    index = np.clip(
      np.round(index[:d]).astype(int), 0, np.array(stored.shape) - 1
    )
    return tuple(int(i) + b for i, (b, _) in zip(index, pads, strict=True))


def explain_all(
  workdir: str,
  inputs: list[str],
  output: str,
  *,
  mask: str | None = None,
  **kwargs,
) -> tuple[list[pathlib.Path], list[tuple[str, str]]]:
  """Explains every input; returns (written paths, [(input, error)])."""
  from medseg_jax import console  # noqa: PLC0415

  output_dir = pathlib.Path(output)
  output_dir.mkdir(parents=True, exist_ok=True)
  explainer = Explainer(workdir, **kwargs)
  written, failed = [], []
  for item in console.progress(inputs, desc="explain", unit="case"):
    try:
      written += explainer(
        pathlib.Path(item), output_dir, pathlib.Path(mask) if mask else None
      )
    except Exception as e:  # noqa: BLE001 - report, skip, go on.
      message = f"{type(e).__name__}: {e}"
      failed.append((item, message))
      console.write(f"FAILED {item}: {message}")
  return written, failed


def _define_flags(argv):
  """Flags exist only when run as a program, so tests can import this."""
  from medseg_jax import run_config  # noqa: PLC0415

  run_config.define_config_flag(argv)
  flags.DEFINE_string("workdir", None, "The trained run.")
  flags.DEFINE_string("checkpoint", "best", "best, latest, or a step number.")
  flags.DEFINE_multi_string(
    "input", [], "Input file or DICOM directory; repeat for several."
  )
  flags.DEFINE_string("output", None, "Output directory.")
  flags.DEFINE_multi_string(
    "method", [], "Method name(s); repeat. Default: every applicable one."
  )
  flags.DEFINE_string(
    "class", None, "Class name or id; default the first foreground class."
  )
  flags.DEFINE_string("region", "predicted", "Region of the target class.")
  flags.DEFINE_string("voxel", None, "y,x or z,y,x for --region=voxel.")
  flags.DEFINE_string("mask", None, "Mask file for --region=mask.")
  flags.DEFINE_string("layer", None, "Grad-CAM layer (default: bottleneck).")
  flags.DEFINE_string("gate", None, "Attention gate (default: the finest).")
  flags.DEFINE_multi_string(
    "option", [], "NAME=VALUE option of a method, e.g. window=16; repeat."
  )
  flags.DEFINE_bool(
    "windowed",
    None,
    "Explain window by window (default: config.eval.sliding_window).",
  )
  flags.mark_flags_as_required(["workdir", "output"])


def main(argv):
  xla_cpu.configure_flags()  # Before any JAX computation.
  f = flags.FLAGS
  inputs = list(f.input) + list(argv[1:])
  if not inputs:
    raise app.UsageError("Give at least one --input.")
  from medseg_jax import console  # noqa: PLC0415

  console.setup(f.workdir, process_index=0)
  options = parse_options(f.option)
  if f.layer:
    options["layer"] = f.layer
  if f.gate:
    options["gate"] = f.gate
  voxel = None
  if f.voxel:
    voxel = tuple(int(v) for v in f.voxel.split(","))
  methods = []
  for item in f.method:
    methods += [m for m in item.split(",") if m]
  written, failed = explain_all(
    f.workdir,
    inputs,
    f.output,
    mask=f.mask,
    methods=methods or None,
    class_name=f["class"].value,
    region=f.region,
    voxel=voxel,
    options=options,
    checkpoint=f.checkpoint,
    config=f.config,
    windowed=f.windowed,
  )
  print(f"{len(written)} file(s) written to {f.output}; {len(failed)} failed.")
  for item, message in failed:
    print(f"  {item}: {message}")
  if failed:
    sys.exit(1)


if __name__ == "__main__":
  _define_flags(sys.argv)
  app.run(main)
