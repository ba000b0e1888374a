r"""A trained run, exported for deployment: StableHLO, SavedModel, ONNX.

  python -m medseg_jax.export --workdir=workdirs/demo --format=stablehlo \
      --output=exports/demo_stablehlo [--symbolic] [--checkpoint=best]
  python -m medseg_jax.export --workdir=workdirs/demo --format=saved_model \
      --output=exports/demo_tf --symbolic
  python -m medseg_jax.export --workdir=workdirs/demo --format=onnx \
      --output=exports/demo_onnx

The exported function maps an image as the dataset stores it (after the
build-time reorientation and resampling, before the input pipeline's
intensity normalisation) to logits:

  image:  f32[B, *S, C]   channels last; S = the training patch, or (with
                          --symbolic) any sizes that are multiples of
                          `pad_multiple` in metadata.json
  logits: f32[B, *S, K]   softmax and argmax are left to the caller

The normalisation of the run's config (`config.data.train_transforms`'s
`normalize`: per-image z-score, min-max, or the fixed clip and z-score of a
CT plan) is part of the function, so the caller only resamples. The
weights are constants of the exported program. Each export writes
`metadata.json` beside the model: classes, channels, spacing, the
normalisation, patch size, size multiple, layout, and how to run it.

Formats, and what runs them without this code:

  stablehlo    model.jaxexport (jax.export serialisation) and model.mlir
               (StableHLO text):
                 jax.export.deserialize(open(p, "rb").read()).call(x)
  saved_model  a TF SavedModel through jax2tf (signature "serving_default",
               input "image"):  tf.saved_model.load(d).serve(x)
  onnx         model.onnx, converted by jax2onnx from the same function:
                 onnxruntime.InferenceSession(p).run(None, {"image": x})

ONNX sizes are fixed: `--batch` and the training patch (larger images go
through a sliding window on the caller's side).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import sys
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from medseg_jax import xla_cpu  # noqa: E402

FORMATS = ("stablehlo", "saved_model", "onnx")
METADATA = "metadata.json"
STABLEHLO_FILE = "model.jaxexport"
MLIR_FILE = "model.mlir"
ONNX_FILE = "model.onnx"
INPUT_NAME = "image"


def normalize_fn(spec: dict[str, Any]) -> Callable[[Any], Any]:
  """The JAX twin of `data.transforms.Normalize` for `f32[B, *S, C]`.

  Per image, as the input pipeline normalises one example at a time.
  """
  import jax.numpy as jnp  # noqa: PLC0415

  from medseg_jax.data import transforms  # noqa: PLC0415

  normalize = transforms.build([spec])[0]  # Validates the spec.
  mode = normalize.mode
  eps = normalize.eps

  def apply(image):
    spatial = tuple(range(1, image.ndim - 1))
    if mode == "none":
      return image
    if mode == "fixed":
      low = jnp.array(
        [-jnp.inf if v is None else v for v in normalize.low], jnp.float32
      )
      high = jnp.array(
        [jnp.inf if v is None else v for v in normalize.high], jnp.float32
      )
      mean = jnp.asarray(normalize.mean, jnp.float32)
      std = jnp.asarray(normalize.std, jnp.float32)
      return (jnp.clip(image, low, high) - mean) / std
    if normalize.nonzero:
      select = jnp.any(image > 0, axis=-1, keepdims=True)
      count = jnp.sum(select, axis=spatial, keepdims=True)
      select = jnp.where(count > 0, select, True)
    else:
      select = jnp.ones(image.shape[:-1] + (1,), bool)
    weight = select.astype(jnp.float32)
    count = jnp.sum(weight, axis=spatial, keepdims=True)
    if mode == "zscore":
      mean = jnp.sum(image * weight, axis=spatial, keepdims=True) / count
      var = jnp.sum((image - mean) ** 2 * weight, axis=spatial, keepdims=True)
      std = jnp.sqrt(var / count)
      return (image - mean) / jnp.maximum(std, eps)
    low = jnp.min(
      jnp.where(select, image, jnp.inf), axis=spatial, keepdims=True
    )
    high = jnp.max(
      jnp.where(select, image, -jnp.inf), axis=spatial, keepdims=True
    )
    return (image - low) / jnp.maximum(high - low, eps)

  return apply


def _normalize_spec(config: Any) -> dict[str, Any]:
  specs = [s for s in config.data.train_transforms if s["op"] == "normalize"]
  if len(specs) > 1:
    raise ValueError(
      "config.data.train_transforms has several normalize entries; an "
      "export includes one."
    )
  return dict(specs[0]) if specs else dict(op="normalize", mode="none")


def inference_fn(trained: Any) -> Callable[[Any], Any]:
  """`f32[B, *S, C]` raw image -> `f32[B, *S, K]` logits, weights bound."""
  import jax.numpy as jnp  # noqa: PLC0415

  normalize = normalize_fn(_normalize_spec(trained.config))
  model, variables = trained.model, trained.variables

  def forward(image):
    x = normalize(image.astype(jnp.float32))
    return model.apply(variables, x, train=False).astype(jnp.float32)

  return forward


def _spacing(config: Any) -> list[float] | None:
  """The voxel spacing the model was trained at: the plan's target, else
  the first training case's."""
  plan_path = config.get("plan", "")
  if plan_path and pathlib.Path(plan_path).is_file():
    plan = json.loads(pathlib.Path(plan_path).read_text())
    return list(plan["decisions"]["target_spacing"]["value"])
  try:
    from medseg_jax.data import registry  # noqa: PLC0415

    source = registry.data_source(
      config.dataset,
      config.train_split,
      os.path.expanduser(config.data_dir),
      config.get("manual_dir"),
    )
    spacing = source[0].get("spacing")
    return None if spacing is None else [float(s) for s in spacing]
  except Exception:  # noqa: BLE001 - the data may be gone; spacing unknown.
    return None


def metadata(
  trained: Any, fmt: str, input_shape: list[Any], workdir: str
) -> dict[str, Any]:
  """What a user of the exported model must know, as JSON."""
  from medseg_jax import models  # noqa: PLC0415

  config, spec = trained.config, trained.spec
  dims = spec.spatial_dims
  channel_names = None
  if config.get("manual_dir") and config.dataset == "from_folder":
    path = pathlib.Path(config.manual_dir) / "dataset.json"
    if path.is_file():
      channel_names = json.loads(path.read_text()).get("channel_names")
  out = dict(
    format=fmt,
    run=str(pathlib.Path(workdir).resolve()),
    step=int(trained.step),
    dataset=config.dataset,
    class_names=list(spec.class_names),
    num_classes=spec.num_classes,
    num_channels=spec.num_channels,
    channel_names=channel_names
    or [f"channel{i}" for i in range(spec.num_channels)],
    spatial_dims=dims,
    spacing_mm=_spacing(config),
    normalization=_normalize_spec(config),
    patch_size=[int(p) for p in config.data.patch_size],
    pad_multiple=int(models.pad_multiple(config)),
    input=dict(
      name=INPUT_NAME,
      shape=input_shape,
      dtype="float32",
      layout="NDHWC" if dims == 3 else "NHWC",
      meaning="the image as the dataset stores it, before normalisation",
    ),
    output=dict(
      name="logits",
      layout="NDHWK" if dims == 3 else "NHWK",
      meaning="per-class logits; argmax over the last axis is the label",
    ),
    model=dict(
      name=config.model.name,
      **{k: v for k, v in config.model.to_dict().items() if k != "name"},
    ),
  )
  return json.loads(json.dumps(out))  # Tuples as lists, as on disk.


def _input_shape(trained: Any, symbolic: bool, batch: int) -> list[Any]:
  """The exported input shape, with symbolic sizes as strings."""
  from medseg_jax import models  # noqa: PLC0415

  patch = [int(p) for p in trained.config.data.patch_size]
  channels = trained.spec.num_channels
  if not symbolic:
    return [batch, *patch, channels]
  multiple = models.pad_multiple(trained.config)
  names = ("d", "h", "w")[-len(patch) :]
  return ["b", *[f"{multiple}*{n}" for n in names], channels]


def _shape_struct(shape: list[Any]) -> Any:
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  if all(isinstance(s, int) for s in shape):
    return jax.ShapeDtypeStruct(tuple(shape), jnp.float32)
  dims = jax.export.symbolic_shape(", ".join(str(s) for s in shape))
  return jax.ShapeDtypeStruct(dims, jnp.float32)


def export_stablehlo(fn: Callable, shape: list[Any], output: pathlib.Path):
  import jax  # noqa: PLC0415

  exported = jax.export.export(jax.jit(fn))(_shape_struct(shape))
  (output / STABLEHLO_FILE).write_bytes(exported.serialize())
  (output / MLIR_FILE).write_text(exported.mlir_module())
  return output / STABLEHLO_FILE


def export_saved_model(fn: Callable, shape: list[Any], output: pathlib.Path):
  import tensorflow as tf  # noqa: PLC0415
  from jax.experimental import jax2tf  # noqa: PLC0415

  symbolic = not all(isinstance(s, int) for s in shape)
  converted = jax2tf.convert(
    fn,
    with_gradient=False,
    polymorphic_shapes=["(" + ", ".join(str(s) for s in shape) + ")"]
    if symbolic
    else None,
  )
  signature = tf.TensorSpec(
    [s if isinstance(s, int) else None for s in shape],
    tf.float32,
    name=INPUT_NAME,
  )
  module = tf.Module()
  module.serve = tf.function(
    converted, input_signature=[signature], autograph=False
  )
  with _stablehlo_version_of_tensorflow():
    tf.saved_model.save(
      module, str(output), signatures={"serving_default": module.serve}
    )
  return output


@contextlib.contextmanager
def _stablehlo_version_of_tensorflow():
  """Serialises StableHLO for the TensorFlow installed beside this jax.

  jax writes its programs for StableHLO readers at most a few weeks older
  than itself; TensorFlow's `XlaCallModule` may be older than that and then
  refuses the SavedModel ("failed to deserialize portable artifact"). The
  portable format can target any version since jax's minimum, so while the
  SavedModel is traced jax is told to target TensorFlow's own version.
  """
  from jax._src.lib.mlir.dialects import hlo  # noqa: PLC0415

  try:
    from tensorflow.compiler.mlir.stablehlo import stablehlo  # noqa: PLC0415

    theirs = stablehlo.get_current_version()
  except ImportError:  # An older TensorFlow without the bindings.
    yield
    return
  ours = hlo.get_version_from_compatibility_requirement
  target = hlo.get_smaller_version(theirs, hlo.get_current_version())

  def oldest(requirement):
    return hlo.get_smaller_version(target, ours(requirement))

  hlo.get_version_from_compatibility_requirement = oldest
  try:
    yield
  finally:
    hlo.get_version_from_compatibility_requirement = ours


def export_onnx(fn: Callable, shape: list[Any], output: pathlib.Path):
  import logging  # noqa: PLC0415

  # jax2onnx imports every plugin it ships and warns for those whose
  # library (dm_pix, equinox...) does not fit this jax: noise here.
  logging.getLogger("jax2onnx.plugins.plugin_system").setLevel(logging.ERROR)
  try:
    import jax2onnx  # noqa: PLC0415
  except ImportError as e:
    raise ImportError(
      "--format=onnx needs jax2onnx and onnx (pip install jax2onnx onnx; "
      "onnxruntime runs the result)."
    ) from e
  if not all(isinstance(s, int) for s in shape):
    raise ValueError(
      "ONNX exports have fixed sizes (--batch and the patch); drop --symbolic."
    )
  import io  # noqa: PLC0415

  # jax2onnx 0.13 prints debugging lines while it converts.
  with contextlib.redirect_stdout(io.StringIO()):
    model = jax2onnx.to_onnx(
      fn,
      [tuple(shape)],
      model_name="medseg",
      input_names=[INPUT_NAME],
      output_names=["logits"],
    )
  import onnx  # noqa: PLC0415

  onnx.save_model(model, str(output / ONNX_FILE))
  return output / ONNX_FILE


EXPORTERS = {
  "stablehlo": export_stablehlo,
  "saved_model": export_saved_model,
  "onnx": export_onnx,
}


def export(
  workdir: str,
  fmt: str,
  output: str,
  *,
  which: str = "best",
  symbolic: bool = False,
  batch: int = 1,
) -> dict[str, Any]:
  """Exports a run's checkpoint; returns the metadata written.

  Raises:
    ValueError: for an unknown format (the message lists them).
  """
  if fmt not in EXPORTERS:
    raise ValueError(f"Unknown --format={fmt!r}; valid: {', '.join(FORMATS)}.")
  from medseg_jax.evaluation import case_predictor  # noqa: PLC0415

  trained = case_predictor.load_trained(workdir, which)
  out = pathlib.Path(output).expanduser()
  out.mkdir(parents=True, exist_ok=True)
  shape = _input_shape(trained, symbolic, batch)
  EXPORTERS[fmt](inference_fn(trained), shape, out)
  meta = metadata(trained, fmt, shape, workdir)
  (out / METADATA).write_text(json.dumps(meta, indent=2) + "\n")
  return meta


def _define_flags() -> None:
  flags.DEFINE_string("workdir", None, "The trained run.")
  flags.DEFINE_enum("format", None, list(FORMATS), "Export format.")
  flags.DEFINE_string("output", None, "Output directory.")
  flags.DEFINE_string("checkpoint", "best", "best, latest, or a step.")
  flags.DEFINE_bool(
    "symbolic",
    False,
    "Symbolic batch and spatial sizes (multiples of the network's size "
    "multiple); stablehlo and saved_model only.",
  )
  flags.DEFINE_integer("batch", 1, "Batch size of a fixed-shape export.")
  flags.mark_flags_as_required(["workdir", "format", "output"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  xla_cpu.configure_flags()
  from medseg_jax import console  # noqa: PLC0415

  f = flags.FLAGS
  console.setup(f.workdir, process_index=0)
  meta = export(
    f.workdir,
    f.format,
    f.output,
    which=f.checkpoint,
    symbolic=f.symbolic,
    batch=f.batch,
  )
  console.write(
    f"Exported {f.workdir} (step {meta['step']}) as {f.format} to "
    f"{f.output}; input {meta['input']['shape']}, see {METADATA}."
  )


if __name__ == "__main__":
  _define_flags()
  sys.exit(app.run(main))
