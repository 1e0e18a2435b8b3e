"""The filter of TensorFlow's C++ start-up messages."""

import os

import pytest

import tf_startup

TF_STARTUP = '''WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796115488.216673    6028 port.cc:153] oneDNN custom operations are on.
I0000 00:00:1796115488.217145    6028 cpu_feature_guard.cc:227] This TensorFlow binary is optimized.
To enable the following instructions: AVX2 FMA, rebuild TensorFlow.
W0000 00:00:1796115488.300000    6028 some_op.cc:10] A real warning.
E0000 00:00:1796115497.185862    6028 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error
E0000 00:00:1796115497.200000    6028 other.cc:7] A real error.
A Python line.
'''


@pytest.mark.parametrize('level, gpu_driver, kept', [
    (1, False, ['W', 'real error', 'Python']),
    (1, True, ['W', 'cuInit', 'real error', 'Python']),
    (2, False, ['real error', 'Python']),
    (0, False, ['WARNING: All', 'oneDNN', 'cpu_feature', 'To enable', 'W', 'cuInit', 'real error', 'Python']),
])
def test_tf_startup_filter_applies_the_log_level_and_hides_cuinit_only_without_a_driver(level, gpu_driver, kept):
  lines = list(tf_startup.tf_startup_kept(TF_STARTUP, level, gpu_driver))
  assert len(lines) == len(kept)
  for line, part in zip(lines, kept):
    assert part in line if part != 'W' else line.startswith('W0000')


def test_tf_startup_filter_passes_real_stderr_lines_through_after_the_block(capfd, monkeypatch):
  monkeypatch.setenv('TF_CPP_MIN_LOG_LEVEL', '1')
  with tf_startup.tf_startup_filter():
    os.write(2, TF_STARTUP.encode())  # What C++ code writes to the process's stderr.
    assert capfd.readouterr().err == ''  # Held back until the block ends.
  err = capfd.readouterr().err
  assert 'A real warning.' in err and 'A real error.' in err and 'A Python line.' in err
  assert 'oneDNN' not in err and 'InitializeLog' not in err
