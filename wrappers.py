"""Environments for Dreamer: DeepMind Control Suite, Atari, wrappers, and workers.

This module never imports TensorFlow: MuJoCo's renderer crashes in a process
that has loaded TensorFlow, so the trainer runs its environments in fresh
interpreters started by `Parallel(ctor, 'process')`.
"""

import atexit
import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import traceback
from multiprocessing.connection import Connection

import numpy as np
from PIL import Image

os.environ.setdefault('MUJOCO_GL', 'egl')
_FILE = os.path.abspath(__file__)

PAPER_TASKS = (
    'acrobot_swingup', 'cartpole_balance', 'cartpole_balance_sparse',
    'cartpole_swingup', 'cartpole_swingup_sparse', 'cheetah_run', 'cup_catch',
    'finger_spin', 'finger_turn_easy', 'finger_turn_hard', 'hopper_hop',
    'hopper_stand', 'pendulum_swingup', 'quadruped_run', 'quadruped_walk',
    'reacher_easy', 'reacher_hard', 'walker_run', 'walker_stand', 'walker_walk')

GL_HINT = (
    'MuJoCo could not render with MUJOCO_GL={!r}. Fixes: MUJOCO_GL=egl needs '
    'libEGL with Mesa (Debian: apt-get install libegl1 libegl-mesa0 '
    'libgl1-mesa-dri); MUJOCO_GL=osmesa needs the Debian package libosmesa6; '
    'MUJOCO_GL=glfw needs a display.')


def _gl_error(error):
  hint = GL_HINT.format(os.environ.get('MUJOCO_GL'))
  return RuntimeError(f'{type(error).__name__}: {error}\n{hint}')


class Box:
  """A box-shaped space: arrays of `shape` and `dtype` in [low, high]."""

  def __init__(self, low, high, shape=None, dtype=np.float32):
    if shape is None:
      shape = np.broadcast_shapes(np.shape(low), np.shape(high))
    self.shape = tuple(shape)
    self.dtype = np.dtype(dtype)
    self.low = np.full(self.shape, low, self.dtype)
    self.high = np.full(self.shape, high, self.dtype)

  def sample(self, rng):
    if np.issubdtype(self.dtype, np.integer):
      return rng.integers(
          self.low, self.high, self.shape, self.dtype, endpoint=True)
    return rng.uniform(self.low, self.high, self.shape).astype(self.dtype)

  def __repr__(self):
    return f'Box({self.low.min()}, {self.high.max()}, {self.shape}, {self.dtype})'


def dmc_tasks():
  """Map names like 'walker_walk' (and 'cup_catch') to dm_control's pairs."""
  try:
    from dm_control import suite
  except Exception as e:
    raise _gl_error(e) from e
  tasks = {f'{domain}_{task}': (domain, task)
           for domain, task in suite.ALL_TASKS}
  tasks.update({f'cup_{task}': (domain, task)
                for domain, task in suite.ALL_TASKS if domain == 'ball_in_cup'})
  return tasks


def _task_error(task):
  return ValueError(
      f"Unknown task {task!r}. Tasks are named 'dmc_<domain>_<task>' (suite "
      "'dmc' with any DeepMind Control Suite task) or 'atari_<game>' (suite "
      "'atari', a game ale-py ships); the paper's 20 tasks are: "
      + ', '.join('dmc_' + name for name in PAPER_TASKS) + '.')


def atari_games():
  """The games whose ROMs ale-py ships, as used in 'atari_<game>'."""
  try:
    from ale_py import roms
  except ImportError:
    raise ValueError('Atari tasks need the optional ale-py package: '
                     'pip install -r requirements-atari.txt') from None
  return roms.get_all_rom_ids()


def check_task(task):
  """Raise the ValueError of `make_env` for an unknown task, without MuJoCo.

  Task names beyond the paper's are looked up in a fresh interpreter, since
  importing dm_control next to TensorFlow crashes the process at exit.
  """
  suite, _, name = task.partition('_')
  if suite == 'dmc' and name in PAPER_TASKS:
    return
  if suite == 'atari':
    games = atari_games()
    if name in games:
      return
    raise ValueError(f'Unknown Atari game in task {task!r}; ale-py ships: '
                     + ', '.join('atari_' + game for game in games) + '.')
  if suite == 'dmc':
    listing = subprocess.run(
        [sys.executable, _FILE, '--tasks'], capture_output=True, text=True)
    if listing.returncode:
      raise RuntimeError(f'Could not list dm_control tasks:\n{listing.stderr}')
    if name in listing.stdout.split():
      return
  raise _task_error(task)


class DeepMindControl:
  """A dm_control suite task. Its observations are the task's own; `render()`
  draws the camera image, which `RenderImage` adds once per agent step."""

  def __init__(self, name, size=(64, 64), seed=None):
    tasks = dmc_tasks()
    if name not in tasks:
      raise _task_error('dmc_' + name)
    from dm_control import suite
    domain, task = tasks[name]
    self._env = suite.load(domain, task, task_kwargs={'random': seed})
    self._size = tuple(size)
    self._camera = 2 if domain == 'quadruped' else 0
    self.image_space = Box(0, 255, self._size + (3,), np.uint8)
    try:
      self.render()
    except Exception as e:
      raise _gl_error(e) from e

  @property
  def obs_space(self):
    return {key: Box(-np.inf, np.inf, (int(np.prod(spec.shape)),))
            for key, spec in self._env.observation_spec().items()}

  @property
  def act_space(self):
    spec = self._env.action_spec()
    return Box(spec.minimum, spec.maximum, spec.shape)

  def reset(self):
    return self._obs(self._env.reset())

  def step(self, action):
    time_step = self._env.step(action)
    reward = float(time_step.reward or 0.0)
    info = {'discount': np.array(time_step.discount, np.float32)}
    return self._obs(time_step), reward, time_step.last(), info

  def _obs(self, time_step):
    return {key: np.array(value, np.float32).reshape(-1)
            for key, value in time_step.observation.items()}

  def render(self):
    return self._env.physics.render(*self._size, camera_id=self._camera)


# The emulator's episode cap: 30 minutes of play at 60 frames per second.
ATARI_MAX_FRAMES = 108000


def make_ale(game, seed, sticky=0.25):
  """An ale-py emulator of `game` (ROMs ship with ale-py). With probability
  `sticky` each frame repeats the previous frame's action instead of the
  requested one (ALE's repeat_action_probability, Machado et al. 2018)."""
  check_task('atari_' + game)
  import ale_py
  from ale_py import roms
  ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)  # No banner.
  ale = ale_py.ALEInterface()
  ale.setInt('random_seed', seed)
  ale.setFloat('repeat_action_probability', sticky)
  ale.setInt('max_num_frames_per_episode', ATARI_MAX_FRAMES)
  ale.loadROM(roms.get_rom_path(game))
  return ale


class Discrete:
  """A space of `n` choices, the integers 0 to n - 1."""

  def __init__(self, n):
    self.n = n


class Atari:
  """An Atari game as in the paper's appendix (ALGORITHM 9.2): sticky actions, each
  action held for `action_repeat` frames with the image the pixel-wise max of
  the last two (Atari sprites flicker between frames), resized to `size` RGB,
  1 to `noops` (at least 1) random no-op frames after every reset, and the
  emulator's episode cap. With `life_done`, losing a life ends the episode with
  discount 0 (the loss of each step is against the lives before it, so a loss that
  a `MinimumLength` wrapper lets pass is not counted again); as in the authors'
  code, every reset then starts a new game."""

  def __init__(self, game, action_repeat=4, size=(64, 64), noops=30,
               life_done=True, sticky=0.25, seed=None):
    self._rng = np.random.default_rng(seed)
    self._ale = make_ale(game, int(self._rng.integers(2 ** 31)), sticky)
    self._actions = self._ale.getMinimalActionSet()
    self._repeat = action_repeat
    self._size = tuple(size)
    self._noops = noops
    self._life_done = life_done
    self._lives = None
    self.act_space = Discrete(len(self._actions))
    self.obs_space = {'image': Box(0, 255, self._size + (3,), np.uint8)}

  def reset(self):
    self._ale.reset_game()
    for _ in range(self._rng.integers(1, self._noops + 1)):
      self._ale.act(self._actions[0])  # The minimal action set starts with NOOP.
      if self._ale.game_over():
        self._ale.reset_game()
    self._lives = self._ale.lives()
    return self._obs([self._ale.getScreenRGB()])

  def step(self, action):
    reward, screens, lives, life_lost = 0.0, [], self._lives, False
    for _ in range(self._repeat):
      reward += self._ale.act(self._actions[action])
      screens = screens[-1:] + [self._ale.getScreenRGB()]
      life_lost = self._life_done and self._ale.lives() < lives
      if self._ale.game_over() or life_lost:
        break
    self._lives = self._ale.lives()
    terminal = self._ale.game_over(with_truncation=False) or life_lost
    done = terminal or self._ale.game_truncated()
    info = {'discount': np.array(0.0 if terminal else 1.0, np.float32)}
    return self._obs(screens), reward, done, info

  def _obs(self, screens):
    image = Image.fromarray(np.max(screens, 0)).resize(self._size[::-1], Image.BILINEAR)
    return {'image': np.asarray(image)}


class Wrapper:
  """Forwards everything it does not override to the wrapped env."""

  def __init__(self, env):
    self._env = env

  def __getattr__(self, name):
    if name.startswith('_'):
      raise AttributeError(name)
    return getattr(self._env, name)


class ActionRepeat(Wrapper):

  def __init__(self, env, amount):
    super().__init__(env)
    self._amount = amount

  def step(self, action):
    total = 0.0
    for _ in range(self._amount):
      obs, reward, done, info = self._env.step(action)
      total += reward
      if done:
        break
    return obs, total, done, info


class RenderImage(Wrapper):
  """Adds obs['image'] = env.render(). Placed after ActionRepeat, it renders only
  the frame the agent sees, not the repeated steps in between."""

  @property
  def obs_space(self):
    return {**self._env.obs_space, 'image': self._env.image_space}

  def reset(self):
    return {**self._env.reset(), 'image': self._env.render()}

  def step(self, action):
    obs, reward, done, info = self._env.step(action)
    return {**obs, 'image': self._env.render()}, reward, done, info


class NormalizeActions(Wrapper):
  """Actions in [-1, 1] on every dimension whose bounds are finite."""

  def __init__(self, env):
    super().__init__(env)
    space = env.act_space
    self._mask = np.isfinite(space.low) & np.isfinite(space.high)
    self._low = np.where(self._mask, space.low, -1)
    self._high = np.where(self._mask, space.high, 1)
    self.act_space = Box(
        np.where(self._mask, -1, space.low), np.where(self._mask, 1, space.high),
        space.shape, space.dtype)

  def step(self, action):
    scaled = self._low + (np.asarray(action) + 1) / 2 * (self._high - self._low)
    return self._env.step(np.where(self._mask, scaled, action).astype(self.act_space.dtype))


class MinimumLength(Wrapper):
  """Ignores the end of an episode before its `steps`-th step (the discount stays 1),
  so that every stored episode holds a training window of steps + 1 rows and its
  terminal can be sampled. The authors' TF1 code does this for the first 50 steps,
  its batch size and sequence length (control/wrappers.py, MinimumDuration)."""

  def __init__(self, env, steps):
    super().__init__(env)
    self._steps = steps
    self._step = None

  def reset(self):
    self._step = 0
    return self._env.reset()

  def step(self, action):
    obs, reward, done, info = self._env.step(action)
    self._step += 1
    if done and self._step < self._steps:
      done, info = False, {**info, 'discount': np.array(1.0, np.float32)}
    return obs, reward, done, info


class TimeLimit(Wrapper):
  """Ends episodes after `duration` steps; the time-out keeps the discount."""

  def __init__(self, env, duration):
    super().__init__(env)
    self._duration = duration
    self._step = None

  def reset(self):
    self._step = 0
    return self._env.reset()

  def step(self, action):
    if self._step is None:
      raise RuntimeError('The episode has ended: call reset() before step().')
    obs, reward, done, info = self._env.step(action)
    self._step += 1
    done = done or self._step >= self._duration
    if done:
      self._step = None
    return obs, reward, done, info


class OneHot(Box):
  """One-hot vectors of size `n`; samples are uniformly chosen one-hot vectors."""

  def __init__(self, n):
    super().__init__(0, 1, (n,))
    self.n = n

  def sample(self, rng):
    return np.eye(self.n, dtype=self.dtype)[rng.integers(self.n)]


class OneHotAction(Wrapper):
  """Takes one-hot vectors for an env whose act_space has `n` choices."""

  def __init__(self, env):
    super().__init__(env)
    self._n = env.act_space.n
    self.act_space = OneHot(self._n)

  def step(self, action):
    index = int(np.argmax(action))
    if np.shape(action) != (self._n,) or not np.allclose(
        action, np.eye(self._n)[index]):
      raise ValueError(f'Expected a one-hot action of size {self._n}, got {action}.')
    return self._env.step(index)


class Collect(Wrapper):
  """Records the episode; when it ends, passes it to each callback and returns it
  as info['episode'] (so a worker process hands it to the trainer).

  Row t holds obs t, the action that led to it, the reward received on
  arriving there and the discount; row 0 has a zero action and reward 0.
  """

  def __init__(self, env, callbacks=()):
    super().__init__(env)
    self._callbacks = callbacks
    self._rows = None

  def reset(self):
    obs = self._env.reset()
    action = np.zeros(self._env.act_space.shape, np.float32)
    self._rows = [{**obs, 'action': action, 'reward': 0.0, 'discount': 1.0}]
    return obs

  def step(self, action):
    obs, reward, done, info = self._env.step(action)
    self._rows.append({**obs, 'action': np.array(action), 'reward': reward,
                       'discount': info['discount']})
    if done:
      episode = {key: self._stack([row[key] for row in self._rows])
                 for key in self._rows[0]}
      for callback in self._callbacks:
        callback(episode)
      info = {**info, 'episode': episode}
    return obs, reward, done, info

  def _stack(self, values):
    values = np.array(values)
    if np.issubdtype(values.dtype, np.floating):
      return values.astype(np.float32)
    return values


def make_env(task, action_repeat=2, time_limit=1000, size=(64, 64), seed=None, train=True, min_rows=0):
  """Builds 'dmc_<domain>_<task>' or 'atari_<game>' with the paper's wrappers.
  A lost Atari life ends only training episodes (ALGORITHM 9.2); evaluation plays
  whole games. Training episodes last at least `min_rows` rows (`MinimumLength`)."""
  suite, _, name = task.partition('_')
  if suite == 'dmc':
    env = DeepMindControl(name, size, seed=seed)
    env = RenderImage(ActionRepeat(env, action_repeat))
    env = NormalizeActions(env)
  elif suite == 'atari':
    env = OneHotAction(Atari(name, action_repeat, size, life_done=train, seed=seed))
  else:
    raise _task_error(task)
  if train and min_rows > 1:
    env = MinimumLength(env, min_rows - 1)
  env = TimeLimit(env, time_limit // action_repeat)
  return Collect(env)


def _apply(env, name, args):
  value = getattr(env, name)
  return value if args is None else value(*args)


class Parallel:
  """Runs the env from `ctor()` in-process ('none'), on its own thread
  ('thread') or in a fresh interpreter ('process'). step() and reset()
  return promises; resolve each one before making the next call."""

  def __init__(self, ctor, isolation):
    self.process = None
    self._pool = None
    if isolation == 'none':
      self._env = ctor()
    elif isolation == 'thread':
      self._pool = concurrent.futures.ThreadPoolExecutor(1)
      self._env = self._pool.submit(ctor).result()
    elif isolation == 'process':
      self._start(ctor)
    else:
      raise ValueError(f"Unknown isolation {isolation!r}: use 'none', 'thread' or 'process'.")
    self.obs_space = self._call('obs_space')()
    self.act_space = self._call('act_space')()

  def step(self, action):
    return self._call('step', (action,))

  def reset(self):
    return self._call('reset', ())

  def close(self):
    if self._pool:
      self._pool.shutdown()
    if self.process:
      _WORKERS.discard(self)
      if self.process.poll() is None:
        try:
          self._conn.send(('close', None))
          self.process.wait(5)
        except (OSError, subprocess.TimeoutExpired):
          self.process.kill()
          self.process.wait()
      self._conn.close()

  def _call(self, name, args=None):
    if self.process:
      self._send((name, args))
      return self._receive
    if self._pool:
      return self._pool.submit(_apply, self._env, name, args).result
    result = _apply(self._env, name, args)
    return lambda: result

  def _start(self, ctor):
    ours, theirs = socket.socketpair()
    self.process = subprocess.Popen(
        [sys.executable, _FILE, '--worker', str(theirs.fileno())],
        pass_fds=(theirs.fileno(),))
    theirs.close()
    self._conn = Connection(ours.detach())
    _WORKERS.add(self)
    try:
      self._send(('init', ctor))
      self._receive()
    except BaseException:
      self.close()
      raise

  def _send(self, message):
    try:
      self._conn.send(message)
    except (BrokenPipeError, ConnectionResetError):
      raise self._died() from None

  def _receive(self):
    while not self._conn.poll(0.5):
      if self.process.poll() is not None:
        raise self._died()
    try:
      status, payload = self._conn.recv()
    except (EOFError, ConnectionResetError):
      raise self._died() from None
    if status == 'error':
      raise RuntimeError(
          f'Environment worker {self.process.pid} failed:\n{payload}')
    return payload

  def _died(self):
    try:
      code = self.process.wait(5)
    except subprocess.TimeoutExpired:
      code = None
    message = f'Environment worker process {self.process.pid} died (exit code {code}).'
    if code in (-signal.SIGSEGV, 128 + signal.SIGSEGV):
      message += ' A segfault here usually comes from the renderer: ' + GL_HINT.format(
          os.environ.get('MUJOCO_GL'))
    return RuntimeError(message)


def simulate(policy, envs, steps=0, episodes=0, state=None, callbacks=()):
  """Drive a batch of environments with `policy(obs, reset, agent_state) ->
  (actions, agent_state)` for `steps` agent steps or `episodes` episodes.
  Finished episodes (from info['episode']) go to each callback. Returns a state to
  resume from: envs that were mid-episode continue where they stopped."""
  if state is None:
    done = np.ones(len(envs), bool)
    obs = [None] * len(envs)
    agent_state = None
  else:
    done, obs, agent_state = state
  step, episode = 0, 0
  while (steps and step < steps) or (episodes and episode < episodes):
    resets = {i: envs[i].reset() for i in np.flatnonzero(done)}
    for i, promise in resets.items():
      obs[i] = promise()
    batch = {key: np.stack([o[key] for o in obs]) for key in obs[0]}
    actions, agent_state = policy(batch, done, agent_state)
    results = [promise() for promise in [e.step(a) for e, a in zip(envs, actions)]]
    obs, _, done, infos = map(list, zip(*results))
    done = np.array(done, bool)
    for info in infos:
      if 'episode' in info:
        for callback in callbacks:
          callback(info['episode'])
    step += len(envs)
    episode += int(done.sum())
  return done, obs, agent_state


_WORKERS = set()
atexit.register(lambda: [worker.close() for worker in list(_WORKERS)])


def _serve(conn):
  """Worker loop: builds the env on 'init', then answers (name, args) calls
  until 'close' or until the parent's end of the socket closes (EOF) or is reset
  (the parent was killed)."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  env = None
  while True:
    try:
      name, args = conn.recv()
    except (EOFError, ConnectionResetError):
      return
    if name == 'close':
      return
    try:
      if name == 'init':
        env, result = args(), None
      else:
        result = _apply(env, name, args)
      conn.send(('ok', result))
    except Exception:
      conn.send(('error', traceback.format_exc()))


if __name__ == '__main__':
  if sys.argv[1] == '--worker':
    _serve(Connection(int(sys.argv[2])))
  elif sys.argv[1] == '--tasks':
    print(*dmc_tasks())
