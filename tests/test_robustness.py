"""Crash safety, failed writes, exact resume and determinism (runs the real command line)."""

import contextlib
import functools
import json
import pathlib
import random
import resource
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf

import logger
import replay
import runs
import storage
from test_replay import random_episode

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEBUG = [sys.executable, str(ROOT / 'dreamer.py'), '--configs', 'debug', '--task', 'dmc_cartpole_balance']


def test_atomic_write_killed_midway_leaves_no_partial_file(tmp_path):
  script = textwrap.dedent(f'''
      import os, signal, sys
      sys.path.insert(0, {str(ROOT)!r})
      import logger
      import replay
      import runs
      import storage
      def write(f):
        f.write(b'half of an episode')
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
      storage.atomic_write({str(tmp_path / 'episode-1-10.npz')!r}, write)
  ''')
  result = subprocess.run([sys.executable, '-c', script])
  assert result.returncode == -signal.SIGKILL
  assert not list(tmp_path.glob('*.npz'))
  episodes = replay.Episodes(tmp_path)
  episodes.update()  # The leftover temporary file is not an episode.
  assert not episodes.episodes


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, capsys):
  variable = tf.Variable(1.0)
  checkpoints = storage.Checkpoints(tmp_path, dict(v=variable), keep=2)
  checkpoints.save()
  variable.assign(2.0)
  checkpoints.save()
  variable.assign(3.0)
  latest = checkpoints.save()
  assert [f.name for f in checkpoints.saved()] == ['ckpt-2', 'ckpt-3']
  for filename in latest.iterdir():
    filename.write_bytes(filename.read_bytes()[:10])
  variable.assign(0.0)
  assert checkpoints.restore().name == 'ckpt-2'
  # One line on stderr, no source line or traceback.
  assert capsys.readouterr().err.splitlines() == [
      f'Warning: checkpoint {latest} cannot be restored (OpError); using the one before it.']
  assert float(variable) == 2.0


def test_checkpoints_ignore_files_that_are_not_numbered_folders(tmp_path):
  variable = tf.Variable(1.0)
  checkpoints = storage.Checkpoints(tmp_path, dict(v=variable), keep=2)
  (tmp_path / 'ckpt-7.index').write_text('another format')
  (tmp_path / 'ckpt-x').mkdir()
  assert checkpoints.save().name == 'ckpt-1'
  assert [f.name for f in checkpoints.saved()] == ['ckpt-1']


def test_checkpoint_restore_with_none_saved_returns_none(tmp_path):
  assert storage.Checkpoints(tmp_path, dict(v=tf.Variable(1.0)), keep=2).restore() is None


def test_checkpoint_from_before_a_counter_existed_restores_and_the_counter_keeps_its_value(tmp_path, capsys):
  old = storage.Checkpoints(tmp_path, dict(v=tf.Variable(5.0)), keep=2)
  old.save()
  variable, counter = tf.Variable(0.0), tf.Variable(-1, dtype=tf.int64)
  assert storage.Checkpoints(tmp_path, dict(v=variable, step=counter), keep=2, optional=['step']).restore().name == 'ckpt-1'
  assert float(variable) == 5.0 and int(counter) == -1
  # A required object missing from every checkpoint: nothing is restored.
  assert storage.Checkpoints(tmp_path, dict(v=variable, w=tf.Variable(1.0)), keep=2).restore() is None
  assert capsys.readouterr().err.startswith(f'Warning: checkpoint {tmp_path / "ckpt-1"} cannot be restored')


def metrics(logdir):
  return [json.loads(line) for line in (logdir / 'metrics.jsonl').read_text().splitlines()]


def test_killed_at_random_moments_run_resumes_to_the_end(tmp_path):
  logdir = tmp_path / 'run'
  command = DEBUG + ['--logdir', str(logdir), '--steps', '1200', '--checkpoints', '2']
  rng = random.Random(0)
  outputs = []
  for attempt in range(10):  # SIGKILL at random moments: start-up, prefill, training, writes.
    outputs.append(tmp_path / f'attempt{attempt}.log')
    with open(outputs[-1], 'w') as log:
      process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
      try:
        process.wait(rng.uniform(5, 35))
      except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
    for filename in (logdir / 'episodes').glob('*.npz'):
      storage.load_episode(filename)  # Raises on a partial or corrupt file.
  final = subprocess.run(command, capture_output=True, text=True, timeout=600)
  assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
  logs = [f.read_text() for f in outputs] + [final.stdout]
  assert sum('Resumed from' in log for log in logs) >= 3
  assert sum('Prefill' in log for log in logs) <= 3  # Only until the prefill finished.
  assert 'Prefill' not in final.stdout
  files = list((logdir / 'episodes').glob('*.npz'))
  assert runs.count_steps(logdir / 'episodes', 2) == 1200 == 100 * len(files)
  assert not [f for f in (logdir / 'checkpoints').iterdir() if not f.name.startswith('ckpt-')]
  assert len(list((logdir / 'checkpoints').iterdir())) <= 2
  # Every phase trained once: pretrain at 200, then train_steps at 400, ..., 1200 (a
  # kill midway through collecting moves the later phases, adding some). Its metrics
  # row is lost when the kill falls between its checkpoint and its row.
  newest = max((logdir / 'checkpoints').iterdir(), key=lambda f: int(f.name.split('-')[1]))
  updates = tf.train.load_checkpoint(str(newest / 'ckpt')).get_tensor('agent/updates/.ATTRIBUTES/VARIABLE_VALUE')
  assert updates >= 5 + 3 * 5


def test_deterministic_runs_repeat_exactly_and_seeds_differ(tmp_path):
  runs = {}
  for name, seed in (('a', 0), ('b', 0), ('c', 1)):
    logdir = tmp_path / name
    flags = ['--logdir', str(logdir), '--steps', '600', '--deterministic', 'True', '--seed', str(seed)]
    result = subprocess.run(DEBUG + flags, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    # Wall-clock speed and the ETA from it are the values that cannot repeat.
    runs[name] = [{k: v for k, v in row.items() if k not in ('fps', 'eta')} for row in metrics(logdir)]
  assert len(runs['a']) >= 3
  assert runs['a'] == runs['b']
  assert runs['a'] != runs['c']


# Failed writes: real OS errors at the real write calls.

ADVICE = '. Free space (or fix the cause) and rerun the same command to resume.'


@contextlib.contextmanager
def file_size_limit(limit=2 ** 20):
  """Inside, a write that would grow a file past `limit` bytes writes what fits,
  then fails with EFBIG ('File too large'): RLIMIT_FSIZE, in this process only."""
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # Else the signal kills the process.
  resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
  try:
    yield
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, handler)


@contextlib.contextmanager
def tmpfs(folder, size):
  """A tmpfs of `size` mounted at `folder`; skips the test where mounting is not allowed."""
  folder.mkdir()
  mount = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(folder)], capture_output=True, text=True)
  if mount.returncode:
    pytest.skip(f'cannot mount a tmpfs here: {mount.stderr.strip()}')
  try:
    yield folder
  finally:
    subprocess.run(['umount', '-l', str(folder)], check=True)


def fill(folder):
  """Take every free byte of the filesystem of `folder` with a filler file."""
  with open(folder / 'filler', 'wb', buffering=0) as f:
    with contextlib.suppress(OSError):
      while True:
        f.write(bytes(2 ** 16))


@contextlib.contextmanager
def full_disk(folder):
  fill(folder)
  try:
    yield
  finally:
    (folder / 'filler').unlink()


@pytest.fixture(params=['No space left on device', 'File too large'])
def failing_disk(request, tmp_path):
  """(folder, fail, error): inside `with fail():` a large write into the folder
  fails with `error`, ENOSPC on a full 8 MB tmpfs or EFBIG past a 1 MB file size."""
  if request.param == 'File too large':
    yield tmp_path, file_size_limit, request.param
    return
  with tmpfs(tmp_path / 'disk', '8m') as folder:
    yield folder, functools.partial(full_disk, folder), request.param


def test_failed_episode_write_leaves_no_partial_file_and_keeps_the_others(failing_disk):
  folder, fail, error = failing_disk
  directory = folder / 'episodes'
  rng = np.random.default_rng(0)
  kept = storage.save_episode(directory, random_episode(101, rng))  # 1.2 MB: random images do not compress.
  with fail(), pytest.raises(storage.WriteError) as raised:
    storage.save_episode(directory, random_episode(101, rng))
  message = str(raised.value)
  assert message.startswith(f'Cannot write {directory}/') and message.endswith(f'-101.npz: {error}{ADVICE}')
  assert [f.name for f in directory.iterdir()] == [kept.name]
  storage.save_episode(directory, random_episode(101, rng))  # With space again.
  episodes = replay.Episodes(directory)
  episodes.update()
  assert len(episodes.episodes) == 2


def test_failed_checkpoint_write_removes_its_folder_and_the_previous_one_restores(failing_disk):
  folder, fail, error = failing_disk
  directory = folder / 'checkpoints'
  (directory / '.tmp-ckpt-7').mkdir(parents=True)  # Left by a killed run.
  variable = tf.Variable(tf.fill([600_000], 1.0))  # 2.4 MB.
  checkpoints = storage.Checkpoints(directory, dict(v=variable), keep=2)
  checkpoints.save()
  assert [f.name for f in directory.iterdir()] == ['ckpt-1']
  variable.assign(tf.fill([600_000], 2.0))
  with fail(), pytest.raises(storage.WriteError) as raised:
    checkpoints.save()
  # TensorFlow's SaveV2 error, in one line without its op or function names.
  assert str(raised.value) == f'Cannot write {directory}/.tmp-ckpt-2: {error}{ADVICE}'
  assert [f.name for f in directory.iterdir()] == ['ckpt-1']
  assert checkpoints.restore().name == 'ckpt-1'
  assert float(variable[0]) == 1.0


def test_failed_metrics_write_leaves_no_partial_line_and_keeps_the_values(tmp_path):
  log = logger.Logger(tmp_path, 10, 100)
  filename = tmp_path / 'metrics.jsonl'
  padding = 2 ** 20 - 10 - len(json.dumps({'step': 0, 'pad': ''}) + '\n')
  filename.write_text(json.dumps({'step': 0, 'pad': 'x' * padding}) + '\n')  # 10 bytes below the limit.
  before = filename.read_bytes()
  log.scalar('train/return', 5.0)
  with file_size_limit(), pytest.raises(storage.WriteError) as raised:
    log.write(0)
  assert str(raised.value) == f'Cannot write {filename}: File too large{ADVICE}'
  assert filename.read_bytes() == before  # The 10 bytes that fitted were cut off again.
  log.write(0)
  assert json.loads(filename.read_text().splitlines()[-1]) == {'step': 10, 'budget': 100, 'updates': 0, 'train/return': 5.0}


def test_failed_video_write_leaves_no_partial_gif(tmp_path):
  log = logger.Logger(tmp_path, 10, 100)
  log.video('test/policy', np.random.default_rng(0).integers(0, 256, (10, 128, 128, 3), dtype=np.uint8))
  with file_size_limit(100_000), pytest.raises(storage.WriteError) as raised:
    log.write(0)
  assert str(raised.value) == f'Cannot write {tmp_path}/videos/test_policy_10.gif: File too large{ADVICE}'
  assert not list((tmp_path / 'videos').iterdir())


def test_disk_full_during_a_run_stops_with_one_line_and_a_rerun_resumes(tmp_path):
  with tmpfs(tmp_path / 'disk', '64m') as disk:
    logdir = disk / 'run'
    command = DEBUG + ['--logdir', str(logdir), '--steps', '600', '--log_images', 'False']
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (logdir / 'checkpoints' / 'ckpt-1').exists():  # Fill the disk once a checkpoint is saved.
      assert run.poll() is None, run.communicate()[1][-3000:]
      time.sleep(0.2)
    fill(disk)
    _, stderr = run.communicate(timeout=600)
    assert run.returncode == 3, stderr[-3000:]
    # The last line, after TensorFlow's own notices; which write fails first varies.
    last = stderr.strip().splitlines()[-1]
    assert last.startswith('Error: Cannot write ') and str(logdir) in last
    assert last.endswith(f': No space left on device{ADVICE}')
    assert 'Traceback' not in stderr
    leftovers = [f for f in logdir.rglob('*') if f.name.endswith('.tmp') or f.name.startswith('.tmp-ckpt-')]
    assert not leftovers
    saved = sorted((logdir / 'episodes').glob('*.npz'))
    (disk / 'filler').unlink()
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert 'Resumed from' in rerun.stdout and 'Prefill' not in rerun.stdout
    assert 'Warning: took over' not in rerun.stderr  # The failed run cleared its lock record.
    episodes = sorted((logdir / 'episodes').glob('*.npz'))
    assert set(saved) <= set(episodes)
    for filename in episodes:
      storage.load_episode(filename)
    assert runs.count_steps(logdir / 'episodes', 2) == 600
