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

import contextlib
import errno
import io
import logging
import sys
from collections.abc import Iterator

import tensorflow_datasets as tfds
from absl import logging as absl_logging


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


class _TfdsChatter(logging.Filter):
  """Drops TFDS's records below ERROR ("Using custom data configuration", "Generating splits") unless the command
  asked for INFO records (--verbosity=0 or more)."""

  def filter(self, record: logging.LogRecord) -> bool:
    chatter = "tensorflow_datasets" in record.pathname and record.levelno < logging.ERROR
    return not chatter or absl_logging.get_verbosity() >= absl_logging.INFO


@contextlib.contextmanager
def quiet_tfds() -> Iterator[None]:
  """Builds or prepares datasets inside with TFDS's progress bars, prints and warnings kept off the terminal.

  TFDS prints "Downloading and preparing ..." and "... downloaded and prepared" on stdout, where the evaluate
  command's JSON goes, draws five progress bars and warns of a "custom data configuration" (every task's); with
  --verbosity=0 or more they all stay. The caller says in one line what it prepares (announce_preparation).
  """
  if absl_logging.get_verbosity() >= absl_logging.INFO:
    yield
    return
  chatter = _TfdsChatter()
  absl_logger = logging.getLogger("absl")
  absl_logger.addFilter(chatter)
  tfds.disable_progress_bar()
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    tfds.enable_progress_bar()
    absl_logger.removeFilter(chatter)


def announce_preparation(builder: tfds.core.DatasetBuilder) -> None:
  """The one line a command prints on stderr before it prepares a dataset that is not prepared yet."""
  if not builder.is_prepared():
    print(f"preparing the {builder.name} data in {builder.data_dir} (once; later runs reuse them)", file=sys.stderr,
          flush=True)
