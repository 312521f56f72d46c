r"""Prepares a TFDS catalog dataset as array_record; run by `text.prepare_builder` in a subprocess.

  python -m experiments.data.catalog --name=tiny_shakespeare --data_dir=DIR [--manual_dir=FOLDER]

The catalog's builders read their downloads with tensorflow, so this runs apart from training:
the training process never imports tensorflow, and here tensorflow sees no GPU.
"""

import os

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # before tensorflow is imported, by tfds or by us

from absl import app, flags  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from experiments.data.local_tfds import lost_preparation_race  # noqa: E402

_NAME = flags.DEFINE_string("name", None, "Catalog dataset name, e.g. tiny_shakespeare or lm1b.", required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir to prepare into.", required=True)
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Folder with the files TFDS would download (offline use).")


def main(argv):
  del argv
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise SystemExit(f"preparing the TFDS catalog dataset {_NAME.value!r} needs tensorflow: "
                     f"pip install tensorflow-cpu") from None
  tf.config.set_visible_devices([], "GPU")
  builder = tfds.builder(_NAME.value, data_dir=_DATA_DIR.value, file_format="array_record")
  config = tfds.download.DownloadConfig(manual_dir=_MANUAL_DIR.value) if _MANUAL_DIR.value else None
  try:
    builder.download_and_prepare(file_format="array_record", download_config=config)
  except OSError as error:
    if not lost_preparation_race(error):
      raise
    # Another process prepared it first and renamed its complete copy into place.
    if not tfds.builder(_NAME.value, data_dir=_DATA_DIR.value, file_format="array_record").is_prepared():
      raise


if __name__ == "__main__":
  app.run(main)
