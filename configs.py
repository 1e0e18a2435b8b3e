"""The settings of a Dreamer run: every default, the presets, the command line of
dreamer.py and its checks.

Usage: python dreamer.py --logdir logdir/dmc_walker_walk/dreamer/0 --task dmc_walker_walk
"""

import argparse
import json
import pathlib
import tempfile
import textwrap

import runs
import wrappers

# Every setting with its default (ALGORITHM 11.1). The command line is generated from it.
DEFAULTS = dict(
    # Run.
    logdir='', mode='train', task='dmc_walker_walk', seed=0, steps=int(5e6), eval_every=int(1e4),
    log_every=int(1e3), eval_episodes=1, log_images=True, video_every=int(5e4), checkpoints=3,
    deterministic=False,
    nonfinite_patience=10, precision='32', strategy='default',
    # Environment.
    envs=1, parallel='process', action_repeat=2, time_limit=1000, prefill=5000,
    prefill_episodes=0, clip_rewards='none',
    # World model.
    deter_size=200, stoch_size=30, num_units=400, cnn_depth=32, dense_act='elu',
    cnn_act='relu', pcont=False, free_nats=3.0, free_nats_per_step=False,
    kl_scale=1.0, pcont_scale=10.0, batch_noise='independent', objective='reconstruction',
    layer_impl='keras',
    # Optimisation and data.
    batch_size=50, batch_length=50, train_every=1000, collect_episodes=0, train_steps=100, pretrain=100,
    model_lr=6e-4, value_lr=8e-5, actor_lr=8e-5, adam_epsilon=1e-7, grad_clip=100.0,
    weight_decay=0.0, weight_decay_pattern=r'.*', dataset_balance=False,
    # Behavior.
    behavior='dreamer', discount=0.99, disclam=0.95, horizon=15,
    planet_horizon=12, planet_iterations=10, planet_candidates=1000, planet_top=100,
    action_dist='tanh_normal', action_init_std=5.0, expl='additive_gaussian',
    expl_amount=0.3, expl_schedule='half_life', expl_decay=0.0, expl_min=0.0, eval_noise=0.0,
)

# One short description per setting: the --help text and the README's flag table.
HELP = dict(
    logdir='folder of the run: episodes, checkpoints, config and metrics',
    mode='train, or eval: play episodes with the newest checkpoint, train nothing',
    task="dmc_DOMAIN_TASK ('cup' means ball_in_cup) or atari_GAME",
    seed='random seed of the agent and the environments',
    steps='env steps to collect in all',
    eval_every='env steps between evaluations',
    eval_episodes='noise-free test episodes averaged per evaluation',
    log_every='env steps between logged scalars',
    log_images='write prediction and episode GIFs',
    video_every='env steps between GIFs',
    checkpoints='checkpoints to keep',
    deterministic='seed everything and use op determinism: repeated runs write the same metrics',
    nonfinite_patience='non-finite updates in a row after which the run stops',
    precision='compute precision: 32, 16 (mixed float16) or bf16',
    strategy='tf.distribute strategy: default (one device), mirrored or multi_worker',
    envs='training environments stepped together',
    parallel='where each environment runs: its own process, a thread, or none (in line)',
    action_repeat='env steps per agent action',
    time_limit='env steps per episode',
    prefill='env steps of random actions before training',
    prefill_episodes='and at least this many whole random episodes',
    clip_rewards='training reward squashing: none or tanh',
    deter_size='deterministic (GRU) state size',
    stoch_size='stochastic state size',
    num_units='width of the dense heads',
    cnn_depth='channels of the first convolution (then x2, x4, x8)',
    dense_act='activation of the dense layers',
    cnn_act='activation of the convolutions',
    pcont='learn a continuation (discount) head',
    free_nats='KL below this many nats is not penalised',
    free_nats_per_step='clip the KL per time step before averaging (TF1 code)',
    kl_scale='weight of the KL term',
    pcont_scale='weight of the continuation log-likelihood',
    batch_noise="RSSM noise: independent per sequence, or shared by the batch (TF2 code)",
    objective='what the world model learns from images',
    layer_impl='keras layers as the authors build them, or fast: the same math for CPUs',
    batch_size='sequences per batch',
    batch_length='steps per sequence',
    train_every='env steps collected between training phases',
    collect_episodes='and at least this many whole episodes finished between phases',
    train_steps='updates per training phase',
    pretrain='updates in the first training phase',
    model_lr='world-model learning rate',
    value_lr='value learning rate',
    actor_lr='actor learning rate',
    adam_epsilon="Adam's epsilon",
    grad_clip='global gradient-norm clip',
    weight_decay='decoupled weight decay',
    weight_decay_pattern='regex of the variable names weight decay applies to',
    dataset_balance='bias sampled windows towards episode ends',
    behavior='how actions are learned: dreamer, no_value, or planet (online planning)',
    discount='discount gamma',
    disclam='lambda of the lambda-returns',
    horizon='imagination horizon',
    planet_horizon='planning horizon of planet',
    planet_iterations='CEM iterations of planet',
    planet_candidates='action sequences per CEM iteration',
    planet_top='best candidates refit per CEM iteration',
    action_dist='actor distribution: tanh_normal, or onehot / onehot_score (discrete)',
    action_init_std="actor's initial std",
    expl='exploration while collecting',
    expl_amount='exploration noise std or epsilon',
    expl_schedule='half_life: expl_decay is a half-life in env steps; linear: over expl_decay updates',
    expl_decay='exploration decay (0: none)',
    expl_min='exploration floor',
    eval_noise='exploration noise during evaluation',
)

# Named overrides, applied in order by --configs.
PRESETS = dict(
    # The whole loop in about a minute on 2 CPU cores.
    debug=dict(
        steps=800, prefill=200, time_limit=100, train_every=200, train_steps=3,
        pretrain=5, eval_every=400, log_every=200, batch_size=4, batch_length=10,
        deter_size=16, stoch_size=4, num_units=16, cnn_depth=4, horizon=4),
    # Sized for 2 CPU cores: 1e5 env steps in about 75 minutes, the paper's
    # schedule ratios, latent sizes and horizon kept (README, Learning check),
    # with the layers reformulated for CPU speed (models.LAYERS).
    cpu=dict(cnn_depth=16, num_units=200, batch_size=10, layer_impl='fast'),
    # The behavior of the authors' TF2 code, behind the published curves (README,
    # Code behind the published curves): one RSSM noise vector per step for the
    # whole batch (ALGORITHM 2.5), and a first training phase of 101 updates (their
    # constructor trains once to build the optimiser, then pretrains 100).
    tf2_code=dict(batch_noise='shared', pretrain=101),
    # The authors' TF1 code, behind the paper's numbers: free nats clipped per step
    # (ALGORITHM 3.2) and Adam epsilon 1e-4 (ALGORITHM 6).
    tf1_code=dict(free_nats_per_step=True, adam_epsilon=1e-4),
    # Atari (ALGORITHM 9.2; README, Atari): action repeat 4, episodes up to the emulator's
    # cap of 108000 frames, the continuation head for lost lives (ALGORITHM 2.4, 4.1), KL
    # scale 0.1, horizon 10, tanh-squashed training rewards, a one-hot actor
    # (ALGORITHM 5.2) and epsilon-greedy exploration. As the authors' TF1 code runs Atari
    # (scripts/configs.py, discrete and pcont; tools/schedule.py, linear): 100
    # updates per collection of at least 500 agent steps and one whole episode, a
    # prefill of at least 5 episodes and 2500 agent steps, the continuation loss
    # unscaled, and epsilon falling linearly from 0.4 to 0.1 over 1.5e5 updates.
    atari=dict(
        action_repeat=4, time_limit=wrappers.ATARI_MAX_FRAMES, pcont=True, kl_scale=0.1,
        horizon=10, clip_rewards='tanh', action_dist='onehot', expl='epsilon_greedy',
        train_every=2000, collect_episodes=1, prefill=10000, prefill_episodes=5, pcont_scale=1.0,
        expl_amount=0.4, expl_schedule='linear', expl_decay=1.5e5, expl_min=0.1),
)

CHOICES = dict(
    mode=('train', 'eval'), precision=('32', '16', 'bf16'), batch_noise=('independent', 'shared'), strategy=('default', 'mirrored', 'multi_worker'),
    objective=('reconstruction', 'contrastive', 'contrastive_tf1', 'reward'), behavior=('dreamer', 'no_value', 'planet'),
    layer_impl=('keras', 'fast'),
    parallel=('none', 'thread', 'process'), clip_rewards=('none', 'tanh'),
    dense_act=('elu', 'relu'), cnn_act=('relu', 'elu'),
    action_dist=('tanh_normal', 'onehot', 'onehot_score'), expl_schedule=('half_life', 'linear'),
    expl=('additive_gaussian', 'epsilon_greedy', 'completely_random'))


def describe_config(config, saved):
  """The run's settings for the console: what differs from the defaults, the rest
  in `saved`."""
  changed = [f'{key} {value}' for key, value in vars(config).items() if key != 'configs' and value != DEFAULTS[key]]
  lines = [f'Config (all of it in {saved}; presets: {" ".join(config.configs) or "none"}); not at the default:']
  lines += textwrap.wrap(', '.join(changed) or 'nothing', 100, initial_indent='  ', subsequent_indent='  ')
  return '\n'.join(lines)


def to_int(text):
  """Integers may be written like 1e5."""
  value = float(text)
  if not value.is_integer():
    raise ValueError(text)
  return int(value)


def to_bool(text):
  if text not in ('True', 'False'):
    raise ValueError(text)
  return text == 'True'


def build_parser(argv=None, exit_on_error=True):
  """The command line of dreamer.py: one flag per setting of DEFAULTS, defaulting
  to the values of the presets that `argv` names in --configs (for --mode eval,
  to the run's saved settings first). scripts/sweep.py checks its flags with it."""
  presets = argparse.ArgumentParser(add_help=False, exit_on_error=exit_on_error)
  presets.add_argument('--configs', nargs='+', default=[], choices=sorted(PRESETS))
  known, _ = presets.parse_known_args(argv)
  run = argparse.ArgumentParser(add_help=False)
  run.add_argument('--mode', default=DEFAULTS['mode'])
  run.add_argument('--logdir', default=DEFAULTS['logdir'])
  where, _ = run.parse_known_args(argv)
  defaults = dict(DEFAULTS)
  if where.mode == 'eval':  # The run's own settings; flags given now still win.
    saved = runs.read_config(pathlib.Path(where.logdir).expanduser())
    defaults.update({k: v for k, v in saved.items() if k in DEFAULTS and k not in ('mode', 'logdir')})
  for name in known.configs:
    defaults.update(PRESETS[name])
  parser = argparse.ArgumentParser(description=__doc__, parents=[presets], formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                   exit_on_error=exit_on_error)
  types = {bool: to_bool, int: to_int, float: float, str: str}
  for key, value in defaults.items():
    parser.add_argument(f'--{key}', type=types[type(DEFAULTS[key])], default=value, choices=CHOICES.get(key), help=HELP[key])
  return parser


def flag_table():
  """The README's flag table, from DEFAULTS, HELP and CHOICES."""
  choices = {key: f' ({", ".join(values)})' for key, values in CHOICES.items()}
  rows = [f'| `{key}` | {DEFAULTS[key]!r} | {HELP[key]}{choices.get(key, "")} |' for key in DEFAULTS]
  return '\n'.join(['| flag | default | what it sets |', '|---|---|---|'] + rows)


def parse_args(argv=None):
  parser = build_parser(argv)
  config = parser.parse_args(argv)
  error = validate(config)
  if error:
    parser.error(error)
  return config


def validate(config):
  """The first problem with the configuration, as one sentence, or None."""
  if not config.logdir:
    return 'Set --logdir, the folder for episodes, checkpoints and logs.'
  if config.mode == 'eval' and not runs.read_config(pathlib.Path(config.logdir).expanduser()):
    return f'--mode eval needs a trained run, but {config.logdir} holds no readable config.json.'
  import storage  # TensorFlow: only this check needs it, so the sweep reads flags without it.
  if config.mode == 'eval' and not storage.Checkpoints(pathlib.Path(config.logdir).expanduser() / 'checkpoints', None, 1).saved():
    return f'{config.logdir} holds no checkpoint to evaluate yet; train it first (--mode train).'
  try:
    wrappers.check_task(config.task)
  except ValueError as e:
    return str(e)
  sizes = ('steps', 'eval_every', 'eval_episodes', 'log_every', 'video_every', 'envs', 'action_repeat', 'time_limit', 'deter_size', 'stoch_size', 'num_units', 'cnn_depth', 'batch_size', 'batch_length', 'train_every', 'horizon', 'checkpoints', 'nonfinite_patience', 'planet_horizon', 'planet_iterations', 'planet_candidates', 'planet_top')
  for key in sizes:
    if getattr(config, key) <= 0:
      return f'--{key} must be positive, got {getattr(config, key)}.'
  for key in ('prefill', 'prefill_episodes', 'collect_episodes'):
    if getattr(config, key) < 0:
      return f'--{key} must be zero or positive, got {getattr(config, key)}.'
  if config.planet_top > config.planet_candidates:
    return f'--planet_top {config.planet_top} exceeds --planet_candidates {config.planet_candidates}; refit to fewer of them.'
  rows = config.time_limit // config.action_repeat + 1
  if config.batch_length > rows:
    return f'--batch_length {config.batch_length} is longer than an episode ({rows} rows with --time_limit {config.time_limit} and --action_repeat {config.action_repeat}); lower it.'
  return check_logdir(config)


# Settings a run's episodes and checkpoints depend on: a logdir keeps them.
RUN_DEFINING = ('task', 'action_repeat', 'deter_size', 'stoch_size', 'num_units', 'cnn_depth', 'dense_act', 'cnn_act', 'pcont', 'objective', 'behavior', 'action_dist')


def check_logdir(config):
  """Create the logdir; say what is wrong if it is unwritable or holds a run with
  other settings."""
  logdir = pathlib.Path(config.logdir).expanduser()
  saved = logdir / 'config.json'
  if saved.exists():
    try:
      old = json.loads(saved.read_text())
    except ValueError:
      return f'{saved} is not valid JSON; repair or remove it, or use a new --logdir.'
    changed = [key for key in RUN_DEFINING if key in old and old[key] != getattr(config, key)]
    if changed:
      was = ', '.join(f'--{key} {old[key]}' for key in changed)
      return f'{logdir} holds a run with {was}; resume with those settings or use a new --logdir.'
  try:
    logdir.mkdir(parents=True, exist_ok=True)
    tempfile.TemporaryFile(dir=logdir).close()
  except OSError as e:
    return f'Cannot write to --logdir {logdir} ({e.strerror}); choose a writable folder.'
  return None
