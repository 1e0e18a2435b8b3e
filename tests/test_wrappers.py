"""Environment wrappers and workers. Rendering happens only in worker
processes, since this pytest process may have imported TensorFlow."""

import functools
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest
from PIL import Image

import wrappers

needs_ale = pytest.mark.skipif(
    importlib.util.find_spec('ale_py') is None, reason='Atari needs pip install -r requirements-atari.txt')


class FakeEnv:
  """Step k (from 1) gives reward k and observations filled with k; the
  episode ends at step `length` with discount 0. Records every action."""

  def __init__(self, length=5, low=(-1.0,), high=(1.0,), fail_at=None, crash_at=None):
    self.act_space = wrappers.Box(np.array(low), np.array(high))
    self.obs_space = {'image': wrappers.Box(0, 255, (4, 4, 3), np.uint8),
                      'position': wrappers.Box(-np.inf, np.inf, (2,))}
    self.length, self.fail_at, self.crash_at = length, fail_at, crash_at
    self.steps, self.actions = 0, []

  def reset(self):
    self.steps = 0
    return self._obs()

  def step(self, action):
    self.steps += 1
    if self.steps == self.fail_at:
      raise ValueError(f'fake env failed at step {self.steps}')
    if self.steps == self.crash_at:
      os.kill(os.getpid(), signal.SIGSEGV)
    self.actions.append(np.array(action))
    done = self.steps >= self.length
    info = {'discount': np.array(0.0 if done else 1.0, np.float32)}
    return self._obs(), float(self.steps), done, info

  def _obs(self):
    return {'image': np.full((4, 4, 3), self.steps, np.uint8),
            'position': np.array([self.steps, -self.steps], np.float32)}


@pytest.fixture
def importable_tests(monkeypatch):
  """Lets worker processes unpickle constructors defined in this file."""
  here = os.path.dirname(os.path.abspath(__file__))
  paths = [here, os.path.dirname(here), os.environ.get('PYTHONPATH', '')]
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join(filter(None, paths)))


def test_box_sample_stays_in_bounds_with_dtype():
  rng = np.random.default_rng(0)
  image = wrappers.Box(0, 255, (8, 8, 3), np.uint8).sample(rng)
  assert image.dtype == np.uint8 and image.shape == (8, 8, 3)
  box = wrappers.Box(np.array([-2.0, 0.0]), np.array([-1.0, 10.0]))
  assert box.shape == (2,) and box.low.dtype == np.float32
  values = np.stack([box.sample(rng) for _ in range(100)])
  assert values.dtype == np.float32
  assert (values >= box.low).all() and (values <= box.high).all()


def test_action_repeat_sums_rewards_over_amount_steps_and_stops_at_episode_end():
  inner = FakeEnv(length=5)
  env = wrappers.ActionRepeat(inner, 3)
  env.reset()
  _, reward, done, _ = env.step([0.0])
  assert (reward, done, inner.steps) == (1 + 2 + 3, False, 3)
  obs, reward, done, info = env.step([0.0])
  assert (reward, done, inner.steps) == (4 + 5, True, 5)
  assert obs['position'][0] == 5 and info['discount'] == 0


def test_render_image_after_action_repeat_renders_once_per_agent_step():
  inner = FakeEnv(length=5)
  inner.image_space = wrappers.Box(0, 255, (2, 2, 3), np.uint8)
  renders = []
  inner.render = lambda: renders.append(inner.steps) or np.full((2, 2, 3), inner.steps, np.uint8)
  env = wrappers.RenderImage(wrappers.ActionRepeat(inner, 2))
  assert env.obs_space['image'].shape == (2, 2, 3)
  assert env.reset()['image'][0, 0, 0] == 0
  obs, _, _, _ = env.step([0.0])
  env.step([0.0])
  _, _, done, _ = env.step([0.0])  # Ends after one inner step: still rendered.
  assert done and renders == [0, 2, 4, 5] and obs['image'][0, 0, 0] == 2


def test_normalize_actions_maps_unit_interval_onto_finite_bounds_only():
  inner = FakeEnv(low=(-2.0, 0.0, -np.inf), high=(4.0, 10.0, np.inf))
  env = wrappers.NormalizeActions(inner)
  np.testing.assert_array_equal(env.act_space.low, [-1, -1, -np.inf])
  np.testing.assert_array_equal(env.act_space.high, [1, 1, np.inf])
  env.reset()
  for action in ([-1, -1, 7], [1, 1, 7], [0, 0, 7]):
    env.step(np.array(action, np.float32))
  np.testing.assert_allclose(inner.actions, [[-2, 0, 7], [4, 10, 7], [1, 5, 7]])


def test_time_limit_ends_episode_after_exactly_duration_steps_with_discount_one():
  env = wrappers.TimeLimit(FakeEnv(length=100), 4)
  env.reset()
  dones = [env.step([0.0])[2] for _ in range(3)]
  _, _, done, info = env.step([0.0])
  assert dones == [False] * 3 and done and info['discount'] == 1
  with pytest.raises(RuntimeError, match='reset'):
    env.step([0.0])
  env.reset()
  assert not env.step([0.0])[2]


class FakeLives(FakeEnv):
  """A game that goes on after each lost life: step k loses one (done, discount 0)
  whenever k is a multiple of `life`."""

  def __init__(self, life=3):
    super().__init__(length=10 ** 9)
    self.life = life

  def step(self, action):
    obs, reward, _, _ = super().step(action)
    done = self.steps % self.life == 0
    return obs, reward, done, {'discount': np.array(0.0 if done else 1.0, np.float32)}


def test_minimum_length_ignores_ends_before_its_steps_th_step_with_discount_one():
  env = wrappers.MinimumLength(FakeLives(life=3), 7)
  env.reset()
  steps = [env.step([0.0]) for _ in range(9)]
  dones = [done for _, _, done, _ in steps]
  discounts = [float(info['discount']) for _, _, _, info in steps]
  assert dones == [False] * 8 + [True]  # Lives lost at steps 3 and 6 pass; the one at 9 ends it.
  assert discounts == [1.0] * 8 + [0.0]
  env.reset()  # The count starts again.
  assert [env.step([0.0])[2] for _ in range(9)] == [False] * 8 + [True]
  later = wrappers.MinimumLength(FakeEnv(length=5), 3)  # An end after the minimum keeps its discount.
  later.reset()
  *_, (_, _, done, info) = [later.step([0.0]) for _ in range(5)]
  assert done and info['discount'] == 0


def test_make_env_keeps_training_episodes_of_short_lives_until_they_hold_min_rows(monkeypatch):
  built = []
  monkeypatch.setattr(wrappers, 'DeepMindControl', lambda *args, **kwargs: built.append(1) or FakeLives(life=2))
  monkeypatch.setattr(wrappers, 'RenderImage', lambda env: env)
  monkeypatch.setattr(wrappers, 'NormalizeActions', lambda env: env)
  episodes = []
  for train in (True, False):
    env = wrappers.Parallel(functools.partial(wrappers.make_env, 'dmc_fake_task', 1, 100, train=train, min_rows=6), 'none')
    wrappers.simulate(lambda obs, reset, state: (np.zeros((1, 1), np.float32), None), [env], episodes=2, callbacks=[episodes.append])
  assert [len(e['reward']) for e in episodes] == [7, 7, 3, 3]  # Lives end at even steps: 6 steps, 7 rows.
  assert all(list(e['discount']) == [1] * (len(e['reward']) - 1) + [0] for e in episodes)


def test_one_hot_action_passes_index_and_rejects_non_one_hot():
  inner = FakeEnv()
  inner.act_space = types.SimpleNamespace(n=3)
  env = wrappers.OneHotAction(inner)
  assert env.act_space.shape == (3,)
  env.reset()
  env.step(np.array([0, 1, 0], np.float32))
  assert inner.actions[-1] == 1
  for bad in ([0.5, 0.5, 0], [0, 1]):
    with pytest.raises(ValueError, match='one-hot action of size 3'):
      env.step(np.array(bad, np.float32))


def test_collect_aligns_row_t_with_action_reward_and_discount_leading_to_obs_t():
  episodes = []
  env = wrappers.Collect(FakeEnv(length=3), [episodes.append])
  env.reset()
  for value in (0.1, 0.2):
    env.step(np.array([value], np.float32))
  assert episodes == []
  env.step(np.array([0.3], np.float32))
  (episode,) = episodes
  assert set(episode) == {'image', 'position', 'action', 'reward', 'discount'}
  np.testing.assert_allclose(episode['action'], [[0], [0.1], [0.2], [0.3]])
  np.testing.assert_array_equal(episode['reward'], [0, 1, 2, 3])
  np.testing.assert_array_equal(episode['discount'], [1, 1, 1, 0])
  np.testing.assert_array_equal(episode['image'][:, 0, 0, 0], [0, 1, 2, 3])
  np.testing.assert_array_equal(episode['position'][:, 1], [0, -1, -2, -3])
  assert episode['image'].dtype == np.uint8 and episode['image'].shape == (4, 4, 4, 3)
  for key in ('action', 'reward', 'discount', 'position'):
    assert episode[key].dtype == np.float32 and len(episode[key]) == 4


def test_check_task_rejects_unknown_suite_and_task_listing_paper_tasks():
  wrappers.check_task('dmc_walker_walk')
  wrappers.check_task('dmc_humanoid_walk')  # beyond the paper's list
  for task in ('dmc_walker_fly', 'gym_pong'):
    with pytest.raises(ValueError) as error:
      wrappers.check_task(task)
    message = str(error.value)
    assert repr(task) in message and "'dmc'" in message and "'atari'" in message
    assert all('dmc_' + name in message for name in wrappers.PAPER_TASKS)
  assert len(wrappers.PAPER_TASKS) == 20


def test_dmc_cartpole_in_worker_renders_images_and_ends_after_time_limit():
  ctor = functools.partial(
      wrappers.make_env, 'dmc_cartpole_balance', action_repeat=2, time_limit=20, seed=0)
  env = wrappers.Parallel(ctor, 'process')
  try:
    space = env.obs_space['image']
    assert (space.shape, space.dtype) == ((64, 64, 3), np.uint8)
    assert env.act_space.shape == (1,)
    assert (env.act_space.low, env.act_space.high) == (-1, 1)
    obs = env.reset()()
    assert obs['image'].shape == (64, 64, 3) and obs['image'].dtype == np.uint8
    assert obs['image'].std() > 0
    assert obs['position'].dtype == np.float32
    dones = []
    for _ in range(10):
      obs, reward, done, info = env.step(np.array([0.5], np.float32))()
      assert 0 <= reward <= 2 and obs['image'].std() > 0
      dones.append(done)
    assert dones == [False] * 9 + [True] and info['discount'] == 1
  finally:
    env.close()
  assert env.process.poll() is not None


@pytest.mark.usefixtures('importable_tests')
def test_none_thread_and_process_strategies_give_same_results():
  results = {}
  for isolation in ('none', 'thread', 'process'):
    env = wrappers.Parallel(functools.partial(FakeEnv, length=2), isolation)
    steps = [env.reset()()] + [env.step(np.array([0.5], np.float32))() for _ in range(2)]
    results[isolation] = (env.act_space.shape, env.obs_space['image'].shape, steps)
    env.close()
  for isolation in ('thread', 'process'):
    assert repr(results[isolation]) == repr(results['none'])


@pytest.mark.usefixtures('importable_tests')
def test_worker_exception_raises_runtime_error_with_its_traceback():
  env = wrappers.Parallel(functools.partial(FakeEnv, fail_at=2), 'process')
  try:
    env.reset()()
    env.step([0.0])()
    with pytest.raises(RuntimeError) as error:
      env.step([0.0])()
    assert 'Traceback' in str(error.value)
    assert 'ValueError: fake env failed at step 2' in str(error.value)
    assert env.reset()()['position'][0] == 0  # the worker still serves
  finally:
    env.close()


def wait_until_gone(pid, timeout):
  """Whether `pid` exits (or is a zombie) within `timeout` seconds."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    try:
      with open(f'/proc/{pid}/stat') as f:
        if f.read().rsplit(')', 1)[1].split()[0] == 'Z':
          return True
    except FileNotFoundError:
      return True
    time.sleep(0.05)
  return False


@pytest.mark.usefixtures('importable_tests')
def test_worker_ignores_sigint_and_exits_when_its_parent_dies():
  code = ('import time, wrappers, test_wrappers\n'
          'env = wrappers.Parallel(test_wrappers.FakeEnv, "process")\n'
          'print(env.process.pid, flush=True)\n'
          'time.sleep(60)\n')
  parent = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, text=True)
  try:
    worker = int(parent.stdout.readline())
    os.kill(worker, signal.SIGINT)
    assert not wait_until_gone(worker, 0.3)
  finally:
    parent.kill()
    parent.wait()
  assert wait_until_gone(worker, 5)


@pytest.mark.usefixtures('importable_tests')
def test_worker_of_a_killed_parent_exits_quietly_even_with_a_reply_unread():
  # The parent dies with the worker's reply to reset() unread, so its socket is
  # reset rather than closed: the worker must still exit 0 without a traceback.
  code = ('import time, wrappers, test_wrappers\n'
          'env = wrappers.Parallel(test_wrappers.FakeEnv, "process")\n'
          'env.reset()\n'
          'print(env.process.pid, flush=True)\n'
          'time.sleep(60)\n')
  parent = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  worker = int(parent.stdout.readline())
  time.sleep(0.5)  # The worker's reply arrives in the parent's socket.
  parent.kill()
  parent.wait()
  assert wait_until_gone(worker, 5)
  assert parent.stderr.read() == ''


@pytest.mark.usefixtures('importable_tests')
def test_killed_worker_raises_within_seconds_and_close_leaves_no_process():
  env = wrappers.Parallel(FakeEnv, 'process')
  os.kill(env.process.pid, signal.SIGKILL)
  start = time.monotonic()
  with pytest.raises(RuntimeError, match=rf'{env.process.pid} died \(exit code -9\)'):
    env.step([0.0])()
  assert time.monotonic() - start < 5
  env.close()
  assert env.process.poll() is not None


@pytest.mark.usefixtures('importable_tests')
def test_segfaulting_worker_error_mentions_mujoco_gl():
  env = wrappers.Parallel(functools.partial(FakeEnv, crash_at=1), 'process')
  env.reset()()
  with pytest.raises(RuntimeError, match='exit code -11.*MUJOCO_GL'):
    env.step([0.0])()
  env.close()


def test_unusable_renderer_error_names_mujoco_gl_and_fixes(monkeypatch):
  monkeypatch.setenv('MUJOCO_GL', 'bogus')
  with pytest.raises(RuntimeError) as error:
    wrappers.Parallel(functools.partial(wrappers.make_env, 'dmc_cartpole_balance'), 'process')
  for text in ("MUJOCO_GL='bogus'", 'libosmesa6', 'libegl1', 'display'):
    assert text in str(error.value)


def fake_collecting_env(length):
  return wrappers.Collect(FakeEnv(length=length))


def test_simulate_counts_steps_delivers_episodes_and_resumes_mid_episode():
  envs = [wrappers.Parallel(functools.partial(fake_collecting_env, length), 'none') for length in (3, 4)]
  episodes = []
  calls = []

  def policy(obs, reset, state):
    calls.append(reset.copy())
    return np.zeros((len(reset), 1), np.float32), (state or 0) + 1

  state = wrappers.simulate(policy, envs, steps=10, callbacks=[episodes.append])
  # 5 loop iterations of 2 envs; env 0 ends episodes at 3, env 1 at 4 steps.
  assert len(calls) == 5 and state[2] == 5
  assert sorted(len(e['reward']) for e in episodes) == [4, 5]
  np.testing.assert_array_equal(calls[0], [True, True])
  np.testing.assert_array_equal(calls[3], [True, False])  # Env 0 restarted.
  # Resuming continues the unfinished episodes instead of resetting them.
  wrappers.simulate(policy, envs, steps=2, state=state, callbacks=[episodes.append])
  np.testing.assert_array_equal(calls[5], [False, False])
  assert sorted(len(e['reward']) for e in episodes) == [4, 4, 5]
  wrappers.simulate(policy, envs, episodes=2, callbacks=[episodes.append])
  assert len(episodes) == 3 + 2


def test_process_envs_collect_the_same_as_in_process_envs_with_same_seeds():
  # Rendering in-process needs an interpreter without TensorFlow.
  script = '''
import functools, json, sys
import numpy as np
import wrappers
results = {}
for isolation in ('none', 'process'):
  envs = [wrappers.Parallel(functools.partial(wrappers.make_env, 'dmc_cartpole_balance', 2, 20, seed=seed), isolation) for seed in (0, 1)]
  rng = np.random.default_rng(0)
  episodes = []
  policy = lambda obs, reset, state: (rng.uniform(-1, 1, (len(reset), 1)), None)
  wrappers.simulate(policy, envs, steps=40, callbacks=[episodes.append])
  results[isolation] = [[float(e['reward'].sum()), int(e['image'].sum()), len(e['reward'])] for e in episodes]
  for env in envs:
    env.close()
print(json.dumps(results))
'''
  here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  output = subprocess.run([sys.executable, '-c', script], cwd=here, capture_output=True, text=True, timeout=120)
  assert output.returncode == 0, output.stderr
  results = json.loads(output.stdout.splitlines()[-1])
  # 40 agent steps over 2 envs = 2 episodes of 10 agent steps each per env.
  assert len(results['process']) == 4 and all(length == 11 for _, _, length in results['process'])
  assert results['process'] == results['none']


# Atari (ALGORITHM 9.2). The wrapper runs in a worker; the references are ale-py
# emulators driven directly here, without sticky actions, so they replay the
# worker's game frame by frame.

def reference_ale(game, noops=1):
  """An emulator as the worker's after reset with `noops` no-op frames."""
  import ale_py
  from ale_py import roms
  ale = ale_py.ALEInterface()
  ale.setFloat('repeat_action_probability', 0.0)
  ale.loadROM(roms.get_rom_path(game))
  ale.reset_game()
  for _ in range(noops):
    ale.act(ale_py.Action.NOOP)
  return ale


def small(frame):
  return np.asarray(Image.fromarray(frame).resize((64, 64), Image.BILINEAR))


def atari_worker(game, **kwargs):
  """The Atari wrapper in a worker, exactly 1 no-op at reset, no sticky actions."""
  return wrappers.Parallel(functools.partial(wrappers.Atari, game, noops=1, sticky=0.0, seed=0, **kwargs), 'process')


def play(reference, index, repeat=4):
  """One agent step on the reference: the frames, summed reward and lives after
  each frame."""
  action = reference.getMinimalActionSet()[index]
  frames, reward, lives = [], 0, []
  for _ in range(repeat):
    reward += reference.act(action)
    frames.append(reference.getScreenRGB())
    lives.append(reference.lives())
  return frames, reward, lives


@needs_ale
def test_check_task_knows_ale_games_and_lists_them_for_an_unknown_one():
  wrappers.check_task('atari_pong')
  wrappers.check_task('atari_boxing')
  with pytest.raises(ValueError) as error:
    wrappers.check_task('atari_pongg')
  message = str(error.value)
  assert "'atari_pongg'" in message and 'atari_pong,' in message and 'atari_breakout' in message


def test_atari_task_without_ale_py_says_how_to_install_it(monkeypatch):
  monkeypatch.setitem(sys.modules, 'ale_py', None)  # Importing it now fails.
  monkeypatch.setitem(sys.modules, 'ale_py.roms', None)
  with pytest.raises(ValueError, match=r'pip install -r requirements-atari\.txt'):
    wrappers.check_task('atari_pong')
  wrappers.check_task('dmc_walker_walk')


@needs_ale
def test_atari_in_worker_gives_64x64_images_and_takes_only_one_hot_actions():
  env = wrappers.Parallel(functools.partial(wrappers.make_env, 'atari_pong', 4, 400, seed=0), 'process')
  try:
    space = env.obs_space['image']
    assert (space.shape, space.dtype) == ((64, 64, 3), np.uint8)
    assert env.act_space.shape == (6,)  # Pong's minimal action set.
    rng = np.random.default_rng(0)
    samples = np.stack([env.act_space.sample(rng) for _ in range(600)])
    assert set(samples.sum(1)) == {1} and set(samples.ravel()) == {0, 1}
    assert (np.abs(samples.mean(0) - 1 / 6) < 4 * np.sqrt(1 / 6 * 5 / 6 / 600)).all()
    obs = env.reset()()
    assert obs['image'].shape == (64, 64, 3) and obs['image'].dtype == np.uint8
    obs, reward, done, info = env.step(np.eye(6, dtype=np.float32)[2])()
    assert obs['image'].shape == (64, 64, 3) and not done and info['discount'] == 1
    for bad in (np.full(6, 1 / 6), np.eye(4)[0], np.array(2)):
      with pytest.raises(RuntimeError, match='one-hot action of size 6'):
        env.step(np.asarray(bad, np.float32))()
  finally:
    env.close()


@needs_ale
def test_atari_image_is_max_of_last_two_raw_frames_resized_and_reward_summed():
  env = atari_worker('ms_pacman', life_done=False)
  reference = reference_ale('ms_pacman')
  try:
    np.testing.assert_array_equal(env.reset()()['image'], small(reference.getScreenRGB()))
    rng = np.random.default_rng(0)
    flicker = 0
    for _ in range(60):
      index = int(rng.integers(9))
      frames, reward, _ = play(reference, index)
      obs, got, done, _ = env.step(index)()
      expected = small(np.maximum(frames[-2], frames[-1]))
      np.testing.assert_array_equal(obs['image'], expected)
      assert got == reward and not done
      flicker += not np.array_equal(expected, small(frames[-1]))
    assert flicker > 10  # Ms. Pac-Man's ghosts flicker: the max shows what one frame misses.
  finally:
    env.close()


@needs_ale
@pytest.mark.parametrize('life_done', [True, False])
def test_atari_lost_life_ends_training_episode_with_discount_zero(life_done):
  env = atari_worker('breakout', life_done=life_done)
  reference = reference_ale('breakout')
  try:
    env.reset()()
    lives = reference.lives()
    rng = np.random.default_rng(1)
    for step in range(1000):
      index = int(rng.integers(4))
      _, _, after = play(reference, index)
      _, _, done, info = env.step(index)()
      if after[-1] < lives and life_done:  # The first life is lost in this step.
        assert done and info['discount'] == 0 and after[-1] == lives - 1
        break
      if reference.game_over():  # All lives lost: the game ends either way.
        assert not life_done and done and info['discount'] == 0
        break
      assert not done and info['discount'] == 1
    assert step > 10
  finally:
    env.close()


def short_life_breakout(min_steps):
  """Breakout as `atari_worker` builds it, whose lost lives end an episode only from
  step `min_steps` on."""
  return wrappers.MinimumLength(wrappers.Atari('breakout', noops=1, sticky=0.0, seed=0), min_steps)


def play_until_loss(reference, index, repeat=4):
  """One agent step on the reference as the Atari wrapper plays it with lost lives
  ending episodes: it stops at the frame that loses a life. Returns whether one was."""
  action, lives = reference.getMinimalActionSet()[index], reference.lives()
  for _ in range(repeat):
    reference.act(action)
    if reference.lives() < lives or reference.game_over():
      return True
  return False


@needs_ale
@pytest.mark.usefixtures('importable_tests')
def test_atari_life_lost_before_the_minimum_length_goes_on_and_the_next_one_ends_the_episode():
  reference, rng = reference_ale('breakout'), np.random.default_rng(1)
  actions = [int(rng.integers(4)) for _ in range(3000)]
  losses = [step for step, index in enumerate(actions) if play_until_loss(reference, index)][:2]
  assert len(losses) == 2 and losses[0] > 10
  env = wrappers.Parallel(functools.partial(short_life_breakout, losses[0] + 2), 'process')
  try:
    env.reset()()
    for step, index in enumerate(actions[:losses[1] + 1]):
      _, _, done, info = env.step(np.int64(index))()
      # The first loss passes with discount 1; the second is counted against the lives after it.
      assert (done, float(info['discount'])) == ((True, 0.0) if step == losses[1] else (False, 1.0)), step
  finally:
    env.close()


@needs_ale
def test_atari_reset_plays_1_to_30_random_noops():
  # Freeway's first 40 screens all differ, so the reset image tells how many
  # no-op frames were played.
  reference = reference_ale('freeway', noops=0)
  screens = [small(reference.getScreenRGB())]
  for _ in range(40):
    reference.act(reference.getMinimalActionSet()[0])
    screens.append(small(reference.getScreenRGB()))
  assert len({s.tobytes() for s in screens}) == 41
  env = wrappers.Parallel(functools.partial(wrappers.Atari, 'freeway', seed=0), 'process')
  try:
    counts = []
    for _ in range(20):
      image = env.reset()()['image']
      (count,) = [k for k, screen in enumerate(screens) if np.array_equal(screen, image)]
      counts.append(count)
  finally:
    env.close()
  assert 1 <= min(counts) and max(counts) <= 30 and len(set(counts)) > 5


@needs_ale
@pytest.mark.parametrize('sticky', [0.25, 0.0])
def test_make_ale_repeats_the_previous_action_at_the_sticky_rate(sticky):
  ale = wrappers.make_ale('breakout', seed=0) if sticky else wrappers.make_ale('breakout', 0, sticky)
  noop, _, right, left = ale.getMinimalActionSet()
  for _ in range(60):
    ale.act(noop)
  start = ale.cloneState()
  # What one frame of each action from `start` leaves in the RAM, told apart
  # on an emulator that never repeats.
  plain, outcome = wrappers.make_ale('breakout', 0, 0.0), {}
  for action in (noop, right, left):
    plain.restoreState(start)
    plain.act(action)
    outcome[action] = plain.getRAM().copy()
  assert len({ram.tobytes() for ram in outcome.values()}) == 3
  # restoreState keeps the last action the emulator ran, so asking for RIGHT and
  # LEFT in turn from `start` shows each time whether it ran the requested action
  # or repeated the previous one.
  ran, asked, repeats = noop, 0, 0
  for trial in range(4000):
    requested = (right, left)[trial % 2]
    ale.restoreState(start)
    ale.act(requested)
    previous, ran = ran, next(a for a, ram in outcome.items() if np.array_equal(ram, ale.getRAM()))
    if requested != previous:
      asked += 1
      repeats += ran == previous
  std = np.sqrt(0.25 * 0.75 / asked)  # Binomial standard deviation of the rate.
  assert asked > 3000 and abs(repeats / asked - sticky) < 4 * std
