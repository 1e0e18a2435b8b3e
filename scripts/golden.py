"""Golden reference file of one Dreamer training step, for checking other
implementations against this one (docs/REFERENCE.md).

Usage:
  python scripts/golden.py write --out golden.npz [--configs debug] [--task dmc_walker_walk] [dreamer.py flags]
  python scripts/golden.py check golden.npz

`write` builds the agent with the config's seed, takes a batch of windows from one
real episode of random actions (collected in an environment worker process), draws
every standard-normal sample of the training step with NumPy and stores the config,
weights, batch, noise and every intermediate result of the step, including the gradient
norms and the weights after one update of each optimiser. `check` loads the weights and
noise into this implementation, recomputes every stored quantity and prints its largest
absolute and relative error: exit 0 when all are within float32 tolerance, 1 when one
is not, 2 when the file or the flags cannot be used.
"""

import argparse
import functools
import json
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np

import tf_startup  # noqa: F401 (first: imports TensorFlow with its start-up messages filtered)
import tensorflow as tf
import tf_keras as keras

from agent import Dreamer, random_policy
import configs
import dreamer
import golden_numpy
import replay
import storage
import wrappers

# Keras stores Conv2DTranspose kernels as [h, w, out, in]; the file as [h, w, in, out].
TRANSPOSED_CONV = (0, 1, 3, 2)


def unsupported(config):
  """Why the config cannot make a golden file, or None."""
  if config.precision != '32' or config.strategy != 'default':
    return f'golden files are float32 on one device: use --precision 32 --strategy default (got {config.precision}, {config.strategy}).'
  if config.action_dist != 'tanh_normal':
    return 'golden files need --action_dist tanh_normal: the one-hot actor draws its own noise.'
  if config.behavior == 'planet' or config.objective != 'reconstruction':
    return 'golden files cover --behavior dreamer or no_value with --objective reconstruction.'
  return None


def named_weights(agent):
  """{file name: (variable, axes)}: names <network>/<layer>/<weight>; `axes`
  permutes the variable into the file's layout (None: the same layout)."""
  networks = dict(encoder=agent.encoder, rssm=agent.dynamics, decoder=agent.decoder,
                  reward=agent.reward, pcont=agent.pcont, value=agent.value, actor=agent.actor)
  weights = {}
  for network, module in networks.items():
    for layer_name, layer in (module.named_layers() if module else {}).items():
      for variable in layer.weights:
        weight = variable.name.split('/')[-1].split(':')[0]  # kernel, recurrent_kernel, bias.
        axes = TRANSPOSED_CONV if isinstance(layer, keras.layers.Conv2DTranspose) and weight == 'kernel' else None
        weights[f'{network}/{layer_name}/{weight}'] = (variable, axes)
  return weights


def in_layout(value, axes):
  """The permutation is its own inverse: the same call maps either way."""
  value = np.asarray(value)
  return value if axes is None else np.transpose(value, axes)


def file_weights(agent):
  return {name: in_layout(variable.numpy(), axes) for name, (variable, axes) in named_weights(agent).items()}


def load_weights(agent, stored):
  weights = named_weights(agent)
  if set(weights) != set(stored):
    missing, extra = sorted(set(weights) - set(stored)), sorted(set(stored) - set(weights))
    raise golden_numpy.GoldenError(f'the file\'s weights do not fit its config (missing {missing}, unexpected {extra}); rewrite it.')
  for name, (variable, axes) in weights.items():
    value = in_layout(stored[name], axes)
    if value.shape != tuple(variable.shape):
      raise golden_numpy.GoldenError(f'weight {name} has shape {value.shape}, the config needs {tuple(variable.shape)}; rewrite the file.')
    variable.assign(value)


def rollout_batch(config, directory):
  """[B, L] windows of one episode of uniformly random actions, collected in a worker
  process that never imports TensorFlow."""
  ctor = functools.partial(wrappers.make_env, config.task, config.action_repeat, config.time_limit, seed=config.seed)
  env = wrappers.Parallel(ctor, 'process')
  try:
    policy = random_policy(env.act_space, config.seed)
    wrappers.simulate(policy, [env], episodes=1, callbacks=[functools.partial(storage.save_episode, directory)])
  finally:
    env.close()
  episodes = replay.Episodes(directory)
  episodes.update()
  rng = np.random.default_rng(config.seed)
  windows = [episodes.sample(rng, config.batch_length) for _ in range(config.batch_size)]
  return {key: np.stack([w[key] for w in windows]) for key in storage.EPISODE_KEYS}


def draw_noise(config, action_size):
  """Every standard-normal draw of one training step (ALGORITHM 2.5), with N = B T
  imagination starts (B (T - 1) with pcont)."""
  rng = np.random.default_rng(config.seed)
  normal = lambda *shape: rng.standard_normal(shape, np.float32)
  B, T, S, H = config.batch_size, config.batch_length, config.stoch_size, config.horizon
  N = B * (T - 1 if config.pcont else T)
  return dict(observe=dict(prior=normal(B, T, S), post=normal(B, T, S)),
              imagine=dict(stoch=normal(H, N, S), action=normal(H, N, action_size)))


def recompute(agent, batch, noise):
  """Every stored quantity, from the agent's own functions; then one update, whose
  gradient norms and new weights are the last quantities (names: docs/REFERENCE.md)."""
  model = agent.model_outputs(agent.preprocess(batch), noise['observe'])
  imag_feat = agent.imagine_ahead(model['post'], noise['imagine'])
  start_feat = agent.dynamics.get_feat(agent.imagine_start(model['post']))
  # The action of imagination step k is sampled from the features before it.
  prev_feat = tf.concat([start_feat[None], imag_feat[:-1]], 0)
  out = {'imagine/feat': imag_feat, 'imagine/action': agent.actor(prev_feat).sample(noise=noise['imagine']['action'])}
  for kind in ('post', 'prior'):
    out.update({f'{kind}/{k}': v for k, v in model.pop(kind).items()})
  out.update(model)
  out.update({f'imagine/{k}': v for k, v in agent.behavior_outputs(imag_feat).items()})
  metrics = agent.train(batch, noise)
  out.update({k: metrics[k] for k in golden_numpy.GRADIENT_QUANTITIES if k in metrics})
  out.update({f'updated/{k}': v for k, v in file_weights(agent).items()})
  return {k: np.asarray(v) for k, v in out.items()}


def write(out_path, flags):
  with tempfile.TemporaryDirectory() as logdir:
    config = configs.parse_args(['--logdir', logdir, *flags])
    problem = unsupported(config)
    if problem:
      raise golden_numpy.GoldenError(problem)
    batch = rollout_batch(config, pathlib.Path(logdir) / 'episodes')
  config.logdir = ''
  dreamer.seed_everything(config)
  agent = Dreamer(config, batch['action'].shape[-1])
  noise = draw_noise(config, batch['action'].shape[-1])
  arrays = {'format_version': np.array(golden_numpy.FORMAT_VERSION), 'config': np.array(json.dumps(vars(config)))}
  arrays.update({f'weights/{k}': v for k, v in file_weights(agent).items()})
  arrays.update({f'batch/{k}': v for k, v in batch.items()})
  arrays.update({f'noise/{step}/{k}': v for step, draws in noise.items() for k, v in draws.items()})
  for name, value in recompute(agent, batch, noise).items():
    arrays[name if name.startswith('updated/') else f'out/{name}'] = value
  np.savez_compressed(out_path, **arrays)
  print(f'Wrote {out_path} ({pathlib.Path(out_path).stat().st_size / 2 ** 20:.1f} MiB, {len(arrays)} arrays).')
  return 0


def check(path):
  golden = golden_numpy.load(path)
  # Settings added since the file was written take their defaults.
  config = argparse.Namespace(**{**configs.DEFAULTS, **golden['config']})
  problem = unsupported(config)
  if problem:
    raise golden_numpy.GoldenError(problem)
  agent = Dreamer(config, golden['batch']['action'].shape[-1])
  load_weights(agent, golden['weights'])
  draws = golden['noise']
  noise = dict(observe=dict(prior=draws['observe/prior'], post=draws['observe/post']),
               imagine=dict(stoch=draws['imagine/stoch'], action=draws['imagine/action']))
  stored = {**golden['out'], **{f'updated/{k}': v for k, v in golden['updated'].items()}}
  before = {k: v.astype(np.float64) for k, v in golden['weights'].items()}
  failed = golden_numpy.report(stored, recompute(agent, golden['batch'], noise), golden['config'], before=before)
  return golden_numpy.verdict(failed)


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
  commands = parser.add_subparsers(dest='command', required=True)
  writer = commands.add_parser('write', help='write a golden file; other flags go to dreamer.py', allow_abbrev=False)
  writer.add_argument('--out', required=True, type=pathlib.Path)
  checker = commands.add_parser('check', help='recompute a golden file with this implementation')
  checker.add_argument('path', type=pathlib.Path)
  args, flags = parser.parse_known_args(argv)
  if args.command == 'check' and flags:
    parser.error(f'check takes only the file; unexpected {" ".join(flags)}')
  try:
    return write(args.out, flags) if args.command == 'write' else check(args.path)
  except golden_numpy.GoldenError as e:
    print(f'golden: error: {e}', file=sys.stderr)
    return 2


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
