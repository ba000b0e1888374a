"""Tests for the per-example grain transforms."""

import numpy as np
import pytest
from scipy import stats

from medseg_jax import augment
from medseg_jax.data import transforms


def _example(shape=(10, 12), channels=2, seed=0):
  rng = np.random.default_rng(seed)
  image = rng.normal(5.0, 3.0, size=(*shape, channels)).astype(np.float32)
  label = rng.integers(0, 4, size=shape).astype(np.uint8)
  return {"image": image, "label": label, "case_id": b"c0"}


def test_zscore_gives_zero_mean_unit_std_per_channel():
  out = transforms.Normalize(mode="zscore").map(_example())
  np.testing.assert_allclose(out["image"].mean(axis=(0, 1)), 0, atol=1e-5)
  np.testing.assert_allclose(out["image"].std(axis=(0, 1)), 1, atol=1e-4)


def test_minmax_range_and_constant_image_is_finite():
  out = transforms.Normalize(mode="minmax").map(_example())
  assert out["image"].min() == pytest.approx(0) and out[
    "image"
  ].max() == pytest.approx(1)
  flat = {
    "image": np.full((4, 4, 1), 3.0, np.float32),
    "label": np.zeros((4, 4), np.uint8),
  }
  for mode in ("minmax", "zscore"):
    assert np.isfinite(transforms.Normalize(mode=mode).map(flat)["image"]).all()


def test_normalize_nonzero_uses_foreground_only():
  image = np.zeros((8, 8, 1), np.float32)
  image[2:6, 2:6] = np.arange(16, dtype=np.float32).reshape(4, 4, 1) + 1
  out = transforms.Normalize(mode="zscore", nonzero=True).map(
    {"image": image, "label": np.zeros((8, 8), np.uint8)}
  )
  inside = out["image"][2:6, 2:6]
  assert inside.mean() == pytest.approx(0, abs=1e-5)


def test_crop_moves_image_label_and_mask_together():
  example = _example((20, 30), channels=1)
  # Encode the position in the image so the crop can be checked.
  ys, xs = np.mgrid[:20, :30]
  example["image"] = (ys * 100 + xs).astype(np.float32)[..., None]
  example["label"] = ((ys * 100 + xs) % 4).astype(np.uint8)
  crop = transforms.RandomCropOrPad(size=(8, 8))
  out = crop.random_map(example, np.random.default_rng(3))
  assert out["image"].shape == (8, 8, 1) and out["label"].shape == (8, 8)
  np.testing.assert_array_equal(
    out["image"][..., 0].astype(int) % 4, out["label"]
  )
  assert out["mask"].shape == (8, 8) and out["mask"].all()


def test_pad_marks_padding_in_mask_3d():
  example = _example((3, 5, 6), channels=1)
  out = transforms.RandomCropOrPad(size=(4, 8, 6)).random_map(
    example, np.random.default_rng(0)
  )
  assert out["image"].shape == (4, 8, 6, 1)
  assert out["mask"].sum() == 3 * 5 * 6
  assert (out["label"][out["mask"] == 0] == 0).all()


def test_crop_size_with_wrong_rank_is_a_clear_error():
  with pytest.raises(ValueError, match="axes"):
    transforms.RandomCropOrPad(size=(4, 4, 4)).random_map(
      _example(), np.random.default_rng(0)
    )


def test_center_pad_to_multiple():
  out = transforms.CenterPad(multiple=8).map(_example((10, 17)))
  assert out["label"].shape == (16, 24)
  assert out["mask"].sum() == 10 * 17


def test_build_rejects_unknown_op_and_lists_both_vocabularies():
  with pytest.raises(ValueError) as error:
    transforms.build([dict(op="rotate")])
  message = str(error.value)
  assert "'rotate'" in message
  assert "'random_crop_or_pad'" in message  # Valid here.
  assert "config.augment" in message and "'elastic'" in message


def test_removed_random_flip_names_its_replacement():
  with pytest.raises(ValueError) as error:
    transforms.build([dict(op="normalize"), dict(op="random_flip", p=0.5)])
  message = str(error.value)
  assert "'random_flip' was removed" in message
  assert "op='flip'" in message and "axis_p" in message
  assert "config.augment" in message and "'normalize'" in message


@pytest.mark.parametrize("op", ["flip", "gamma", "elastic"])
def test_augmentation_in_train_transforms_points_to_config_augment(op):
  with pytest.raises(ValueError, match=rf"'{op}' is an augmentation.*augment"):
    transforms.build([dict(op=op)])


def test_only_pipeline_ops_remain_and_none_is_an_augmentation():
  # One vocabulary: no name means one thing here and another in augment.
  assert set(transforms.TRANSFORMS) == {
    "normalize",
    "random_crop_or_pad",
    "center_pad",
  }
  assert not set(transforms.TRANSFORMS) & set(augment.AUGMENTATIONS)


def test_to_model_inputs_dtypes():
  out = transforms.ToModelInputs().map(_example())
  assert set(out) == {"image", "label", "mask"}
  assert out["image"].dtype == np.float32 and out["label"].dtype == np.int32


def test_foreground_share_one_always_contains_foreground():
  label = np.zeros((40, 40, 40), np.uint8)
  label[30:32, 5:7, 33:35] = 2  # A tiny lesion far from the centre.
  example = {"image": np.zeros((40, 40, 40, 1), np.float32), "label": label}
  crop = transforms.RandomCropOrPad(size=(8, 8, 8), foreground_share=1.0)
  rng = np.random.default_rng(0)
  for _ in range(20):
    assert crop.random_map(example, rng)["label"].max() == 2


def test_foreground_share_zero_is_uniform_and_often_misses():
  label = np.zeros((40, 40, 40), np.uint8)
  label[30:32, 5:7, 33:35] = 1
  example = {"image": np.zeros((40, 40, 40, 1), np.float32), "label": label}
  crop = transforms.RandomCropOrPad(size=(8, 8, 8), foreground_share=0.0)
  rng = np.random.default_rng(0)
  hits = sum(crop.random_map(example, rng)["label"].max() for _ in range(50))
  assert hits < 10


def test_foreground_share_without_foreground_falls_back_to_uniform():
  # The image encodes each voxel's position, so a patch's first voxel is its
  # start. Without foreground every one of the 7 x 9 starts must come up, as
  # often as the others (chi-square goodness of fit against the uniform
  # distribution; the seed is fixed, so the test is deterministic).
  ys, xs = np.mgrid[:10, :12]
  example = {
    "image": (ys * 100 + xs).astype(np.float32)[..., None],
    "label": np.zeros((10, 12), np.uint8),
  }
  crop = transforms.RandomCropOrPad(size=(4, 4), foreground_share=1.0)
  rng = np.random.default_rng(0)
  counts = np.zeros((7, 9), np.int64)
  for _ in range(63 * 40):
    out = crop.random_map(example, rng)
    assert out["label"].shape == (4, 4)
    start = int(out["image"][0, 0, 0])
    y, x = divmod(start, 100)
    np.testing.assert_array_equal(
      out["image"][..., 0], (ys * 100 + xs)[y : y + 4, x : x + 4]
    )
    counts[y, x] += 1
  assert counts.min() > 0
  assert stats.chisquare(counts.ravel()).pvalue > 1e-3


def test_foreground_share_out_of_range_is_an_error():
  with pytest.raises(ValueError, match="foreground_share"):
    transforms.RandomCropOrPad(size=(4, 4), foreground_share=1.5)


def test_fixed_normalize_clips_then_applies_dataset_statistics():
  # Channel 0: clipped to [0, 1], then (x - 0.5) / 0.25; channel 1: no
  # bounds, (x - 10) / 2.
  normalize = transforms.build(
    [
      dict(
        op="normalize",
        mode="fixed",
        low=[0.0, None],
        high=[1.0, None],
        mean=[0.5, 10.0],
        std=[0.25, 2.0],
      )
    ]
  )[0]
  image = np.array([[[-5.0, 6.0], [0.5, 10.0], [5.0, 30.0]]], np.float32)
  out = normalize.map({"image": image})["image"]
  np.testing.assert_allclose(out[0, :, 0], [-2.0, 0.0, 2.0])
  np.testing.assert_allclose(out[0, :, 1], [-2.0, 0.0, 10.0])


def test_fixed_normalize_needs_one_statistic_per_channel():
  with pytest.raises(ValueError, match="one entry per channel"):
    transforms.Normalize(mode="fixed", low=(0.0,), high=(1.0,), mean=(0.0,))
  normalize = transforms.Normalize(
    mode="fixed", low=(None,), high=(None,), mean=(0.0,), std=(1.0,)
  )
  with pytest.raises(ValueError, match="1 channel"):
    normalize.map({"image": np.zeros((2, 2, 3), np.float32)})
