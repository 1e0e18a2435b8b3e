"""NumPy-only replay of a golden file: the executable specification of one Dreamer
training step for porters (docs/REFERENCE.md).

Usage: python scripts/golden_numpy.py golden.npz

From the file's weights, batch and noise alone it recomputes, in float64, the world
model's forward pass and loss (ALGORITHM 2-3), the imagination rollout and the behavior losses
(ALGORITHM 4-5), and compares them with the stored float32 outputs. Gradient norms and
updated weights are checked by `scripts/golden.py check` only. Prints the largest
absolute and relative error of every quantity; exits 0 when all are within tolerance,
1 when one is not, 2 when the file cannot be used. Imports no TensorFlow.
"""

import json
import sys
import zipfile

import numpy as np

FORMAT_VERSION = 1
EPS = float(np.finfo(np.float32).eps)  # 1.19e-7, one float32 rounding.

# Float32 error allowed per quantity (docs/REFERENCE.md, Tolerance): RTOL times the
# quantity's largest magnitude. A float32 layer rounds its output by about EPS of its
# scale; the longest chain of dependent layers is a few hundred long (50 observe steps
# of 4 layers, then 15 imagination steps of 9), so 2^8 EPS = 3.1e-5 allows about one
# whole rounding per layer on it. Measured at the paper configuration: at most 2^4 EPS.
# The KL per step, a difference of nearly equal terms, may also be off by 2^8 EPS per
# stochastic dimension in absolute terms.
RTOL = 2 ** 8 * EPS
KL_ATOL_PER_DIM = 2 ** 8 * EPS
# An updated weight is judged by its update, the step new - old weights of the whole
# tensor: it passes when the L2 norm of the error of that step is at most UPDATE_TOL of
# the step's norm. Adam's first step moves a weight by lr g / (|g| + eps), so where |g|
# is near eps the float32 rounding of g, which differs between implementations, moves a
# single weight by a large share of lr: at the paper configuration a replay with the
# decoder's first transposed convolution as a matmul instead of the Keras layer the
# file was written with moved a few weights by up to a quarter of a step (elementwise
# failures), with every gradient norm within 1.6e-7 of the file's.
UPDATE_TOL = 2 ** -8

# Quantities that need gradients: `scripts/golden.py check` recomputes them.
GRADIENT_QUANTITIES = ('model_grad_norm', 'actor_grad_norm', 'value_grad_norm')


class GoldenError(ValueError):
  """A file that is not a usable golden file."""


def load(path):
  """The golden file as {section: {name: array}} plus 'config' (a dict); sections are
  weights, batch, noise, out and updated."""
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {key: data[key] for key in data.files}
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    raise GoldenError(f'{path} cannot be read as a .npz file ({e}); write one with scripts/golden.py write.') from e
  if 'format_version' not in arrays or 'config' not in arrays:
    raise GoldenError(f'{path} is not a golden file (no format_version or config); write one with scripts/golden.py write.')
  if int(arrays['format_version']) != FORMAT_VERSION:
    raise GoldenError(f'{path} has format version {int(arrays["format_version"])}, this checker reads {FORMAT_VERSION}; rewrite it.')
  golden = dict(config=json.loads(str(arrays['config'])))
  for section in ('weights', 'batch', 'noise', 'out', 'updated'):
    prefix = section + '/'
    golden[section] = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
  return golden


def errors(expected, actual):
  """(largest absolute error, that divided by the largest |expected|)."""
  diff = np.abs(np.asarray(actual, np.float64) - np.asarray(expected, np.float64))
  largest = diff.max(initial=0.0)
  return largest, largest / max(np.abs(expected).max(initial=0.0), np.finfo(np.float64).tiny)


def update_error(expected, actual, before):
  """The L2 norm of the error of a weight tensor's update (new - `before`), divided
  by the norm of the expected update."""
  step = np.asarray(expected, np.float64) - before
  error = np.linalg.norm(np.asarray(actual, np.float64) - np.asarray(expected, np.float64))
  return error / max(np.linalg.norm(step), np.finfo(np.float64).tiny)


def tolerance(name, expected, config):
  """Allowed largest absolute error of a quantity (see RTOL)."""
  scale = np.abs(expected).max(initial=0.0)
  if name == 'kl':
    return RTOL * scale + KL_ATOL_PER_DIM * config['stoch_size']
  return RTOL * scale


def report(stored, computed, config, skipped=(), before=None):
  """Print every stored quantity's largest absolute and relative error against its
  recomputed value; return the names that failed (or were not recomputed). With
  `before`, the weights before the update, an updated weight's relative error is
  that of its update and passes up to UPDATE_TOL (see there)."""
  failed = []
  print(f'{"quantity":32} {"max abs error":>13} {"rel error":>10} {"allowed":>10}')
  for name, expected in sorted(stored.items()):
    if name in skipped:
      print(f'{name:32} {"(needs gradients: scripts/golden.py check)":>35}')
      continue
    actual = computed.get(name)
    if actual is None or np.shape(actual) != expected.shape:
      got = 'not recomputed' if actual is None else f'shape {np.shape(actual)}, stored {expected.shape}'
      print(f'{name:32} FAIL: {got}')
      failed.append(name)
      continue
    abs_err, rel_err = errors(expected, actual)
    if before is not None and name.startswith('updated/'):
      rel_err, allowed = update_error(expected, actual, before[name[len('updated/'):]]), UPDATE_TOL
      ok = rel_err <= allowed
      print(f'{name:32} {abs_err:13.3g} {rel_err:10.3g} {allowed:10.3g} of the step{"" if ok else "  FAIL"}')
      if not ok:
        failed.append(name)
      continue
    allowed = tolerance(name, expected, config)
    ok = abs_err <= allowed
    print(f'{name:32} {abs_err:13.3g} {rel_err:10.3g} {allowed:10.3g}{"" if ok else "  FAIL"}')
    if not ok:
      failed.append(name)
  return failed


def verdict(failed):
  """Print the outcome; return the exit code."""
  if failed:
    print(f'FAIL: {len(failed)} quantities differ beyond float32 tolerance: {", ".join(failed)}')
    return 1
  print('PASS: every quantity within float32 tolerance.')
  return 0


# The networks (ALGORITHM 2, 5). Weight names and layouts: docs/REFERENCE.md, Weights.

def elu(x):
  return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


ACTIVATIONS = dict(elu=elu, relu=lambda x: np.maximum(x, 0))


def softplus(x):
  return np.logaddexp(0, x)


def sigmoid(x):
  return 0.5 * (1 + np.tanh(0.5 * x))


def dense(w, name, x, act=None):
  y = x @ w[f'{name}/kernel'] + w[f'{name}/bias']
  return act(y) if act else y


def mlp(w, name, x, act):
  """Hidden layers <name>/h0, h1, ... with `act`, then the linear <name>/out."""
  i = 0
  while f'{name}/h{i}/kernel' in w:
    x = dense(w, f'{name}/h{i}', x, act)
    i += 1
  return dense(w, f'{name}/out', x)


def conv(x, kernel, bias, stride=2):
  """'valid' convolution of NHWC `x` with kernel [k, k, in, out]:
  y[i, j] = bias + sum_{a, b} x[stride i + a, stride j + b] @ kernel[a, b]."""
  k = kernel.shape[0]
  height, width = (x.shape[1] - k) // stride + 1, (x.shape[2] - k) // stride + 1
  y = bias
  for a in range(k):
    for b in range(k):
      y = y + x[:, a: a + stride * height: stride, b: b + stride * width: stride] @ kernel[a, b]
  return y


def conv_transpose(x, kernel, bias, stride=2):
  """'valid' transposed convolution, kernel [k, k, in, out] (the file's layout):
  y[stride i + a, stride j + b] += x[i, j] @ kernel[a, b]; output (n - 1) stride + k."""
  k = kernel.shape[0]
  n, height, width, _ = x.shape
  y = np.zeros((n, stride * (height - 1) + k, stride * (width - 1) + k, kernel.shape[3]))
  for a in range(k):
    for b in range(k):
      y[:, a: a + stride * height: stride, b: b + stride * width: stride] += x @ kernel[a, b]
  return y + bias


def encoder(w, image, act):
  """[N, 64, 64, 3] in [-0.5, 0.5] -> [N, 32 depth]: 4 convs, kernel 4, stride 2."""
  x = image
  for i in range(4):
    x = act(conv(x, w[f'encoder/h{i}/kernel'], w[f'encoder/h{i}/bias']))
  return x.reshape(len(x), -1)  # Flattened in (height, width, channel) order.


def decoder(w, feat, act):
  """[N, F] -> image means [N, 64, 64, 3]: Dense, then 4 transposed convs, stride 2."""
  x = dense(w, 'decoder/h1', feat)[:, None, None, :]
  for i in (2, 3, 4, 5):
    x = conv_transpose(x, w[f'decoder/h{i}/kernel'], w[f'decoder/h{i}/bias'])
    x = act(x) if i < 5 else x
  return x


def gru(w, x, h):
  """Keras GRUCell, reset_after: gates (z update, r reset, candidate) along the last
  axis of kernel [in, 3u] and recurrent_kernel [u, 3u]; bias [2, 3u] = (input, recurrent)."""
  x_z, x_r, x_h = np.split(x @ w['rssm/gru/kernel'] + w['rssm/gru/bias'][0], 3, -1)
  h_z, h_r, h_h = np.split(h @ w['rssm/gru/recurrent_kernel'] + w['rssm/gru/bias'][1], 3, -1)
  z, r = sigmoid(x_z + h_z), sigmoid(x_r + h_r)
  return z * h + (1 - z) * np.tanh(x_h + r * h_h)


def stoch_state(x, noise, min_std=0.1):
  mean, raw_std = np.split(x, 2, -1)
  std = softplus(raw_std) + min_std
  return dict(mean=mean, std=std, stoch=mean + std * noise)


def img_step(w, act, prev, action, noise):
  """Prior: Dense(elu), GRU, Dense(elu), Dense(2 stoch) -> mean, std, sample (ALGORITHM 2.1)."""
  x = dense(w, 'rssm/img1', np.concatenate([prev['stoch'], action], -1), act)
  deter = gru(w, x, prev['deter'])
  prior = stoch_state(dense(w, 'rssm/img3', dense(w, 'rssm/img2', deter, act)), noise)
  return dict(prior, deter=deter)


def obs_step(w, act, prev, action, embed, prior_noise, post_noise):
  """Posterior: the prior step, then Dense(elu) of (h, embed), Dense(2 stoch)."""
  prior = img_step(w, act, prev, action, prior_noise)
  x = dense(w, 'rssm/obs1', np.concatenate([prior['deter'], embed], -1), act)
  post = stoch_state(dense(w, 'rssm/obs2', x), post_noise)
  return dict(post, deter=prior['deter']), prior


def feat(state):
  return np.concatenate([state['stoch'], state['deter']], -1)


def world_model(w, c, batch, noise):
  """Forward pass and loss of the world model on the batch (ALGORITHM 2-3)."""
  act = ACTIVATIONS[c['dense_act']]
  image = batch['image'] / 255.0 - 0.5
  reward = np.tanh(batch['reward']) if c['clip_rewards'] == 'tanh' else batch['reward']
  B, T = reward.shape
  cnn_act = ACTIVATIONS[c['cnn_act']]
  embed = np.stack([encoder(w, sequence, cnn_act) for sequence in image])
  state = dict(mean=np.zeros((B, c['stoch_size'])), std=np.zeros((B, c['stoch_size'])),
               stoch=np.zeros((B, c['stoch_size'])), deter=np.zeros((B, c['deter_size'])))
  posts, priors = [], []
  for t in range(T):  # action[:, t] led to the observation of row t (ALGORITHM 7.1).
    state, prior = obs_step(w, act, state, batch['action'][:, t], embed[:, t],
                            noise['observe/prior'][:, t], noise['observe/post'][:, t])
    posts.append(state)
    priors.append(prior)
  out = {f'{kind}/{k}': np.stack([s[k] for s in states], 1)
         for kind, states in (('post', posts), ('prior', priors)) for k in posts[0]}
  post = {k: out[f'post/{k}'] for k in posts[0]}
  out.update(embed=embed, feat=feat(post))
  out['image_mean'] = np.stack([decoder(w, f, cnn_act) for f in out['feat']])
  out['reward_mean'] = mlp(w, 'reward', out['feat'], act)[..., 0]
  pixels = np.prod(image.shape[2:])
  out['image_loss'] = np.mean(0.5 * ((image - out['image_mean']) ** 2).sum((2, 3, 4)) + 0.5 * pixels * np.log(2 * np.pi))
  out['reward_loss'] = np.mean(0.5 * (reward - out['reward_mean']) ** 2 + 0.5 * np.log(2 * np.pi))
  losses = out['image_loss'] + out['reward_loss']
  if c['pcont']:  # Bernoulli log-likelihood of the soft target discount x gamma.
    logits = mlp(w, 'pcont', out['feat'], act)[..., 0]
    target = batch['discount'] * c['discount']
    out['pcont_mean'] = sigmoid(logits)
    out['pcont_loss'] = c['pcont_scale'] * np.mean(target * softplus(-logits) + (1 - target) * softplus(logits))
    losses += out['pcont_loss']
  # KL(post || prior) of diagonal Normals, summed over the stochastic dimensions.
  m1, s1, m2, s2 = out['post/mean'], out['post/std'], out['prior/mean'], out['prior/std']
  out['kl'] = np.sum(np.log(s2 / s1) + (s1 ** 2 + (m1 - m2) ** 2) / (2 * s2 ** 2) - 0.5, -1)
  if c['free_nats_per_step']:
    out['kl_loss'] = np.mean(np.maximum(out['kl'], c['free_nats']))
  else:
    out['kl_loss'] = max(np.mean(out['kl']), c['free_nats'])
  out['model_loss'] = c['kl_scale'] * out['kl_loss'] + losses
  return out, post


def actor(w, c, f, noise):
  """tanh(mean + std noise), mean = 5 tanh(raw / 5), std = softplus(raw_std +
  softplus^-1(init_std)) + 1e-4 (ALGORITHM 5.1)."""
  mean, raw_std = np.split(mlp(w, 'actor', f, ACTIVATIONS[c['dense_act']]), 2, -1)
  mean = 5 * np.tanh(mean / 5)
  std = softplus(raw_std + np.log(np.expm1(c['action_init_std']))) + 1e-4
  return np.tanh(mean + std * noise)


def imagine(w, c, post, noise):
  """H prior steps from every posterior state with the actor's actions (ALGORITHM 4.1)."""
  act = ACTIVATIONS[c['dense_act']]
  if c['pcont']:  # The last step may be terminal.
    post = {k: v[:, :-1] for k, v in post.items()}
  state = {k: v.reshape((-1,) + v.shape[2:]) for k, v in post.items()}
  feats, actions = [], []
  for k in range(c['horizon']):
    actions.append(actor(w, c, feat(state), noise['imagine/action'][k]))
    state = img_step(w, act, state, actions[-1], noise['imagine/stoch'][k])
    feats.append(feat(state))
  return np.stack(feats), np.stack(actions)


def behavior(w, c, imag_feat):
  """Lambda-returns, weights, actor and value losses (ALGORITHM 4.2-4.3, paper eq. 6-8)."""
  act = ACTIVATIONS[c['dense_act']]
  reward = mlp(w, 'reward', imag_feat, act)[..., 0]
  if c['pcont']:
    pcont = sigmoid(mlp(w, 'pcont', imag_feat, act)[..., 0])
  else:
    pcont = np.full_like(reward, c['discount'])
  out = dict(reward=reward, pcont=pcont)
  if c['behavior'] == 'dreamer':
    value = out['value'] = mlp(w, 'value', imag_feat, act)[..., 0]
    lambda_ = c['disclam']
    returns = np.zeros_like(reward[:-1])
    last = value[-1]  # R_{H-1} := v_{H-1}.
    for t in reversed(range(len(returns))):  # R_t = r_t + c_t ((1 - l) v_{t+1} + l R_{t+1}).
      last = returns[t] = reward[t] + pcont[t] * ((1 - lambda_) * value[t + 1] + lambda_ * last)
    weights = np.cumprod(np.concatenate([np.ones_like(pcont[:1]), pcont[:-2]]), 0)
  else:  # No value: the discounted return of all H rewards from each step, weight 1.
    returns, last = np.zeros_like(reward), 0.0
    for t in reversed(range(len(returns))):  # R_t = r_t + c_t R_{t+1}, R_H := 0.
      last = returns[t] = reward[t] + pcont[t] * last
    weights = np.ones_like(returns)
  out.update(returns=returns, weights=weights, actor_loss=-np.mean(weights * returns), value_loss=0.0)
  if c['behavior'] == 'dreamer':  # -log Normal(R; v, 1).
    out['value_loss'] = np.mean(weights * (0.5 * (returns - value[:-1]) ** 2 + 0.5 * np.log(2 * np.pi)))
  return {f'imagine/{k}': v for k, v in out.items()}


def replay(golden):
  """Every stored quantity that needs no gradient, recomputed in float64."""
  c = golden['config']
  w = {k: v.astype(np.float64) for k, v in golden['weights'].items()}
  batch = {k: v.astype(np.float64) for k, v in golden['batch'].items()}
  noise = {k: v.astype(np.float64) for k, v in golden['noise'].items()}
  out, post = world_model(w, c, batch, noise)
  out['imagine/feat'], out['imagine/action'] = imagine(w, c, post, noise)
  out.update(behavior(w, c, out['imagine/feat']))
  return out


def main(argv):
  if len(argv) != 1:
    print('Usage: python scripts/golden_numpy.py golden.npz', file=sys.stderr)
    return 2
  try:
    golden = load(argv[0])
  except GoldenError as e:
    print(f'golden_numpy: error: {e}', file=sys.stderr)
    return 2
  failed = report(golden['out'], replay(golden), golden['config'], skipped=GRADIENT_QUANTITIES)
  return verdict(failed)


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
