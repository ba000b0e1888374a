"""The one predictor: a trained model applied to whole cases of any size.

Every reader of a model goes through `CasePredictor`: the trainer's
validation and final test report, `python -m medseg_jax.evaluate`,
`python -m medseg_jax.predict` and the benchmark suites.

  trained = load_trained("workdirs/demo", "best")  # config from the run
  predictor = CasePredictor.from_config(trained.config, trained.model,
                                        trained.variables)
  label = predictor.predict_label(image)  # f32[*S, C] -> i32[*S]

Inference sees what training saw. Training crops are `config.data.
patch_size`, and a case smaller than the patch is zero-padded up to it
(after normalisation, `data.transforms.RandomCropOrPad`). So every input is
zero-padded here too, symmetrically, up to at least the patch size in each
axis and to a multiple of the network's size multiple (`models.
pad_multiple`); the output is cropped back. Without this, a network with
instance or group normalisation sees, on a small case, statistics unlike
any training input, and its prediction degrades (issue 23: Dice 0.16
instead of 0.81 on hippocampus crops with a 64^3 patch).

Whole-image mode predicts the padded case in one call; sliding-window mode
(`config.eval.sliding_window`) tiles it with `config.eval.window` (default:
the patch), overlap and Gaussian weighting (`evaluation.inference`). On a
case no larger than the patch both give the same prediction. Flip test-time
augmentation (`config.eval.tta_flip_axes`) and largest-component
post-processing (`config.eval.largest_component`) are options of both.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from medseg_jax import checkpointing
from medseg_jax import models
from medseg_jax import run_config
from medseg_jax.data import registry
from medseg_jax.data.spec import DatasetSpec
from medseg_jax.evaluation import inference


def padded_shape(
  shape: Sequence[int], min_shape: Sequence[int], multiple: int
) -> tuple[int, ...]:
  """The whole-image input shape for a case of spatial `shape`.

  Each axis is at least `min_shape` (the training patch) and a multiple of
  `multiple`: `ceil(max(s, m) / multiple) * multiple`.
  """
  if len(shape) != len(min_shape):
    raise ValueError(
      f"A {len(shape)}-D case of shape {tuple(shape)} for a model trained "
      f"on {len(min_shape)}-D patches of shape {tuple(min_shape)}."
    )
  return tuple(
    -(-max(int(s), int(m)) // multiple) * multiple
    for s, m in zip(shape, min_shape, strict=True)
  )


def center_pads(
  shape: Sequence[int], target: Sequence[int]
) -> list[tuple[int, int]]:
  """`(before, after)` per axis to centre `shape` in `target`; the rule of
  `data.transforms.CenterPad` and of `inference.sliding_window_predict`."""
  return [
    ((t - s) // 2, (t - s) - (t - s) // 2)
    for s, t in zip(shape, target, strict=True)
  ]


@dataclasses.dataclass(frozen=True)
class CasePredictor:
  """Predicts whole cases with a model; see the module docstring.

  Attributes:
    apply: jitted `(variables, f32[N, *W, C]) -> f32[N, *W, K]`
      probabilities (flip TTA included), compiled once per input shape.
    variables: the model's variables (`params`, `batch_stats`).
    min_shape: the training patch: inputs are padded to at least this.
    pad_multiple: inputs are padded to a multiple of this.
    window: sliding-window size, or None for whole-image prediction.
    overlap: sliding-window overlap fraction.
    sw_batch_size: windows per network call.
    largest_component: keep only each class's largest component.
    mesh: a mesh to trace and run under (models with a `partition` name its
      axes), or None.
  """

  apply: Callable[[Any, jax.Array], jax.Array]
  variables: Any
  min_shape: tuple[int, ...]
  pad_multiple: int = 1
  window: tuple[int, ...] | None = None
  overlap: float = 0.5
  sw_batch_size: int = 4
  largest_component: bool = False
  mesh: Any = None

  @classmethod
  def from_config(
    cls,
    config: ml_collections.ConfigDict,
    model: Any,
    variables: Any = None,
    *,
    mesh: Any = None,
  ) -> CasePredictor:
    """The predictor `config.eval` describes, for `model` (see
    `models.from_config`); `variables` may be set later with
    `with_variables` (the trainer reuses one compiled predictor)."""
    options = config.get("eval", None) or ml_collections.ConfigDict()
    patch = tuple(int(s) for s in config.data.patch_size)
    window = None
    if options.get("sliding_window", False):
      window = tuple(int(s) for s in (options.get("window", ()) or patch))
    apply = inference.make_apply(
      model, flip_axes=tuple(options.get("tta_flip_axes", ()) or ())
    )
    return cls(
      apply=apply,
      variables=variables,
      min_shape=patch,
      pad_multiple=models.pad_multiple(config),
      window=window,
      overlap=float(options.get("overlap", 0.5)),
      sw_batch_size=int(options.get("sw_batch_size", 4)),
      largest_component=bool(options.get("largest_component", False)),
      mesh=mesh,
    )

  def with_variables(self, variables: Any) -> CasePredictor:
    return dataclasses.replace(self, variables=variables)

  def _context(self):
    if self.mesh is None:
      return contextlib.nullcontext()
    return jax.set_mesh(self.mesh)

  def predict_probs(self, image: np.ndarray) -> np.ndarray:
    """`f32[*S, C]` (normalised as in training) -> `f32[*S, K]`."""
    if self.variables is None:
      raise ValueError("CasePredictor has no variables; see with_variables.")
    image = np.asarray(image, np.float32)
    shape = image.shape[:-1]
    target = padded_shape(shape, self.min_shape, self.pad_multiple)
    pads = center_pads(shape, target)
    padded = np.pad(image, [*pads, (0, 0)])
    with self._context():
      if self.window is None:
        out = np.asarray(self.apply(self.variables, padded[None]))[0]
      else:
        out = np.asarray(
          inference.sliding_window_predict(
            lambda x: self.apply(self.variables, x),
            padded,
            window=self.window,
            overlap=self.overlap,
            sw_batch_size=self.sw_batch_size,
          )
        )
    return out[
      tuple(slice(b, b + s) for (b, _), s in zip(pads, shape, strict=True))
    ]

  def predict_label(self, image: np.ndarray) -> np.ndarray:
    """`f32[*S, C]` -> `i32[*S]` class ids (after post-processing)."""
    label = np.argmax(self.predict_probs(image), axis=-1).astype(np.int32)
    if self.largest_component:
      label = inference.keep_largest_component(label)
    return label


@dataclasses.dataclass
class Trained:
  """A run's model with the weights of one of its checkpoints."""

  config: ml_collections.ConfigDict
  model: Any
  variables: dict[str, Any]
  spec: DatasetSpec
  step: int


def load_trained(
  workdir: str,
  which: str = "best",
  config: ml_collections.ConfigDict | None = None,
) -> Trained:
  """Builds a run's model and loads one checkpoint's weights into it.

  Args:
    workdir: the run's work dir (holding `config.json` and `checkpoints/`).
    which: `"best"`, `"latest"` or a step number.
    config: overrides the run's saved config (e.g. other `eval` options or
      a moved `data_dir`); its model and dataset must be the run's
      (`run_config.check_compatible`). Needed only for runs that predate
      `config.json`.

  Raises:
    FileNotFoundError: if the run has no checkpoint, or neither a saved
      config nor `config`.
    ValueError: if `which` names no saved step, or the model does not fit
      the checkpoint (the message names the differing fields or weights).
  """
  config = run_config.resolve(workdir, config)
  spec = registry.get_dataset_spec(config.dataset, config.get("manual_dir"))
  model = models.from_config(config, spec)
  if not (checkpointing.absolute(workdir) / "checkpoints").exists():
    raise FileNotFoundError(f"No checkpoints in {workdir}.")
  params, batch_stats, step = checkpointing.load_weights(workdir, which)
  variables = {"params": params}
  if batch_stats:
    variables["batch_stats"] = batch_stats
  expected = jax.eval_shape(
    lambda: model.init(
      jax.random.key(0),
      np.zeros((1, *config.data.patch_size, spec.num_channels), np.float32),
      train=False,
    )
  )
  want = _shapes(expected["params"])
  have = _shapes(params)
  if want != have:
    diff = sorted(set(want.items()) ^ set(have.items()))[:6]
    raise ValueError(
      f"The checkpoint at step {step} of {workdir} does not fit the model "
      f"of this config (config.model: {config.model.to_dict()}); first "
      f"differing weights (path, shape): {diff}. Evaluate with the config "
      "the run was trained with (its config.json)."
    )
  return Trained(
    config=config, model=model, variables=variables, spec=spec, step=step
  )


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): np.shape(x) for path, x in flat}
