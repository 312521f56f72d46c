"""TFDS builders defined in this project, prepared without tensorflow: the TFDS defaults worked around.

TFDS 4.9.10 `download_and_prepare(file_format="array_record")` works for a `GeneratorBasedBuilder` with
tensorflow absent. It serializes examples with TFDS's own copy of the `tf.train.Example` protos (no
tensorflow), writes them with array_record into `incomplete.*` and renames that directory into place;
`builder.as_data_source()` reads and decodes with numpy. Four TFDS defaults would get in the way and are
avoided by the builders of tasks.py and text.py: `dataset_info_from_configs` reads metadata files next to
the module, so their `_info` builds a `DatasetInfo` directly; `code_path` needs the `importlib_resources`
backport, so they set it (see tasks._TaskBuilder); `DatasetInfo.initialize_from_bucket` leaks a temporary
directory, so it is a no-op (see `LocalDatasetInfo`); and `data_dir` defaults to ~/tensorflow_datasets, so
their `prepare` functions require it.
"""

import errno

import tensorflow_datasets as tfds


class LocalDatasetInfo(tfds.core.DatasetInfo):
  """DatasetInfo that never looks for precomputed info on GCS."""

  def initialize_from_bucket(self) -> None:
    # TFDS 4.9.10 creates a temporary directory here before finding GCS disabled and never
    # removes it: one empty /tmp/tmp*tfds per unprepared builder. These data are never on GCS.
    pass


def lost_preparation_race(error: OSError) -> bool:
  """Whether TFDS's final rename failed because another process renamed its prepared copy into place first.

  The rename checks for the destination first (FileExistsError, with no errno); a process that renames
  between that check and the rename gets EEXIST or, on Linux, ENOTEMPTY, which Python raises as a plain
  OSError: two test processes preparing one dataset side by side hit that.
  """
  return isinstance(error, FileExistsError) or error.errno in (errno.EEXIST, errno.ENOTEMPTY)
