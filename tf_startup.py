"""TensorFlow imported with its C++ start-up messages filtered by
TF_CPP_MIN_LOG_LEVEL (default 1 here). Import this module before anything that
imports TensorFlow: `import tf_startup  # noqa: F401`."""

import contextlib
import glob
import os
import re
import sys
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
# One message of TensorFlow's C++ logging: severity letter, date, time, thread, file:line].
TF_LOG_LINE = re.compile(r'([IWEF])\d{4} [\d:.]+ +\d+ [^\]]+\] ')


@contextlib.contextmanager
def tf_startup_filter():
  """Apply TF_CPP_MIN_LOG_LEVEL to the C++ messages written while the block
  runs. TensorFlow logs through absl, which writes everything logged before
  absl::InitializeLog() to stderr unfiltered (its banner says so): the oneDNN
  and missing-CUDA notices of `import tensorflow`, once per library that embeds
  them. The block's stderr goes to a file, then back to stderr without what is
  below the level and, from level 1, without the banner and the 'failed call to
  cuInit' error on a machine without an NVIDIA driver (it only means: no GPU)."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as capture:
    os.dup2(capture.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      capture.seek(0)
      level = int(os.environ.get('TF_CPP_MIN_LOG_LEVEL', '0'))
      gpu_driver = bool(glob.glob('/dev/nvidia*')) or os.path.exists('/dev/dxg')  # Linux, WSL.
      sys.stderr.writelines(tf_startup_kept(capture.read().decode(errors='replace'), level, gpu_driver))
      sys.stderr.flush()


def tf_startup_kept(text, level, gpu_driver):
  """The lines of `text` that `tf_startup_filter` lets through at TF_CPP_MIN_LOG_LEVEL
  `level`, on a machine with or without an NVIDIA `gpu_driver`."""
  keep = True
  for line in text.splitlines(keepends=True):
    match = TF_LOG_LINE.match(line)
    if match:  # A line without the prefix continues the message before it.
      noise = level and not gpu_driver and 'failed call to cuInit' in line
      keep = 'IWEF'.index(match.group(1)) >= level and not noise
    elif level and line.startswith('WARNING: All log messages before absl::InitializeLog()'):
      continue
    if keep:
      yield line


with tf_startup_filter():
  import tensorflow as tf
  import tensorflow_probability  # noqa: F401
  import tf_keras  # noqa: F401
  tf.config.list_physical_devices('GPU')  # Loads CUDA here, inside the filter.
