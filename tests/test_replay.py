"""Episodes on disk, the in-RAM replay and the training dataset."""

import functools
import gc
import pathlib
import time
import tracemalloc

import numpy as np
import pytest
import scipy.stats
import tensorflow as tf
import zstandard

import replay
import runs
import storage
import wrappers


def random_episode(length, rng, action_size=2):
  return dict(
      image=rng.integers(0, 256, (length, 64, 64, 3), dtype=np.uint8),
      action=rng.uniform(-1, 1, (length, action_size)).astype(np.float32),
      reward=rng.normal(size=length).astype(np.float32),
      discount=np.ones(length, np.float32),
      position=rng.normal(size=(length, 3)).astype(np.float32))


def test_episode_round_trip_keeps_dtypes_keys_and_length(tmp_path):
  episode = random_episode(7, np.random.default_rng(0))
  filename = storage.save_episode(tmp_path, episode)
  assert filename.name.endswith('-7.npz')
  assert not [f for f in tmp_path.iterdir() if f.suffix != '.npz']
  with np.load(filename, allow_pickle=False) as data:
    assert set(data.keys()) == set(episode)
    for key, value in episode.items():
      assert data[key].dtype == value.dtype
      np.testing.assert_array_equal(data[key], value)


def test_count_steps_sums_transitions_times_action_repeat(tmp_path):
  rng = np.random.default_rng(0)
  for length in (11, 21, 6):
    storage.save_episode(tmp_path, random_episode(length, rng))
  assert runs.count_steps(tmp_path, action_repeat=2) == (10 + 20 + 5) * 2
  assert runs.count_steps(tmp_path / 'missing', action_repeat=2) == 0


class ShortLives:
  """A game of 8x8 images that loses a life (done, discount 0) at every third step
  and goes on after it, as Atari does."""

  act_space = wrappers.Box(-1, 1, (1,))
  obs_space = {'image': wrappers.Box(0, 255, (8, 8, 3), np.uint8)}

  def reset(self):
    self.steps = 0
    return {'image': np.zeros((8, 8, 3), np.uint8)}

  def step(self, action):
    self.steps += 1
    done = self.steps % 3 == 0
    return {'image': np.full((8, 8, 3), self.steps, np.uint8)}, 1.0, done, {'discount': np.array(0.0 if done else 1.0, np.float32)}


def test_a_prefill_of_short_lives_gives_training_windows_that_end_at_their_terminals(tmp_path):
  def prefill(folder, min_rows):
    game = wrappers.MinimumLength(ShortLives(), min_rows - 1) if min_rows else ShortLives()
    env = wrappers.Parallel(lambda: wrappers.Collect(wrappers.TimeLimit(game, 1000)), 'none')
    random = lambda obs, reset, state: (np.random.uniform(-1, 1, (1, 1)).astype(np.float32), None)
    wrappers.simulate(random, [env], steps=100, callbacks=[functools.partial(storage.save_episode, folder)])
    episodes = replay.Episodes(folder)
    episodes.update()
    return episodes
  short = prefill(tmp_path / 'short', 0)  # Lives of 3 steps: 4 rows, shorter than a window of 10.
  with pytest.raises(ValueError, match='batch_length=10'):
    short.choose(np.random.default_rng(0), 10)
  episodes = prefill(tmp_path / 'kept', 10)  # Losses at steps 3 and 6 pass; the one at 9 ends it.
  assert {e.length for e in episodes.episodes.values()} == {10}
  batch = next(iter(replay.make_dataset(episodes, 4, 10)))
  np.testing.assert_array_equal(batch['discount'].numpy(), np.tile([1.0] * 9 + [0.0], (4, 1)))


def test_dataset_windows_have_shapes_and_never_cross_episodes(tmp_path):
  rng = np.random.default_rng(0)
  for index, length in enumerate((12, 30, 5)):
    episode = random_episode(length, rng)
    # Mark each row with its episode and row so windows can be traced back.
    episode['reward'] = (100 * index + np.arange(length)).astype(np.float32)
    storage.save_episode(tmp_path, episode)
  episodes = replay.Episodes(tmp_path)
  dataset = replay.make_dataset(episodes, batch_size=8, batch_length=10)
  for batch in dataset.take(20):
    assert batch['image'].shape == (8, 10, 64, 64, 3)
    assert batch['image'].dtype == tf.uint8
    assert batch['action'].shape == (8, 10, 2)
    assert batch['reward'].shape == (8, 10)
    reward = batch['reward'].numpy()
    # Consecutive rows of one episode: ids increase by exactly one.
    np.testing.assert_array_equal(np.diff(reward, axis=1), 1)
    # The 5-row episode (ids 200+) is too short for a window of 10.
    assert (reward < 200).all()


def save_constant_reward_episode(directory, reward, rng):
  """Save a random 10-row episode whose every reward is `reward`, to tell it apart."""
  episode = random_episode(10, rng)
  episode['reward'][:] = reward
  storage.save_episode(directory, episode)


def test_dataset_sees_episodes_written_later(tmp_path):
  rng = np.random.default_rng(0)
  save_constant_reward_episode(tmp_path, 0, rng)
  episodes = replay.Episodes(tmp_path)
  batches = iter(replay.make_dataset(episodes, batch_size=1, batch_length=10, rescan_every=5))
  save_constant_reward_episode(tmp_path, 1, rng)
  seen = {float(next(batches)['reward'][0, 0]) for _ in range(60)}
  assert seen == {0.0, 1.0}


class CountingEpisodes(replay.Episodes):
  """Episodes that count the windows chosen from them."""

  def __init__(self, directory):
    super().__init__(directory)
    self.chosen = 0

  def choose(self, *args, **kwargs):
    self.chosen += 1
    return super().choose(*args, **kwargs)


@pytest.mark.parametrize('read_ahead', [False, True])
def test_dataset_reads_ahead_only_when_asked_to(tmp_path, read_ahead):
  storage.save_episode(tmp_path, random_episode(20, np.random.default_rng(0)))
  episodes = CountingEpisodes(tmp_path)
  batches = iter(replay.make_dataset(episodes, batch_size=3, batch_length=10, read_ahead=read_ahead))
  next(batches)
  time.sleep(1.0)  # Time for a background thread to choose more windows.
  # make_dataset chooses one window to learn the shapes.
  if read_ahead:
    assert episodes.chosen > 1 + 3
  else:
    assert episodes.chosen == 1 + 3


def test_dataset_without_read_ahead_sees_a_new_episode_at_the_next_rescan(tmp_path):
  rng = np.random.default_rng(0)
  save_constant_reward_episode(tmp_path, 0, rng)
  episodes = replay.Episodes(tmp_path)
  batches = iter(replay.make_dataset(episodes, batch_size=1, batch_length=10, rescan_every=4, read_ahead=False))
  rewards = [float(next(batches)['reward'][0, 0]) for _ in range(3)]
  save_constant_reward_episode(tmp_path, 1, rng)
  time.sleep(0.5)
  # Window 4 still comes from the first scan; the rescan before window 5 finds the second.
  rewards += [float(next(batches)['reward'][0, 0]) for _ in range(40)]
  assert rewards[:4] == [0.0] * 4
  assert 1.0 in rewards[4:]


def smooth_episode(length, rng):
  """An episode whose frames compress like rendered ones: a smooth gradient
  moving one pixel a step, with sparse noise."""
  episode = random_episode(length, rng)
  rows = np.arange(64)[:, None, None] * np.array([3, 2, 1]) + np.arange(length)[:, None, None, None]
  frames = np.broadcast_to(rows, (length, 64, 64, 3)) % 256
  noise = rng.random(frames.shape) < 0.02
  episode['image'] = np.where(noise, rng.integers(0, 256, frames.shape), frames).astype(np.uint8)
  return episode


@pytest.mark.parametrize('chunk', [1, 4, 25])
def test_stored_episode_windows_are_exactly_the_stored_rows(chunk):
  episode = random_episode(23, np.random.default_rng(0))
  stored = replay.StoredEpisode(episode, chunk)
  assert stored.length == 23
  for length in (1, 4, 10, 23):
    for start in range(23 - length + 1):
      window = stored.window(start, length)
      assert set(window) == set(episode)
      for key, value in episode.items():
        assert window[key].dtype == value.dtype
        np.testing.assert_array_equal(window[key], value[start: start + length])


def test_store_reports_its_bytes_the_compressed_chunks_plus_arrays(tmp_path):
  rng = np.random.default_rng(0)
  saved = [smooth_episode(length, rng) for length in (30, 51, 7)]
  for episode in saved:
    storage.save_episode(tmp_path, episode)
  replay.Episodes(tmp_path).update()  # The first load imports modules (zip codecs): not counted.
  episodes = replay.Episodes(tmp_path, chunk=10)
  # Count only what was allocated from replay.py (deep tracebacks), not what other
  # threads of the test process allocate meanwhile.
  tracemalloc.start(100)
  episodes.update()
  gc.collect()  # Cycles the loader left behind.
  snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, replay.__file__, all_frames=True)])
  tracemalloc.stop()
  held = sum(stat.size for stat in snapshot.statistics('filename'))
  # Independently: zstd level 9 of every 10 frames, plus the other stored keys
  # (the loader keeps the keys of ALGORITHM 7.1 only, not `position`).
  expected = sum(
      len(zstandard.compress(e['image'][i: i + 10].tobytes(), 9)) for e in saved for i in range(0, len(e['image']), 10))
  expected += sum(e[key].nbytes for e in saved for key in ('action', 'reward', 'discount'))
  assert episodes.nbytes() == expected
  raw = sum(e[key].nbytes for e in saved for key in ('image', 'action', 'reward', 'discount'))
  assert episodes.nbytes() < raw / 3  # The frames compress.
  # What Python allocated and still holds: the reported bytes plus small objects
  # (names, lists, array headers).
  assert expected <= held <= expected + 10_000, held - expected


def test_dataset_chooses_episodes_and_window_starts_uniformly(tmp_path):
  rng = np.random.default_rng(0)
  lengths = (8, 12, 20, 4)  # The 4-row episode is too short for windows of 5.
  for index, length in enumerate(lengths):
    episode = random_episode(length, rng)
    episode['reward'] = (100 * index + np.arange(length)).astype(np.float32)
    storage.save_episode(tmp_path, episode)
  dataset = replay.make_dataset(replay.Episodes(tmp_path), batch_size=100, batch_length=5, seed=1)
  first = np.concatenate([batch['reward'][:, 0].numpy() for batch in dataset.take(60)]).astype(int)
  episode, start = first // 100, first % 100
  counts = np.bincount(episode, minlength=4)
  assert counts[3] == 0
  # Uniform over the 3 long enough episodes, and over each one's length - 5 + 1 starts.
  assert scipy.stats.chisquare(counts[:3]).pvalue > 0.001
  for index, length in enumerate(lengths[:3]):
    starts = np.bincount(start[episode == index], minlength=length - 4)
    assert len(starts) == length - 4
    assert scipy.stats.chisquare(starts).pvalue > 0.001


def test_bad_episode_files_are_skipped_with_one_warning_line_each(tmp_path, capsys):
  rng = np.random.default_rng(0)
  good = storage.save_episode(tmp_path, random_episode(10, rng))
  data = good.read_bytes()
  (tmp_path / 'a-x-10.npz').write_bytes(data[: len(data) // 2])
  (tmp_path / 'b-x-10.npz').write_bytes(b'')
  missing = random_episode(10, rng)
  del missing['discount']
  np.savez(tmp_path / 'c-x-10.npz', **missing)
  np.savez(tmp_path / 'd-x-10.npz', image=np.array([{'a': 1}] * 10, dtype=object), action=np.zeros((10, 2)), reward=np.zeros(10), discount=np.zeros(10))
  np.savez(tmp_path / 'e-x-12.npz', **random_episode(10, rng))
  episodes = replay.Episodes(tmp_path)
  episodes.update()
  lines = capsys.readouterr().err.splitlines()
  assert all(line.startswith('Warning: skipping episode ') for line in lines), lines
  skipped = sorted(pathlib.Path(line.split()[3].rstrip(':')).name for line in lines)
  assert skipped == ['a-x-10.npz', 'b-x-10.npz', 'c-x-10.npz', 'd-x-10.npz', 'e-x-12.npz']
  assert list(episodes.episodes) == [good]
  episodes.update()
  assert capsys.readouterr().err == ''  # Each bad file warns once only.
