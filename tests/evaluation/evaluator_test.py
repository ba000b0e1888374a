"""Tests for the split evaluator, its reports and the overlays."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from medseg_jax.evaluation import evaluator
from medseg_jax.evaluation import overlays

CLASSES = ("background", "a", "b")


def _examples(predictions, labels):
  for index, (pred, label) in enumerate(zip(predictions, labels, strict=True)):
    yield {
      "image": pred.astype(np.float32)[..., None],
      "label": label.astype(np.int32),
      "mask": np.ones(label.shape, np.float32),
      "raw_image": pred.astype(np.float32)[..., None],
      "shape": label.shape,
      "spacing": np.ones(2),
      "case_id": f"case{index}",
    }


def _run(predictions, labels):
  """Scores `predictions` (passed through the image) against `labels`."""
  cases = evaluator.score_examples(
    _examples(predictions, labels),
    lambda example: example["image"][..., 0].astype(np.int32),
    num_classes=len(CLASSES),
    surface_metrics=False,
    keep_arrays=True,
  )
  return evaluator.EvalResult(class_names=CLASSES, cases=cases)


def test_perfect_and_partial_cases():
  label = np.zeros((8, 8), np.int32)
  label[2:6, 2:6] = 1
  label[0, :4] = 2
  shifted = np.zeros_like(label)
  shifted[2:6, 3:7] = 1  # 12 of 16 organ pixels overlap.
  result = _run([label, shifted, label], [label, label, label])
  assert [c.case_id for c in result.cases] == ["case0", "case1", "case2"]
  dice = result.score_matrix("dice")
  np.testing.assert_allclose(dice[0], 1.0)
  assert dice[1, 1] == pytest.approx(2 * 12 / 32)
  assert dice[1, 2] == 0.0  # Class b missed entirely.
  np.testing.assert_array_equal(result.cases[1].prediction, shifted)
  summary = result.summary()
  assert summary["num_cases"] == 3
  assert summary["per_class"]["a"]["dice"]["mean"] == pytest.approx(
    (2 + 0.75) / 3
  )
  # Pooled: class a has 16 + 12 + 16 true positives, 4 false positives and
  # 4 false negatives over the three cases; class b 4 + 0 + 4 and 4 misses.
  assert summary["pooled_dice"]["a"] == pytest.approx(88 / (88 + 8))
  assert summary["pooled_dice"]["b"] == pytest.approx(16 / (16 + 4))
  assert summary["pooled_foreground_dice"] == pytest.approx(
    (88 / 96 + 16 / 20) / 2
  )


def test_pooled_dice_does_not_flip_on_a_case_without_the_class():
  label = np.zeros((8, 8), np.int32)
  label[2:6, 2:6] = 1
  empty = np.zeros_like(label)
  stray = empty.copy()
  stray[0, 0] = 1  # one false-positive voxel in a case without class a
  clean = _run([label, empty], [label, empty]).summary()
  noisy = _run([label, stray], [label, empty]).summary()
  assert clean["per_class"]["a"]["dice"]["mean"] == pytest.approx(1.0)
  assert noisy["per_class"]["a"]["dice"]["mean"] == pytest.approx(0.5)
  assert noisy["pooled_dice"]["a"] == pytest.approx(32 / 33)


def test_reports_are_written_and_consistent(tmp_path):
  label = np.zeros((4, 4), np.int32)
  label[:2] = 1
  result = _run([label, np.zeros_like(label)], [label, label])
  summary = evaluator.write_reports(result, tmp_path, "test")
  rows = list(csv.DictReader(open(tmp_path / "test_per_case.csv")))
  assert len(rows) == 2 * len(CLASSES)
  assert {r["class"] for r in rows} == set(CLASSES)
  loaded = json.loads((tmp_path / "test_summary.json").read_text())
  assert loaded["per_case"]["case1"]["a"]["dice"] == 0.0
  assert loaded["mean_foreground_dice"] == summary["mean_foreground_dice"]
  assert not list(tmp_path.glob("*.tmp"))
  table = evaluator.format_table(result)
  assert "sensitivity" in table and "mean foreground Dice" in table


# The documented palette (overlays.py): class 1 red (230, 25, 75), class 2
# green (60, 180, 75), blended over the gray image with alpha 0.45.
RED = np.array([230, 25, 75])
GREEN = np.array([60, 180, 75])


def test_overlay_png_shows_image_truth_and_prediction_in_their_colours(
  tmp_path,
):
  # Left half of the image at 0, right half at 1: gray 0 and 255 after the
  # 1st-99th percentile window.
  image = np.zeros((16, 16, 1), np.float32)
  image[:, 8:] = 1.0
  label = np.zeros((16, 16), np.int32)
  label[2:6, 2:14] = 1  # Straddles both halves.
  label[10:14, 2:6] = 2
  prediction = np.zeros_like(label)
  prediction[10:14, 10:14] = 1  # Elsewhere, and another class.
  paths = overlays.write_overlays(
    [("c0", image, label, prediction, 0.0)], tmp_path
  )
  picture = np.asarray(Image.open(paths[0])).astype(int)
  scale, header = 16, 14  # 256 // 16; a 14-pixel title strip on top.
  assert picture.shape == (header + 16 * scale, (16 + 4) * 3 * scale, 3)

  def pixel(panel, row, col):
    """Centre of input pixel (row, col) in panel 0, 1 or 2."""
    y = header + row * scale + scale // 2
    x = (panel * (16 + 4) + col) * scale + scale // 2
    return picture[y, x]

  def blended(gray, colour):
    return 0.55 * gray + 0.45 * colour

  def check(got, expected):  # Within the uint8 truncation.
    np.testing.assert_allclose(got, expected, atol=1)

  for row, col in np.ndindex(16, 16):
    gray = np.full(3, 255.0 if col >= 8 else 0.0)
    check(pixel(0, row, col), gray)  # The image, uncoloured.
    colours = (None, RED, GREEN)
    truth, pred = colours[label[row, col]], colours[prediction[row, col]]
    check(pixel(1, row, col), gray if truth is None else blended(gray, truth))
    check(pixel(2, row, col), gray if pred is None else blended(gray, pred))
  # The white 4-pixel gap between panels.
  check(pixel(0, 0, 17), [255, 255, 255])


def test_volume_overlay_shows_the_slice_with_most_foreground():
  label = np.zeros((5, 8, 8), np.int32)
  label[3, 1:7, 1:7] = 2
  label[1, 0, 0] = 1
  assert overlays.pick_slice(label) == 3
  picture = overlays.render(np.zeros((5, 8, 8, 1)), label, label)
  assert picture.height == 8 + 14


def test_score_examples_predicts_and_scores_each_case():
  label = np.zeros((8, 8), np.int32)
  label[2:6, 2:6] = 1
  examples = [
    {
      "case_id": f"case{i}",
      "image": np.full((8, 8, 1), i, np.float32),
      "raw_image": np.full((8, 8, 1), 10 + i, np.float32),
      "label": label,
      "spacing": (1.0, 1.0),
    }
    for i in range(2)
  ]
  # case0 is predicted perfectly, case1 as all background.
  cases = evaluator.score_examples(
    examples,
    lambda example: label * (example["image"][0, 0, 0] == 0),
    num_classes=2,
    surface_metrics=False,
    keep_arrays=True,
  )
  assert [case.case_id for case in cases] == ["case0", "case1"]
  assert cases[0].scores["dice"][1] == pytest.approx(1.0)
  assert cases[1].scores["dice"][1] == pytest.approx(0.0)
  assert "hd95" not in cases[0].scores
  assert cases[1].image[0, 0, 0] == 11
  np.testing.assert_array_equal(cases[1].prediction, np.zeros((8, 8)))
  plain = evaluator.score_examples(
    examples[:1], lambda example: label, num_classes=2
  )
  assert "hd95" in plain[0].scores and plain[0].prediction is None
