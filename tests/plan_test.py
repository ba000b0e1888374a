"""Fingerprints, plans fitted to a memory budget, and plan checking.

The search for patch and batch size is tested with a cheap model of memory
(`_linear_memory`), whose budget a plan must respect exactly as it must the
compiled figure; one slow test fits a tiny U-Net with the real compiled
memory analysis and measures the config `configs/auto.py` builds from it.
"""

import copy
import json
import pathlib

import numpy as np
import pytest

from configs import auto
from medseg_jax import plan
from medseg_jax.data import medical_io
from medseg_jax.data import phantoms
from medseg_jax.data import registry
from medseg_jax.data import transforms
from medseg_jax.data.from_folder import dummy_data


def _linear_memory(config, spec):
  """Bytes: weights plus activations linear in batch x voxels x widths."""
  voxels = np.prod(config.data.patch_size) * config.batch_size
  width = sum(config.model.features) * spec.num_channels
  return dict(total=int(10_000 + 16 * voxels * width))


def _phantom_fingerprint(shape, spacings, seed=0, kind="folder"):
  """A fingerprint of 3-D phantoms, one case per entry of `spacings`, as
  if read from a folder (planned resampling) or a registered dataset."""
  rng = np.random.default_rng(seed)

  def examples():
    for i, spacing in enumerate(spacings):
      image, label = phantoms.make_phantom(rng, shape, spacing)
      yield (
        f"case{i}",
        "train",
        dict(image=image, label=label, spacing=np.asarray(spacing)),
      )

  out = dict(
    source=dict(
      kind=kind,
      folder="/nowhere",
      name="phantoms" if kind == "folder" else "synthetic_phantoms/3d",
      splits={"train": len(spacings)},
      pool=["train"],
    ),
    spatial_dims=len(shape),
    channel_names=["intensity"],
    class_names=list(phantoms.CLASS_NAMES),
    modalities=["mri"],
    stored_normalization="none",
  )
  out.update(
    plan.fingerprint_examples(
      examples(),
      channel_names=["intensity"],
      class_names=phantoms.CLASS_NAMES,
    )
  )
  return out, rng


# --------------------------------------------------------------- fingerprint


def test_fingerprint_of_the_synthetic_2d_data(synthetic_2d_dir):
  fp = plan.fingerprint_dataset("synthetic_phantoms/2d", str(synthetic_2d_dir))
  assert fp["source"]["pool"] == ["train", "validation"]
  pool = [
    registry.data_source("synthetic_phantoms/2d", s, str(synthetic_2d_dir))
    for s in ("train", "validation")
  ]
  cases = [source[i] for source in pool for i in range(len(source))]
  assert fp["num_cases"] == len(cases)
  assert fp["median_shape"] == [128.0, 128.0]
  assert fp["spacing_anisotropy"] == pytest.approx(1.0)
  # Class frequencies against a brute-force count over every case.
  counts = sum(np.bincount(c["label"].ravel(), minlength=4) for c in cases)
  for entry, count in zip(fp["class_frequencies"], counts, strict=True):
    assert entry["voxel_fraction"] == pytest.approx(count / counts.sum())
  present = [
    np.mean([(c["label"] == k).any() for c in cases]) for k in range(4)
  ]
  assert [e["case_fraction"] for e in fp["class_frequencies"]] == (
    pytest.approx(present)
  )
  # Foreground intensities: every case has fewer foreground voxels than the
  # per-case sample, so the statistics are exact.
  values = np.concatenate([c["image"][c["label"] > 0, 0] for c in cases])
  assert max((c["label"] > 0).sum() for c in cases) <= plan.VOXELS_PER_CASE
  (stats,) = fp["foreground_intensity"]
  assert stats["p50"] == pytest.approx(np.median(values), rel=1e-5)
  assert stats["p0_5"] == pytest.approx(np.percentile(values, 0.5), rel=1e-5)
  assert stats["mean"] == pytest.approx(values.mean(), rel=1e-5)
  assert stats["std"] == pytest.approx(values.std(), rel=1e-4)


def test_fingerprint_and_plan_of_3d_phantoms():
  # Spacing 3.5 mm along depth against 1 mm in-plane: anisotropic (> 3), so
  # the depth target is the 10th percentile of the depth spacings, and 3-D
  # rotations stay in-plane.
  depth = [3.0, 3.5, 3.5, 4.0, 3.5, 5.0]
  fp, _ = _phantom_fingerprint((12, 32, 28), [(d, 1.0, 1.0) for d in depth])
  assert fp["median_shape"] == [12.0, 32.0, 28.0]
  assert fp["spacing_anisotropy"] == pytest.approx(3.5)
  result = plan.make_plan(
    fp,
    memory_budget_bytes=2 * 2**20,
    base_features=8,
    measure_fn=_linear_memory,
  )
  d = {k: v["value"] for k, v in result["decisions"].items()}
  assert d["target_spacing"] == pytest.approx(
    [np.percentile(depth, 10), 1.0, 1.0]
  )
  assert "anisotropic" in result["decisions"]["target_spacing"]["reason"]
  (rotation,) = [a["rotation"] for a in d["augment"] if a["op"] == "affine"]
  assert rotation[0] == [-180.0, 180.0] and rotation[1] == [0.0, 0.0]
  assert d["normalization"] == dict(op="normalize", mode="zscore")
  # Every decision carries a reason.
  for name in plan.DECISIONS:
    assert result["decisions"][name]["reason"], name


@pytest.fixture(scope="module")
def dicom_folder(tmp_path_factory):
  return dummy_data.make_dummy_data(
    tmp_path_factory.mktemp("raw"), fmt="dicom", num_cases=4
  )


def test_ct_folder_is_clipped_and_zscored_with_dataset_statistics(
  dicom_folder,
):
  fp = plan.fingerprint_folder(dicom_folder)
  # Training pool: train + validation (a quarter of 4 cases), no test.
  assert fp["num_cases"] == 4 and fp["modalities"] == ["ct"]
  # The raw files hold HU = 3 * noise - 100 outside the box and 300 more
  # inside: the fingerprint read raw intensities, not normalised ones.
  (stats,) = fp["foreground_intensity"]
  assert 200 <= stats["p0_5"] < stats["p99_5"] < 500
  spec, reason = plan.normalization(fp)
  assert spec["mode"] == "fixed" and "CT" in reason
  assert spec["low"] == [stats["p0_5"]] and spec["high"] == [stats["p99_5"]]
  # Applied to the raw foreground voxels (read here straight from the
  # files), it gives about zero mean and unit std over the dataset.
  normalize = transforms.build([spec])[0]
  values = []
  for case in sorted((dicom_folder / "images").iterdir()):
    image = medical_io.read(case, case_id=case.name).data
    label = medical_io.read(
      dicom_folder / "labels" / f"{case.name}.nii.gz", case_id=case.name
    ).data
    assert image.shape == label.shape
    values.append(image[label > 0])
  values = np.concatenate(values).astype(np.float32)[:, None]
  out = normalize.map(dict(image=values, label=np.zeros(len(values))))
  assert out["image"].mean() == pytest.approx(0.0, abs=0.05)
  assert out["image"].std() == pytest.approx(1.0, abs=0.05)
  assert (
    out["image"].max() <= (stats["p99_5"] - stats["mean"]) / stats["std"] + 1e-5
  )


def test_folder_plan_trains_on_a_linked_folder(tmp_path):
  folder = dummy_data.make_dummy_data(tmp_path, fmt="nifti", num_cases=4)
  fp = plan.fingerprint_folder(folder)
  assert fp["channel_names"] == ["T1", "FLAIR"]
  # Channel 1 is channel 0 times 2, so its statistics are twice as large.
  t1, flair = fp["foreground_intensity"]
  assert flair["mean"] == pytest.approx(2 * t1["mean"], rel=1e-5)
  result = plan.write_plan(
    tmp_path / "plan",
    fp,
    memory_budget_bytes=2**20,
    base_features=4,
    measure_fn=_linear_memory,
  )
  for name in (plan.FINGERPRINT_FILE, plan.PLAN_FILE, plan.CONFIG_FILE):
    assert (tmp_path / "plan" / name).is_file()
  data = pathlib.Path(result["dataset"]["data_folder"])
  planned = json.loads((data / "dataset.json").read_text())
  assert planned["normalization"] == "none"
  assert planned["spacing"] == result["decisions"]["target_spacing"]["value"]
  assert sorted(p.name for p in (data / "images").iterdir()) == sorted(
    p.name for p in (folder / "images").iterdir()
  )
  config = plan.config_from_plan(plan.load_plan(tmp_path / "plan"), fold=1)
  assert config.manual_dir == str(data)
  assert config.data.patch_size == tuple(
    result["decisions"]["patch_size"]["value"]
  )


# ------------------------------------------------------------- memory budget


@pytest.mark.parametrize("budget_mib", [0.5, 2.0, 8.0])
def test_plan_respects_its_memory_budget(budget_mib):
  fp, _ = _phantom_fingerprint((24, 40, 40), [(1.0, 1.0, 1.0)] * 8)
  calls = []

  def measure(config, spec):
    calls.append((tuple(config.data.patch_size), config.batch_size))
    return _linear_memory(config, spec)

  budget = int(budget_mib * 2**20)
  result = plan.make_plan(
    fp, memory_budget_bytes=budget, base_features=8, measure_fn=measure
  )
  d = {k: v["value"] for k, v in result["decisions"].items()}
  config = plan.config_from_plan(result)
  used = _linear_memory(config, plan._spec_of(fp))["total"]  # noqa: SLF001
  assert used <= budget
  assert d["memory"]["train_step_bytes"] == used
  # The final (patch, batch) was itself measured, not extrapolated.
  assert (tuple(d["patch_size"]), d["batch_size"]) in calls
  multiple = 2 ** (len(d["features"]) - 1)
  assert all(p % multiple == 0 for p in d["patch_size"])
  # And it is not needlessly small: one more example would not fit, unless
  # the batch is at its cap (patches covering 5 % of the training voxels).
  cap = max(2, int(0.05 * 8 * 24 * 40 * 40 / np.prod(d["patch_size"])))
  config.batch_size += 1
  spec = plan._spec_of(fp)  # noqa: SLF001
  assert (
    d["batch_size"] == cap or _linear_memory(config, spec)["total"] > budget
  )
  assert d["batch_size"] >= plan.MIN_BATCH


def test_tighter_budget_gives_a_smaller_patch_or_batch():
  fp, _ = _phantom_fingerprint((24, 40, 40), [(1.0, 1.0, 1.0)] * 8)
  sizes = []
  for budget in (8 * 2**20, 2 * 2**20, 2**19):
    d = plan.make_plan(
      fp,
      memory_budget_bytes=budget,
      base_features=8,
      measure_fn=_linear_memory,
    )["decisions"]
    sizes.append(np.prod(d["patch_size"]["value"]) * d["batch_size"]["value"])
  assert sizes[0] > sizes[1] > sizes[2]


def test_few_cases_shrink_the_patch_until_a_batch_is_a_sample():
  # 3 cases of 96^3: two whole-case patches would be two thirds of the
  # data, every step the same full batch, and foreground oversampling would
  # not change what a patch holds.
  fp, _ = _phantom_fingerprint((96, 96, 96), [(1.0, 1.0, 1.0)] * 3)
  d = plan.make_plan(
    fp, memory_budget_bytes=2**40, base_features=4, measure_fn=_linear_memory
  )["decisions"]
  patch = d["patch_size"]["value"]
  assert 2 * np.prod(patch) <= plan.MAX_BATCH_SHARE * 3 * 96**3
  assert min(patch) >= plan.SHARE_MIN_PATCH
  assert (
    "covers at most 5 % of the training voxels" in d["patch_size"]["reason"]
  )
  assert "memory budget" not in d["patch_size"]["reason"]
  # The same cases, 60 of them: two whole cases are 3 % of the data, so
  # the patch stays the median case.
  fp["cases"] = fp["cases"] * 20
  fp["source"]["splits"]["train"] = 60
  d = plan.make_plan(
    fp, memory_budget_bytes=2**40, base_features=4, measure_fn=_linear_memory
  )["decisions"]
  assert d["patch_size"]["value"] == [96, 96, 96]
  assert "as it is" in d["patch_size"]["reason"]
  assert "covers" not in d["patch_size"]["reason"]


def test_the_share_rule_stops_at_its_smallest_patch():
  # 2 cases of 40^3: 5 % would be a 10^3 patch; the rule stops at 32.
  fp, _ = _phantom_fingerprint((40, 40, 40), [(1.0, 1.0, 1.0)] * 2)
  d = plan.make_plan(
    fp, memory_budget_bytes=2**40, base_features=4, measure_fn=_linear_memory
  )["decisions"]
  assert d["patch_size"]["value"] == [32, 32, 32]
  assert "covers 51.2 % of the training voxels" in d["patch_size"]["reason"]


def test_a_budget_too_small_for_any_patch_is_an_error():
  fp, _ = _phantom_fingerprint((24, 40, 40), [(1.0, 1.0, 1.0)] * 4)
  with pytest.raises(ValueError, match="over the budget"):
    plan.make_plan(
      fp,
      memory_budget_bytes=20_000,
      base_features=8,
      measure_fn=_linear_memory,
    )


@pytest.mark.slow
@pytest.mark.long
def test_compiled_plan_fits_and_configs_auto_reproduces_it(tmp_path):
  # A real fit: every candidate's train step is compiled and measured. 2-D
  # PNG cases of 12 x 10 pixels and a tiny network keep the compiles short.
  folder = dummy_data.make_dummy_data(tmp_path, fmt="png", num_cases=4)
  budget = 2**20
  fp = plan.fingerprint_folder(folder)
  result = plan.write_plan(
    folder / plan.DEFAULT_OUTPUT,
    fp,
    memory_budget_bytes=budget,
    base_features=4,
    num_folds=3,
  )
  # Pool: the 3 train cases; fold 1 holds out the middle one.
  config = auto.get_config(f"folder={folder},fold=1")
  assert config.train_split == "train[0:1]+train[2:3]"
  assert config.test_split == "train[1:2]"
  spec = registry.get_dataset_spec(config.dataset, config.manual_dir)
  measured = plan.train_step_memory(config, spec)["total"]
  assert measured <= budget
  assert measured == result["decisions"]["memory"]["value"]["train_step_bytes"]


# ------------------------------------------------------------- bad fields


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory):
  fp, _ = _phantom_fingerprint(
    (16, 32, 32), [(1.0, 1.0, 1.0)] * 4, kind="dataset"
  )
  out = tmp_path_factory.mktemp("plan")
  plan.write_plan(
    out,
    fp,
    memory_budget_bytes=2**20,
    base_features=4,
    measure_fn=_linear_memory,
  )
  return out / plan.PLAN_FILE


def _edited(plan_file, tmp_path, edit):
  raw = json.loads(plan_file.read_text())
  edit(raw)
  path = tmp_path / plan.PLAN_FILE
  path.write_text(json.dumps(raw))
  return path


def _set(name, value):
  def edit(raw):
    raw["decisions"][name]["value"] = value

  return edit


@pytest.mark.parametrize(
  ("edit", "field"),
  [
    (_set("patch_size", [16, 31, 32]), "patch_size"),
    (_set("patch_size", [16, 32]), "patch_size"),
    (_set("features", []), "features"),
    (_set("batch_size", 0), "batch_size"),
    (_set("foreground_share", 1.5), "foreground_share"),
    (_set("target_spacing", [1.0, -1.0, 1.0]), "target_spacing"),
    (
      _set("normalization", {"op": "normalize", "mode": "zcore"}),
      "normalization",
    ),
    (_set("augment", [{"op": "flipp"}]), "augment"),
    (_set("learning_rate", "fast"), "learning_rate"),
    (lambda raw: raw["decisions"].pop("num_folds"), "num_folds"),
    (lambda raw: raw["decisions"].update(patch={"value": 1}), "patch"),
  ],
)
def test_a_bad_field_is_an_error_naming_it(plan_file, tmp_path, edit, field):
  path = _edited(plan_file, tmp_path, edit)
  with pytest.raises(plan.PlanError, match=field) as info:
    plan.load_plan(path)
  assert str(path) in str(info.value)


def test_an_edited_plan_trains_as_it_stands(plan_file, tmp_path):
  plan.load_plan(plan_file)  # The plan as written is valid.
  raw = json.loads(plan_file.read_text())
  multiple = 2 ** (len(raw["decisions"]["features"]["value"]) - 1)
  path = _edited(
    plan_file,
    tmp_path,
    _set("patch_size", [multiple, 2 * multiple, multiple]),
  )
  config = auto.get_config(f"plan={path}")
  assert config.data.patch_size == (multiple, 2 * multiple, multiple)
  assert config.plan == str(path.resolve())
  before = copy.deepcopy(raw["decisions"]["augment"]["value"])
  assert [dict(a) for a in config.augment] == before


def test_fold_splits_partition_the_pool():
  sizes = {"train": 7, "validation": 3}
  held = []
  for fold in range(4):
    train, test = plan.fold_splits(["train", "validation"], sizes, fold, 4)
    held.append(test)
    assert test not in train.split("+")
  assert held == [
    "train[0:2]",
    "train[2:5]",
    "train[5:7]+validation[0:1]",
    "validation[1:3]",
  ]


@pytest.mark.long
def test_train_step_memory_counts_the_distance_maps():
  # A boundary term adds f32[B, *S, C] distance maps to the step's inputs.
  from configs import unet_synthetic  # noqa: PLC0415

  sizes = {}
  for loss in ("ce_dice", "boundary"):
    config = unet_synthetic.get_config(f"runlocal,loss={loss}")
    config.data.patch_size = (32, 32)
    config.model.features = (4, 8)
    config.batch_size = 2
    spec = registry.get_dataset_spec(config.dataset)
    sizes[loss] = plan.train_step_memory(config, spec)["arguments"]
  assert sizes["boundary"] - sizes["ce_dice"] == 2 * 32 * 32 * 4 * 4
