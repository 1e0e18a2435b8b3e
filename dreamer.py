"""Dreamer (Hafner et al., ICLR 2020): configuration, agent and training loop.

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

import configs
import models
import runs
import tools
import wrappers


# The contrastive image terms of --objective (paper section 4): what the state model
# predicts from the image embedding ('stoch' z_t or 'feat' s_t = [z_t, h_t]), its
# layers of num_units and std (DenseHead's min_std, init_std), and the InfoNCE
# normalisation.
# `contrastive` is the paper's eq. 12 as written: normalised over the batch's images
# for each state. `contrastive_tf1` is what the authors' TF1 code computes
# (scripts/configs.py, cpc_head and cpc_contrast 'window'; training/utility.py,
# compute_cpc_loss): normalised over a window of 10 sequences x 30 time shifts of
# states for each image, the whole model state as the target, 3 layers, std
# softplus(x + softplus^-1(1)) + 0.01.
CONTRASTIVE = dict(
    contrastive=dict(target='stoch', layers=2, min_std=0.1, init_std=None,
                     nce=lambda log_q, batch, length: tools.info_nce(log_q)),
    contrastive_tf1=dict(target='feat', layers=3, min_std=0.01, init_std=1.0,
                         nce=lambda log_q, batch, length: tools.info_nce_window(log_q, batch, length, 10, 30)),
)


def lambda_returns(reward, value, pcont, lambda_):
  """Dreamer's returns of imagined steps [H, N]: lambda-returns of the first H - 1
  steps bootstrapped with the last value (paper eq. 6), weighted by the cumulative
  continuation before each step (paper section 3), as the authors' TF2 code computes
  them (dreamer.py, Dreamer._train)."""
  returns = tools.lambda_return(reward[:-1], value[:-1], pcont[:-1], value[-1], lambda_)
  weights = tf.stop_gradient(tf.math.cumprod(tf.concat([tf.ones_like(pcont[:1]), pcont[:-2]], 0), 0))
  return returns, weights


def reward_returns(reward, value, pcont, lambda_):
  """The no-value ablation's returns (paper eq. 4, Fig. 4 and 7): from every imagined
  step t the discounted return of the H imagined rewards, R_t = r_t + c_t R_{t+1} with
  R_H = 0, each step weighted 1, as the authors' TF1 code's actor-only setting
  computes them (training/utility.py, compute_action_values without a value head;
  control/temporal_difference.py, discounted_return). Eq. 4 writes the sum
  undiscounted; their code discounts it by gamma (or the continuation head)."""
  returns = tools.lambda_return(reward, tf.zeros_like(reward), pcont, tf.zeros_like(reward[-1]), 1.0)
  return returns, tf.ones_like(returns)


# The returns the actor maximises, by --behavior (PlaNet's planner learns none).
RETURNS = dict(dreamer=lambda_returns, no_value=reward_returns)


class Dreamer(tf.Module):
  """World model, actor and value with their optimisers (SPEC 3-6)."""

  def __init__(self, config, action_size):
    """Build under `strategy.scope()` to train with a tf.distribute strategy."""
    super().__init__(name='dreamer')
    c = self._c = config
    self._strategy = tf.distribute.get_strategy()
    self.encoder = models.ConvEncoder(c.cnn_depth, c.cnn_act)
    self.dynamics = models.RSSM(c.stoch_size, c.deter_size, c.deter_size, c.dense_act, batch_noise=c.batch_noise)
    # The image term of the world-model loss (SPEC 10): a decoder, a state model or none.
    self.decoder = models.ConvDecoder(c.cnn_depth, c.cnn_act, layers=c.layer_impl) if c.objective == 'reconstruction' else None
    self._contrastive = CONTRASTIVE.get(c.objective)
    self.state_model = None
    if self._contrastive:
      spec = self._contrastive
      size = c.stoch_size + (c.deter_size if spec['target'] == 'feat' else 0)
      self.state_model = models.DenseHead((size,), spec['layers'], c.num_units, 'normal_std', c.dense_act, spec['min_std'], spec['init_std'])
    self.reward = models.DenseHead((), 2, c.num_units, 'normal', c.dense_act)
    self.pcont = models.DenseHead((), 3, c.num_units, 'binary', c.dense_act) if c.pcont else None
    # Behaviour (SPEC 4): actor and value, the actor alone (no value), or neither (PlaNet's planner).
    self.value = models.DenseHead((), 3, c.num_units, 'normal', c.dense_act) if c.behavior == 'dreamer' else None
    self.actor = None if c.behavior == 'planet' else models.ActionHead(
        action_size, 4, c.num_units, c.action_dist, c.dense_act, init_std=c.action_init_std)
    optimizer = functools.partial(
        tools.Optimizer, eps=c.adam_epsilon, clip=c.grad_clip, wd=c.weight_decay,
        wd_pattern=c.weight_decay_pattern, loss_scaling=c.precision == '16')
    self.model_opt = optimizer('model', c.model_lr)
    self.actor_opt = optimizer('actor', c.actor_lr)
    self.value_opt = optimizer('value', c.value_lr)
    self.updates = tf.Variable(0, dtype=tf.int64, trainable=False)
    self._action_size = action_size
    self._build()
    # Control flow on tensors is written as tf.cond, tf.scan and tf.while_loop, so
    # AutoGraph's source conversion (over half of the tracing time) is not needed.
    graph_function = functools.partial(tf.function, autograph=False)
    self.train = graph_function(self._train)
    self.policy_step = graph_function(self._policy)
    self.openloop = graph_function(self._openloop) if self.decoder else None

  def _build(self):
    """Create every variable eagerly on a tiny batch, so that each compiled
    function is traced exactly once."""
    image = tf.zeros([1, 1, 64, 64, 3])
    post, _ = self.dynamics.observe(self.encoder(image), tf.zeros([1, 1, self._action_size]))
    feat = self.dynamics.get_feat(post)
    heads = [self.decoder, self.reward, self.actor, self.pcont, self.value]
    for head in filter(None, heads):
      head(feat)
    if self.state_model:
      self.state_model(self.encoder(image))
    for opt, variables in self._optimizers():
      opt.build(variables)

  def _optimizers(self):
    """(optimiser, variables) of the world model, then of the actor and value if present."""
    world_model = [self.encoder, self.dynamics, self.decoder, self.state_model, self.reward, self.pcont]
    pairs = [(self.model_opt, world_model)]
    pairs += [(opt, [head]) for opt, head in ((self.actor_opt, self.actor), (self.value_opt, self.value)) if head]
    return [(opt, [v for m in filter(None, mods) for v in m.trainable_variables]) for opt, mods in pairs]

  def _train(self, data, noise=None):
    """One update of the world model, actor and value from one (distributed) batch:
    every replica computes gradients of its share, they are summed across replicas,
    then each optimiser applies them unless they are not finite (SPEC 6). `noise`,
    if given, holds every standard-normal draw of the step (see `_gradients`)."""
    grads, metrics, feat = self._strategy.run(self._gradients, (data, noise))
    metrics = {k: self._strategy.reduce('mean', v, axis=None) for k, v in metrics.items()}
    for opt, variables in self._optimizers():
      apply = functools.partial(self._strategy.run, opt.apply, (grads[opt.name], variables))
      if opt.loss_scaling:  # The loss-scale optimiser (float16) skips non-finite steps itself.
        apply()
      else:
        tf.cond(metrics[f'{opt.name}_skipped'] == 0, apply, lambda: None)
    if self.actor:  # As the authors' TF2 code logs it: the updated actor on the batch's posterior.
      entropy = self._strategy.run(lambda f: tf.reduce_mean(self.actor(f).entropy()), (feat,))
      metrics['action_ent'] = self._strategy.reduce('mean', entropy, axis=None)
    self.updates.assign_add(1)
    metrics.update({f'{opt.name}_loss_scale': opt.loss_scale() for opt, _ in self._optimizers() if opt.loss_scaling})
    return metrics

  def _gradients(self, data, noise=None):
    """Losses, replica-summed gradients and the posterior features; all forward
    passes use the weights before the update. Imagination starts from stopped
    states, so the world-model tape can be released before it. `noise`: None to
    draw every sample here, or dict(observe=, imagine=) of draws for `_model_loss`
    and `_imagine_ahead`."""
    noise = noise or {}
    data = self.preprocess(data)
    (model_opt, model_vars), *behaviour = self._optimizers()
    grads = {}
    with tf.GradientTape() as tape:
      model_loss, post, metrics = self._model_loss(data, noise.get('observe'))
    metrics['model_grad_norm'], metrics['model_skipped'], grads['model'] = model_opt.gradients(tape, model_loss, model_vars)
    metrics['model_loss'] = model_loss
    if behaviour:  # PlaNet's planner learns nothing in imagination.
      # A graph runs independent work in any order: start imagination only once the
      # world-model backward pass has freed its activations, or both peak together.
      with tf.control_dependencies(grads['model']):
        post = tf.nest.map_structure(tf.identity, post)
      behaviour_grads, behaviour_metrics = self._behaviour_gradients(post, noise.get('imagine'), behaviour)
      grads.update(behaviour_grads)
      metrics.update(behaviour_metrics)
    return grads, metrics, self.dynamics.get_feat(post)

  def _behaviour_gradients(self, post, noise, optimizers):
    """Actor (and value) gradients and metrics from imagination (SPEC 4)."""
    (actor_opt, actor_vars), *value = optimizers
    grads, metrics = {}, {}
    # One non-persistent tape per loss, the value tape watching only the value head:
    # a persistent tape, or one that sees the imagination loop without needing its
    # gradient, materialises zeros for every activation the loop keeps (0.5 GB).
    value_opt, value_vars = value[0] if value else (None, [])
    with tf.GradientTape() as actor_tape, tf.GradientTape(watch_accessed_variables=False) as value_tape:
      value_tape.watch(value_vars)
      imag_feat = self._imagine_ahead(post, noise)
      actor_loss, value_loss, behaviour_metrics = self._behaviour_losses(imag_feat)
    metrics['actor_grad_norm'], metrics['actor_skipped'], grads['actor'] = actor_opt.gradients(actor_tape, actor_loss, actor_vars)
    if value:
      metrics['value_grad_norm'], metrics['value_skipped'], grads['value'] = value_opt.gradients(value_tape, value_loss, value_vars)
      metrics['value_loss'] = value_loss
    metrics.update(behaviour_metrics, actor_loss=actor_loss)
    return grads, metrics

  def _model_loss(self, data, noise=None):
    """World-model loss (SPEC 3), posterior states and metrics; `noise` as for
    `RSSM.observe`."""
    out = self._model_outputs(data, noise)
    metrics = {k: v for k, v in out.items() if k.endswith('_loss') and k not in ('kl_loss', 'model_loss')}
    metrics.update(
        kl=tf.reduce_mean(out['kl']),
        prior_ent=tf.reduce_mean(self.dynamics.get_dist(out['prior']).entropy()),
        post_ent=tf.reduce_mean(self.dynamics.get_dist(out['post']).entropy()))
    return out['model_loss'], out['post'], metrics

  def _model_outputs(self, data, noise=None):
    """Every intermediate of the world-model loss, named as in the golden file
    (docs/REFERENCE.md): states, features, head means, KL per step, loss terms."""
    c = self._c
    embed = self.encoder(data['image'])
    post, prior = self.dynamics.observe(embed, data['action'], noise=noise)
    feat = self.dynamics.get_feat(post)
    reward = self.reward(feat)
    likes, out = self._image_term(data['image'], embed, post, feat)
    out.update(embed=embed, post=post, prior=prior, feat=feat, reward_mean=reward.mean())
    likes['reward'] = tf.reduce_mean(reward.log_prob(data['reward']))
    if self.pcont:
      pcont = self.pcont(feat)
      out['pcont_mean'] = pcont.mean()
      target = data['discount'] * c.discount
      likes['pcont'] = c.pcont_scale * tf.reduce_mean(pcont.log_prob(target))
    kl = self.dynamics.get_dist(post).kl_divergence(self.dynamics.get_dist(prior))
    if c.free_nats_per_step:  # TF1 code: clip each step, then average.
      div = tf.reduce_mean(tf.maximum(kl, c.free_nats))
    else:  # TF2 code: clip the mean over the whole batch, across replicas.
      batch_kl = tf.distribute.get_replica_context().all_reduce('mean', tf.stop_gradient(tf.reduce_mean(kl)))
      div = tf.where(batch_kl > c.free_nats, tf.reduce_mean(kl), c.free_nats)
    out.update({f'{k}_loss': -v for k, v in likes.items()})
    out.update(kl=kl, kl_loss=div, model_loss=c.kl_scale * div - sum(likes.values()))
    return out

  def _image_term(self, image, embed, post, feat):
    """What the world model learns about the images, chosen by --objective (SPEC 10):
    their log-likelihood under the decoder, an InfoNCE bound of the state model
    q(s_t | o_t) (CONTRASTIVE), or nothing (reward only). Returns the
    log-likelihood terms and the golden file's outputs of the term."""
    if self.decoder:
      dist = self.decoder(feat)
      return dict(image=tf.reduce_mean(dist.log_prob(image))), dict(image_mean=dist.mean())
    if self.state_model:
      spec = self._contrastive
      flat = lambda x: tf.reshape(x, [-1, x.shape[-1]])  # Every observation of the batch.
      target = models.as_float32(flat(feat if spec['target'] == 'feat' else post['stoch']))
      dist = self.state_model(flat(embed)).distribution  # Normal(loc, scale) [N, size].
      log_q = tools.log_density_matrix(target, dist.loc, dist.scale)
      return dict(contrastive=tf.reduce_mean(spec['nce'](log_q, *feat.shape[:2]))), {}
    return {}, {}

  def _imagine_ahead(self, post, noise=None):
    """Features [H, N, F] of H imagined steps from every posterior state (SPEC 4).
    `noise`, if given, is dict(stoch=[H, N, stoch], action=[H, N, A]): the
    standard-normal draws of the imagined states and of the actor's samples."""

    def step(prev, x):
      feat = tf.stop_gradient(self.dynamics.get_feat(prev))
      action = self.actor(feat).sample(noise=x.get('action'))
      return self.dynamics.img_step(prev, action, x.get('stoch'))

    states = models.sequential_scan(step, dict(step=tf.range(self._c.horizon), **(noise or {})), self._imagine_start(post))
    return self.dynamics.get_feat(states)

  def _imagine_start(self, post):
    """The stopped posterior states [N, ...] imagination starts from (SPEC 4)."""
    if self.pcont:  # The last step may be terminal.
      post = {k: v[:, :-1] for k, v in post.items()}
    flatten = lambda x: tf.reshape(x, [-1] + x.shape[2:].as_list())
    return {k: flatten(tf.stop_gradient(v)) for k, v in post.items()}

  def _behaviour_losses(self, imag_feat):
    """Actor and value losses and metrics (SPEC 4)."""
    out = self._behaviour_outputs(imag_feat)
    metrics = dict(imag_reward=tf.reduce_mean(out['reward']), imag_return=tf.reduce_mean(out['returns']))
    return out['actor_loss'], out['value_loss'], metrics

  def _behaviour_outputs(self, imag_feat):
    """Imagined rewards, continuations, values, lambda-returns, weights and the
    actor and value losses (SPEC 4, paper eq. 6-8), named as in the golden file."""
    c = self._c
    reward = self.reward(imag_feat).mode()
    if self.pcont:
      pcont = self.pcont(imag_feat).mean()
    else:
      pcont = c.discount * tf.ones_like(reward)
    out = dict(reward=reward, pcont=pcont)
    if self.value:
      value_dist = self.value(imag_feat)
      out['value'] = value_dist.mode()
    returns, weights = RETURNS[c.behavior](reward, out.get('value'), pcont, c.disclam)
    out.update(returns=returns, weights=weights, actor_loss=-tf.reduce_mean(weights * returns), value_loss=tf.constant(0.0))
    if self.value:  # Regresses v(f_t) on the stopped returns, first H-1 steps.
      out['value_loss'] = -tf.reduce_mean(weights * value_dist[:-1].log_prob(tf.stop_gradient(returns)))
    return out

  def preprocess(self, data):
    """uint8 images to [-0.5, 0.5] floats (SPEC 3); optional reward squashing."""
    data = dict(data)
    data['image'] = tools.image_to_float(data['image'])
    if self._c.clip_rewards == 'tanh' and 'reward' in data:  # The policy passes images only.
      data['reward'] = tf.tanh(data['reward'])
    return data

  def initial_state(self, batch_size):
    return self.dynamics.initial(batch_size), tf.zeros([batch_size, self._action_size])

  def _policy(self, image, reset, state, sample, amount):
    """One agent step: filter the latent state, act, explore (SPEC 5)."""
    latent, action = state
    keep = 1.0 - tf.cast(reset, tf.float32)[:, None]
    latent = {k: v * tf.cast(keep, v.dtype) for k, v in latent.items()}
    action = action * keep
    embed = self.encoder(self.preprocess({'image': image})['image'])
    latent, _ = self.dynamics.obs_step(latent, action, embed)
    if self.actor:
      dist = self.actor(self.dynamics.get_feat(latent))
      action = tf.cond(sample, dist.sample, dist.mode)
    else:
      action = self._plan(latent)
    # No exploration at amount 0: evaluation adds noise only with --eval_noise > 0.
    action = tf.cond(amount > 0, lambda: self._explore(action, amount), lambda: action)
    return action, (latent, action)

  def _plan(self, latent):
    """PlaNet's action: the first of the action sequence that the cross-entropy
    method finds best for the predicted rewards summed over planet_horizon imagined
    steps from the current posterior state."""
    c = self._c

    def total_reward(actions):  # [B, N, H, A] candidate sequences -> [B, N].
      batch, candidates = tf.shape(actions)[0], tf.shape(actions)[1]
      start = {k: tf.repeat(v, candidates, 0) for k, v in latent.items()}
      states = self.dynamics.imagine(tf.reshape(actions, [-1, c.planet_horizon, self._action_size]), start)
      reward = self.reward(self.dynamics.get_feat(states)).mode()
      return tf.reshape(tf.reduce_sum(reward, 1), [batch, candidates])

    shape = [tf.shape(latent['deter'])[0], c.planet_horizon, self._action_size]
    return tools.cem(total_reward, shape, c.planet_iterations, c.planet_candidates, c.planet_top)[:, 0]

  def _explore(self, action, amount):
    expl = self._c.expl
    if expl == 'additive_gaussian':
      return tf.clip_by_value(action + amount * tf.random.normal(tf.shape(action)), -1, 1)
    if expl == 'completely_random':
      return tf.random.uniform(tf.shape(action), -1, 1)
    # epsilon_greedy: with probability `amount` a uniformly random one-hot action.
    random = tf.one_hot(tf.random.uniform(tf.shape(action)[:1], 0, self._action_size, tf.int32), self._action_size)
    explore = tf.random.uniform(tf.shape(action)[:1]) < amount
    return tf.where(explore[:, None], random, action)

  def _openloop(self, data):
    """Truth, model and error video: 5 context frames, then open-loop predictions."""
    data = self._strategy.experimental_local_results(data)[0]  # First replica's share.
    data = self.preprocess({k: v[:6] for k, v in data.items()})
    embed = self.encoder(data['image'])
    post, _ = self.dynamics.observe(embed[:, :5], data['action'][:, :5])
    recon = self.decoder(self.dynamics.get_feat(post)).mode()
    init = {k: v[:, -1] for k, v in post.items()}
    prior = self.dynamics.imagine(data['action'][:, 5:], init)
    openloop = self.decoder(self.dynamics.get_feat(prior)).mode()
    truth = data['image'] + 0.5
    model = tf.concat([recon, openloop], 1) + 0.5
    error = (model - truth + 1) / 2
    video = tf.concat([truth, model, error], 2)  # Stack vertically: [B, T, 3H, W, C].
    video = tf.concat(tf.unstack(video, axis=0), 2)  # Batch side by side: [T, 3H, BW, C].
    return tf.cast(tf.clip_by_value(video, 0, 1) * 255, tf.uint8)


class Policy:
  """The agent's acting interface for `wrappers.simulate`: numpy in, numpy out."""

  def __init__(self, agent, sample, amount):
    self._agent = agent
    self._sample = tf.constant(sample)
    self._amount = tf.constant(amount, tf.float32)

  def __call__(self, obs, reset, state):
    if state is None:
      state = self._agent.initial_state(len(reset))
    action, state = self._agent.policy_step(obs['image'], reset, state, self._sample, self._amount)
    return action.numpy(), state


def random_policy(act_space, seed):
  rng = np.random.default_rng(seed)
  return lambda obs, reset, state: (np.stack([act_space.sample(rng) for _ in reset]), None)


# How the exploration amount falls (--expl_schedule), from expl_amount at the start:
# the authors' TF2 code halves it every expl_decay env steps (dreamer.py,
# Dreamer._exploration); their TF1 code lowers it linearly to expl_min over
# expl_decay updates (scripts/configs.py, discrete; tools/schedule.py, linear).
EXPLORATION_SCHEDULES = dict(
    half_life=lambda c, step, updates: c.expl_amount * 0.5 ** (step / c.expl_decay),
    linear=lambda c, step, updates: c.expl_amount + (c.expl_min - c.expl_amount) * min(1.0, updates / c.expl_decay),
)


def exploration_amount(config, step, updates):
  """The exploration amount after `step` env steps and `updates` gradient updates:
  expl_amount, lowered by the schedule when expl_decay is set, floored at expl_min."""
  amount = config.expl_amount
  if config.expl_decay:
    amount = EXPLORATION_SCHEDULES[config.expl_schedule](config, step, updates)
  return max(config.expl_min, amount)


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
  with tools.writing(logdir / runs.LOCK_FILE):
    stale = runs.lock_logdir(logdir)
  if stale:
    print(f'Warning: took over the lock of {logdir} from {runs.describe(stale)}, which is no longer running.', file=sys.stderr)


def run_checkpoints(logdir, agent, keep):
  """The checkpoints of a run and their counters: the env step each was saved at
  and the last period of each schedule that ran (so a resumed run keeps its
  schedules). Checkpoints of older versions may lack some counters."""
  counters = {name: tf.Variable(-1, dtype=tf.int64) for name in ('step', 'eval', 'log', 'openloop_video', 'policy_video')}
  return tools.Checkpoints(pathlib.Path(logdir) / 'checkpoints', dict(agent=agent, **counters), keep, optional=counters), counters


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
    wrappers.simulate(Policy(agent, False, config.eval_noise), envs, episodes=config.eval_episodes, callbacks=[episodes.append])
  finally:
    for env in envs:
      env.close()
  returns = [float(episode['reward'].sum()) for episode in episodes]
  result = dict(returns=returns, mean=float(np.mean(returns)), std=float(np.std(returns)), step=int(counters['step'].numpy()), checkpoint=folder.name)
  tools.atomic_write(logdir / 'eval.json', lambda f: f.write(json.dumps(result, indent=2).encode()))
  tools.atomic_write(logdir / 'eval.gif', lambda f: f.write(tools.gif(episodes[0]['image'])))
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
  tools.atomic_write(logdir / 'config.json', lambda f: f.write(json.dumps(settings, indent=2).encode()))
  print(configs.describe_config(config, logdir / 'config.json'), flush=True)
  train_dir, test_dir = logdir / 'episodes', logdir / 'test_episodes'
  step = tools.count_steps(train_dir, config.action_repeat)
  logger = tools.Logger(logdir, step, config.steps)

  def log_episode(prefix, directory, episode):
    logger.scalar(f'{prefix}/return', float(episode['reward'].sum()))
    logger.scalar(f'{prefix}/length', (len(episode['reward']) - 1) * config.action_repeat)
    logger.scalar(f'{prefix}/episodes', len(list(directory.glob('*.npz'))), mean=False)

  test_episodes = []
  train_callbacks = [functools.partial(tools.save_episode, train_dir), functools.partial(log_episode, 'train', train_dir)]
  test_callbacks = [functools.partial(tools.save_episode, test_dir), functools.partial(log_episode, 'test', test_dir), test_episodes.append]
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
      step = tools.count_steps(train_dir, config.action_repeat)
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

    episodes = tools.Episodes(train_dir)
    dataset = tools.make_dataset(
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
        wrappers.simulate(Policy(agent, False, config.eval_noise), test_envs, episodes=config.eval_episodes, callbacks=test_callbacks + [report])
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
          Policy(agent, True, amount), train_envs, steps=agent_steps(config, collect),
          episodes=config.collect_episodes, state=env_state, callbacks=train_callbacks)
      step = tools.count_steps(train_dir, config.action_repeat)
    save(step)  # The schedules' counters of the last phase.
  finally:
    for env in train_envs + test_envs:
      env.close()


class Trainer:
  """Runs training phases, shows how far a long one is (README, Console), and stops
  the run when an optimiser has skipped `patience` non-finite updates in a row
  (SPEC 6)."""

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
      line += f'phase took {tools.duration(now - self._start)}'
    else:
      line += f'phase ETA {tools.duration((self._total - done) * rate)}'
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
EXIT_CODES = {runs.LogdirInUse: 2, tools.WriteError: 3, RunError: 1}


if __name__ == '__main__':
  try:
    main(configs.parse_args())
  except tuple(EXIT_CODES) as e:
    if os.environ.get('DREAMER_TRACEBACK') == '1':
      raise
    print(f'Error: {e}', file=sys.stderr)
    sys.exit(next(code for kind, code in EXIT_CODES.items() if isinstance(e, kind)))
