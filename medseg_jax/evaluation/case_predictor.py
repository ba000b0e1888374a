"""A trained run's model as a per-case predictor, honouring `config.eval`.

Shared by `python -m medseg_jax.evaluate` and `python -m medseg_jax.predict`:

  trained = load_trained(config, workdir, "best")
  predictor = CasePredictor.from_config(config, trained)
  label = predictor.predict_label(image)  # f32[*S, C] -> i32[*S]

Whole-image mode pads the image to the model's size multiple and crops the
result back; sliding-window mode (`config.eval.sliding_window`) tiles it
with `config.eval.window` (default: the training patch size), overlap and
Gaussian weighting (`medseg_jax.inference`). Flip test-time augmentation and
largest-component post-processing are options of both.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
import numpy as np

from medseg_jax import checkpointing
from medseg_jax import inference
from medseg_jax import train
from medseg_jax.data import registry
from medseg_jax.data.spec import DatasetSpec


@dataclasses.dataclass
class Trained:
  """A model with the weights of one checkpoint of a run."""

  model: Any
  variables: dict[str, Any]
  spec: DatasetSpec
  step: int


def load_trained(
  config: ml_collections.ConfigDict, workdir: str, which: str = "best"
) -> Trained:
  """Builds the config's model and loads a checkpoint's weights into it.

  Args:
    config: the run's config (model and dataset).
    workdir: the run's work dir (holding `checkpoints/`).
    which: `"best"`, `"latest"` or a step number.

  Raises:
    FileNotFoundError: if the run has no checkpoint.
    ValueError: if `which` names no saved step, or the checkpoint's
      parameters do not fit the config's model.
  """
  spec = registry.get_dataset_spec(config.dataset, config.get("manual_dir"))
  model = train.build_model(config, spec)
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
  want = jax.tree.map(np.shape, expected["params"])
  have = jax.tree.map(np.shape, params)
  if want != have:
    raise ValueError(
      f"The checkpoint at step {step} of {workdir} does not fit the model of "
      "this config (different architecture, widths or classes); evaluate "
      "with the config the run was trained with."
    )
  return Trained(model=model, variables=variables, spec=spec, step=step)


@dataclasses.dataclass
class CasePredictor:
  """Predicts whole cases of any size with a trained model.

  Attributes:
    predict_fn: jitted `f32[N, *W, C] -> f32[N, *W, K]` probabilities.
    pad_multiple: whole-image mode pads each axis to a multiple of this.
    window: sliding-window size, or None for whole-image prediction.
    overlap: sliding-window overlap fraction.
    sw_batch_size: windows per network call.
    largest_component: keep only each class's largest component.
  """

  predict_fn: Any
  pad_multiple: int
  window: tuple[int, ...] | None = None
  overlap: float = 0.5
  sw_batch_size: int = 4
  largest_component: bool = False

  @classmethod
  def from_config(
    cls, config: ml_collections.ConfigDict, trained: Trained
  ) -> CasePredictor:
    options = config.get("eval", ml_collections.ConfigDict())
    predict_fn = inference.make_window_predictor(
      trained.model, trained.variables
    )
    axes = tuple(options.get("tta_flip_axes", ()) or ())
    if axes:
      predict_fn = inference.flip_tta(predict_fn, axes)
    window = None
    if options.get("sliding_window", False):
      window = tuple(options.get("window", ()) or config.data.patch_size)
    return cls(
      predict_fn=predict_fn,
      pad_multiple=train.pad_multiple(config),
      window=window,
      overlap=float(options.get("overlap", 0.5)),
      sw_batch_size=int(options.get("sw_batch_size", 4)),
      largest_component=bool(options.get("largest_component", False)),
    )

  def predict_probs(self, image: np.ndarray) -> np.ndarray:
    """`f32[*S, C]` (normalised as in training) -> `f32[*S, K]`."""
    image = np.asarray(image, np.float32)
    if self.window is not None:
      return np.asarray(
        inference.sliding_window_predict(
          self.predict_fn,
          image,
          window=self.window,
          overlap=self.overlap,
          sw_batch_size=self.sw_batch_size,
        )
      )
    shape = image.shape[:-1]
    padded = [-(-s // self.pad_multiple) * self.pad_multiple for s in shape]
    before = [(p - s) // 2 for p, s in zip(padded, shape, strict=True)]
    pads = [
      (b, p - s - b) for b, p, s in zip(before, padded, shape, strict=True)
    ]
    out = np.asarray(self.predict_fn(np.pad(image, [*pads, (0, 0)])[None]))[0]
    window = tuple(slice(b, b + s) for b, s in zip(before, shape, strict=True))
    return out[window]

  def predict_label(self, image: np.ndarray) -> np.ndarray:
    """`f32[*S, C]` -> `i32[*S]` class ids (after post-processing)."""
    label = np.argmax(self.predict_probs(image), axis=-1).astype(np.int32)
    if self.largest_component:
      label = inference.keep_largest_component(label)
    return label
