"""The `from_folder` TFDS builder for a user's own data.

Its datasets are named by each folder's `dataset.json`, so `DATASET_SPECS`
is empty here; `spec_from_folder(folder)` gives a folder's spec and
`builder_for(folder, data_dir)` (or `prepare`) its builder.
"""

from medseg_jax.data.from_folder.from_folder import DATASET_JSON
from medseg_jax.data.from_folder.from_folder import MANUAL_DOWNLOAD_INSTRUCTIONS
from medseg_jax.data.from_folder.from_folder import DatasetJsonError
from medseg_jax.data.from_folder.from_folder import FolderDataset
from medseg_jax.data.from_folder.from_folder import FromFolder
from medseg_jax.data.from_folder.from_folder import FromFolderConfig
from medseg_jax.data.from_folder.from_folder import builder_for
from medseg_jax.data.from_folder.from_folder import config_for
from medseg_jax.data.from_folder.from_folder import find_cases
from medseg_jax.data.from_folder.from_folder import load_dataset_json
from medseg_jax.data.from_folder.from_folder import prepare
from medseg_jax.data.from_folder.from_folder import spec_from_folder
from medseg_jax.data.from_folder.from_folder import split_case_ids
from medseg_jax.data.spec import DatasetSpec

DATASET_SPECS: dict[str, DatasetSpec] = {}
BUILDER = FromFolder

__all__ = [
  "BUILDER",
  "DATASET_JSON",
  "DATASET_SPECS",
  "MANUAL_DOWNLOAD_INSTRUCTIONS",
  "DatasetJsonError",
  "FolderDataset",
  "FromFolder",
  "FromFolderConfig",
  "builder_for",
  "config_for",
  "find_cases",
  "load_dataset_json",
  "prepare",
  "spec_from_folder",
  "split_case_ids",
]
