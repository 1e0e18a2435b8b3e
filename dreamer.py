"""Dreamer (Hafner et al., ICLR 2020): the command that trains or evaluates the agent (agent.py).

Usage: python dreamer.py --logdir logdir/dmc_walker_walk/dreamer/0 --task dmc_walker_walk
"""

import argparse
import functools
import json
import os
import pathlib
import random
import subprocess
import sys
import time

import numpy as np

import tf_startup  # noqa: F401 (first: imports TensorFlow with its start-up messages filtered)
import tensorflow as tf
import tf_keras as keras

from agent import Dreamer, Policy, exploration_amount, random_policy
import configs
from logger import Logger, duration, gif
import replay
import runs
import storage
import wrappers


def episode_counter(phase, unit, total, amount, done=0):
  """A callback for finished episodes that prints how far `phase` is: `done` plus
  the `amount` of each episode, out of `total` `unit`."""
  def report(episode):
    nonlocal done
    done += amount(episode)
    print(f'{phase}: {min(done, total)}/{total} {unit}.', flush=True)
  return report


def make_envs(config, count, seed, train):
  """Training episodes last at least batch_length rows, so each holds a training
  window (wrappers.MinimumLength)."""
  ctor = functools.partial(
      wrappers.make_env, config.task, config.action_repeat, config.time_limit, train=train,
      min_rows=config.batch_length)
  return [wrappers.Parallel(functools.partial(ctor, seed=seed + i), config.parallel) for i in range(count)]


def agent_steps(config, env_steps):
  return -(-env_steps // config.action_repeat)


def setup_devices(config):
  """Mixed-precision policy and tf.distribute strategy (README, Scaling out)."""
  if 'TF_FORCE_GPU_ALLOW_GROWTH' not in os.environ:
    for gpu in tf.config.list_physical_devices('GPU'):
      tf.config.experimental.set_memory_growth(gpu, True)
  policy = {'32': 'float32', '16': 'mixed_float16', 'bf16': 'mixed_bfloat16'}[config.precision]
  keras.mixed_precision.set_global_policy(policy)
  if config.strategy == 'mirrored':
    return tf.distribute.MirroredStrategy()
  if config.strategy == 'multi_worker':
    return tf.distribute.MultiWorkerMirroredStrategy()
  return tf.distribute.get_strategy()


def worker_config(config, strategy):
  """The config of this worker of a multi-worker run: its own seed, so that its
  environments and data differ from the other workers' (README, Scaling out)."""
  resolver = strategy.cluster_resolver
  if not resolver or not resolver.task_id:
    return config
  return argparse.Namespace(**dict(vars(config), seed=config.seed + 10000 * resolver.task_id))


def seed_everything(config):
  random.seed(config.seed)
  np.random.seed(config.seed)
  tf.random.set_seed(config.seed)
  if config.deterministic:
    tf.config.experimental.enable_op_determinism()


def take_logdir(logdir):
  """Become the logdir's one writer for the rest of the process, or raise
  runs.LogdirInUse naming the live holder (README, Robustness)."""
  with storage.writing(logdir / runs.LOCK_FILE):
    stale = runs.lock_logdir(logdir)
  if stale:
    print(f'Warning: took over the lock of {logdir} from {runs.describe(stale)}, which is no longer running.', file=sys.stderr)


def run_checkpoints(logdir, agent, keep):
  """The checkpoints of a run and their counters: the env step each was saved at
  and the last period of each schedule that ran (so a resumed run keeps its
  schedules). Checkpoints of older versions may lack some counters."""
  counters = {name: tf.Variable(-1, dtype=tf.int64) for name in ('step', 'eval', 'log', 'openloop_video', 'policy_video')}
  return storage.Checkpoints(pathlib.Path(logdir) / 'checkpoints', dict(agent=agent, **counters), keep, optional=counters), counters


def commit():
  """The git commit of this code, with '+changes' if the checkout is modified."""
  root = pathlib.Path(__file__).resolve().parent
  try:
    head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=root, capture_output=True, text=True, timeout=10)
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=root, capture_output=True, text=True, timeout=10)
  except OSError:
    return 'unknown'
  if head.returncode:
    return 'unknown'
  return head.stdout.strip() + ('+changes' if dirty.stdout.strip() else '')


def evaluate(config):
  """--mode eval: noise-free episodes with the newest checkpoint's weights. Nothing
  is trained, and nothing is added to the run's episodes or metrics."""
  logdir = pathlib.Path(config.logdir).expanduser()
  seed_everything(config)
  setup_devices(config)
  envs = make_envs(config, 1, config.seed + 2000, train=False)
  try:
    agent = Dreamer(config, envs[0].act_space.shape[0])
    checkpoints, counters = run_checkpoints(logdir, agent, config.checkpoints)
    folder = checkpoints.restore()
    if not folder:
      raise RunError(f'No checkpoint in {logdir / "checkpoints"} can be restored.')
    episodes = []
    print(f'Evaluating {folder} (env step {int(counters["step"].numpy())}) for {config.eval_episodes} episodes.')
    wrappers.simulate(Policy(agent, sample=False, amount=config.eval_noise), envs, episodes=config.eval_episodes, callbacks=[episodes.append])
  finally:
    for env in envs:
      env.close()
  returns = [float(episode['reward'].sum()) for episode in episodes]
  result = dict(returns=returns, mean=float(np.mean(returns)), std=float(np.std(returns)), step=int(counters['step'].numpy()), checkpoint=folder.name)
  storage.atomic_write(logdir / 'eval.json', lambda f: f.write(json.dumps(result, indent=2).encode()))
  storage.atomic_write(logdir / 'eval.gif', lambda f: f.write(gif(episodes[0]['image'])))
  print(f'Return {result["mean"]:.1f} +- {result["std"]:.1f} over {len(returns)} episodes; wrote {logdir / "eval.json"} and {logdir / "eval.gif"}.')
  return result


def main(config):
  logdir = pathlib.Path(config.logdir).expanduser()
  take_logdir(logdir)
  if config.mode == 'eval':
    return evaluate(config)
  strategy = setup_devices(config)
  config = worker_config(config, strategy)
  seed_everything(config)
  if config.batch_size % strategy.num_replicas_in_sync:
    raise RunError(f'--batch_size {config.batch_size} must be a multiple of the {strategy.num_replicas_in_sync} '
                   'replicas the strategy trains on; change --batch_size or the devices.')
  settings = dict(vars(config), commit=commit())
  storage.atomic_write(logdir / 'config.json', lambda f: f.write(json.dumps(settings, indent=2).encode()))
  print(configs.describe_config(config, logdir / 'config.json'), flush=True)
  train_dir, test_dir = logdir / 'episodes', logdir / 'test_episodes'
  step = runs.count_steps(train_dir, config.action_repeat)
  logger = Logger(logdir, step, config.steps)

  def log_episode(prefix, directory, episode):
    logger.scalar(f'{prefix}/return', float(episode['reward'].sum()))
    logger.scalar(f'{prefix}/length', (len(episode['reward']) - 1) * config.action_repeat)
    logger.scalar(f'{prefix}/episodes', len(list(directory.glob('*.npz'))), mean=False)

  test_episodes = []
  train_callbacks = [functools.partial(storage.save_episode, train_dir), functools.partial(log_episode, 'train', train_dir)]
  test_callbacks = [functools.partial(storage.save_episode, test_dir), functools.partial(log_episode, 'test', test_dir), test_episodes.append]
  train_envs = make_envs(config, config.envs, config.seed, train=True)
  test_envs = make_envs(config, 1, config.seed + 1000, train=False)
  try:
    act_space = train_envs[0].act_space
    env_state = None
    # At least `prefill` env steps and `prefill_episodes` whole episodes.
    missing = max(0, config.prefill - step), max(0, config.prefill_episodes - len(list(train_dir.glob('*.npz'))))
    if any(missing):
      episodes = f' and at least {missing[1]} episodes' if missing[1] else ''
      print(f'Prefill dataset with {missing[0]} random env steps{episodes}.', flush=True)
      report = episode_counter('Prefill', 'env steps', config.prefill, lambda e: (len(e['reward']) - 1) * config.action_repeat, step)
      env_state = wrappers.simulate(
          random_policy(act_space, config.seed), train_envs,
          steps=agent_steps(config, missing[0]), episodes=missing[1], callbacks=train_callbacks + [report])
      step = runs.count_steps(train_dir, config.action_repeat)
    with strategy.scope():
      agent = Dreamer(config, act_space.shape[0])
    checkpoints, done_period = run_checkpoints(logdir, agent, config.checkpoints)
    restored = checkpoints.restore()
    if restored:
      print(f'Resumed from {restored} at step {step}.', flush=True)

    def save(step):
      done_period['step'].assign(step)
      checkpoints.save()

    def due(name, every, start=0):
      period = (step - start) // every
      if period > done_period[name]:
        done_period[name].assign(period)
        return True
      return False

    episodes = replay.Episodes(train_dir)
    dataset = replay.make_dataset(
        episodes, config.batch_size, config.batch_length, config.dataset_balance, config.seed,
        read_ahead=not config.deterministic)
    # Each worker reads its own episodes: no sharding across workers.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    dataset = iter(strategy.experimental_distribute_dataset(dataset.with_options(options)))
    trainer = Trainer(agent, dataset, config.nonfinite_patience)
    # A phase trains on the data so far, evaluates when due, then collects. The
    # last phase runs at the budget itself, so a budget on the evaluation grid
    # (e.g. 1.05e5) ends with an evaluation there. A checkpoint saved at this very
    # step means this step's training already ran before the run stopped.
    trained_at = int(done_period['step'].numpy()) if restored else -1
    if trained_at >= config.steps:
      print(f'The run already reached its budget of {config.steps} env steps; nothing to do.', flush=True)
      return
    while True:
      logger.step = step
      log = due('log', config.log_every)
      # Videos: the first training phase and evaluation of each video_every period.
      openloop_video = config.log_images and agent.openloop is not None and due('openloop_video', config.video_every, config.prefill)
      if step != trained_at:
        first = int(agent.updates.numpy()) == 0
        updates = config.pretrain if first else config.train_steps
        if first:
          print(f'Pretrain: {updates} updates; the first one also builds the graph.', flush=True)
        trainer.train(updates, logger, log, openloop_video)
        # Saved before evaluating and collecting, so that a kill in either loses
        # no update.
        save(step)
      # As in the authors' code, evaluate after this step's training, at prefill +
      # k * eval_every env steps: the published curves' grid.
      test_due = due('eval', config.eval_every, config.prefill)
      policy_video = test_due and config.log_images and due('policy_video', config.video_every, config.prefill)
      if test_due:
        test_episodes.clear()
        report = episode_counter('Evaluation', 'episodes', config.eval_episodes, lambda e: 1)
        wrappers.simulate(Policy(agent, sample=False, amount=config.eval_noise), test_envs, episodes=config.eval_episodes, callbacks=test_callbacks + [report])
        if policy_video:
          logger.video('test/policy', test_episodes[0]['image'])
      amount = exploration_amount(config, step, int(agent.updates.numpy()))
      if log:
        logger.scalar('train/expl_amount', amount)
      if log or test_due or openloop_video or step >= config.steps:
        logger.write(int(agent.updates.numpy()))
      if step >= config.steps:
        break
      # Do not overshoot the budget (an episode that --collect_episodes waits for may).
      collect = min(config.train_every, config.steps - step)
      env_state = wrappers.simulate(
          Policy(agent, sample=True, amount=amount), train_envs, steps=agent_steps(config, collect),
          episodes=config.collect_episodes, state=env_state, callbacks=train_callbacks)
      step = runs.count_steps(train_dir, config.action_repeat)
    save(step)  # The schedules' counters of the last phase.
  finally:
    for env in train_envs + test_envs:
      env.close()


class Trainer:
  """Runs training phases, shows how far a long one is (README, Console), and stops
  the run when an optimiser has skipped `patience` non-finite updates in a row
  (ALGORITHM 6)."""

  def __init__(self, agent, dataset, patience, out=None, clock=time.monotonic):
    self._agent = agent
    self._dataset = dataset
    self._patience = patience
    self._streak = {}
    self._out = out  # None: sys.stdout at the time of each phase.
    self._clock = clock

  def train(self, updates, logger=None, scalars=False, video=False):
    """`updates` updates; to `logger` their metrics if `scalars`, the open-loop
    video of the first batch if `video`."""
    progress = PhaseProgress(updates, self._out or sys.stdout, self._clock)
    try:
      for i in range(updates):
        batch = next(self._dataset)
        metrics = self._agent.train(batch)
        self._check(metrics)
        if scalars:
          for name, value in metrics.items():
            logger.scalar(f'train/{name}', value)
        if i == 0 and video:
          logger.video('train/openloop', self._agent.openloop(batch))
        progress.update(i + 1)
    finally:
      progress.end()
    if scalars:
      logger.scalar('train/updates', int(self._agent.updates.numpy()), mean=False)

  def _check(self, metrics):
    for name in ('model', 'actor', 'value'):
      if f'{name}_skipped' not in metrics:
        continue
      skipped = float(metrics[f'{name}_skipped'])
      self._streak[name] = self._streak.get(name, 0) + 1 if skipped else 0
      if self._streak[name] >= self._patience:
        raise NonFiniteError(
            f'The {name} loss or its gradient was not finite for {self._patience} updates in a row '
            f'(last {name}_loss: {float(metrics.get(f"{name}_loss", float("nan")))}); stopping. '
            'The checkpoints hold the last good weights; lower the learning rate or check the data.')


class PhaseProgress:
  """How far one training phase is, once it has run for `AFTER` seconds: updates
  done, seconds per update and the phase's ETA. On a terminal one line rewritten in
  place every `EVERY['terminal']` seconds, otherwise (a log file) a plain line every
  `EVERY['plain']` seconds; a closing line when the phase ends. The rate leaves out
  the phase's first update, which may build the graph. Costs one clock read per
  update."""

  AFTER = 30.0
  EVERY = dict(terminal=1.0, plain=60.0)

  def __init__(self, total, out, clock):
    self._total, self._out, self._clock = total, out, clock
    self._start = clock()
    self._first = None  # When the first update ended.
    self._shown = None  # When a line was last written; None before the first.
    try:
      self._terminal = out.isatty()
    except (AttributeError, ValueError):  # No isatty, or a closed stream.
      self._terminal = False

  def update(self, done):
    now = self._clock()
    if done == 1:
      self._first = now
    last = done >= self._total
    if now - self._start < self.AFTER:
      return
    every = self.EVERY['terminal' if self._terminal else 'plain']
    if not last and self._shown is not None and now - self._shown < every:
      return
    rate = (now - self._first) / (done - 1) if done > 1 else now - self._start
    line = f'Training: {done}/{self._total} updates, {rate:.2f} s/update, '
    if last:
      line += f'phase took {duration(now - self._start)}'
    else:
      line += f'phase ETA {duration((self._total - done) * rate)}'
    self._out.write(f'\r{line}\x1b[K' if self._terminal else line + '\n')
    self._out.flush()
    self._shown = now

  def end(self):
    """Ends the terminal's line, also when the phase stopped early."""
    if self._terminal and self._shown is not None:
      self._out.write('\n')
      self._out.flush()


class RunError(RuntimeError):
  """Stops the run with a message for the user instead of a traceback."""


class NonFiniteError(RunError):
  pass


# Errors that end a run with one line instead of a traceback, and their exit codes
# (README, Robustness). Bad flags exit 2 through argparse.
EXIT_CODES = {runs.LogdirInUse: 2, storage.WriteError: 3, RunError: 1}


if __name__ == '__main__':
  try:
    main(configs.parse_args())
  except tuple(EXIT_CODES) as e:
    if os.environ.get('DREAMER_TRACEBACK') == '1':
      raise
    print(f'Error: {e}', file=sys.stderr)
    sys.exit(next(code for kind, code in EXIT_CODES.items() if isinstance(e, kind)))
