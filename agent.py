"""The Dreamer agent (Hafner et al., ICLR 2020): world model, actor and value,
their train step and the policy that acts with them."""

import functools

import numpy as np

import tf_startup  # noqa: F401 (first: imports TensorFlow with its start-up messages filtered)
import tensorflow as tf

import models
import tools


class Reconstruction:
  """--objective reconstruction (ALGORITHM 3.1): the images' log-likelihood under a
  decoder of the features."""

  def __init__(self, c):
    self.heads = dict(decoder=models.ConvDecoder(c.cnn_depth, c.cnn_act, layers=c.layer_impl))

  def __call__(self, image, embed, post, feat):
    """The log-likelihood terms and the golden file's outputs of the image term."""
    dist = self.heads['decoder'](feat)
    return dict(image=tf.reduce_mean(dist.log_prob(image))), dict(image_mean=dist.mean())


class Contrastive:
  """--objective contrastive (ALGORITHM 3.3): an InfoNCE bound of a state model
  q(target | o_t) of the image embedding, paper eq. 12 as written: normalised over
  the batch's images for each state. The target is z_t ('stoch') or s_t = [z_t, h_t]
  ('feat'); the model has `layers` of num_units and DenseHead's min_std, init_std."""

  target, layers, min_std, init_std = 'stoch', 2, 0.1, None

  def __init__(self, c):
    size = c.stoch_size + (c.deter_size if self.target == 'feat' else 0)
    self.heads = dict(state_model=models.DenseHead(
        (size,), self.layers, c.num_units, 'normal_std', c.dense_act, self.min_std, self.init_std))

  def nce(self, log_q, batch, length):
    return tools.info_nce(log_q)

  def __call__(self, image, embed, post, feat):
    flat = lambda x: tf.reshape(x, [-1, x.shape[-1]])  # Every observation of the batch.
    target = models.as_float32(flat(feat if self.target == 'feat' else post['stoch']))
    dist = self.heads['state_model'](flat(embed)).distribution  # Normal(loc, scale) [N, size].
    log_q = tools.log_density_matrix(target, dist.loc, dist.scale)
    return dict(contrastive=tf.reduce_mean(self.nce(log_q, *feat.shape[:2]))), {}


class ContrastiveTF1(Contrastive):
  """--objective contrastive_tf1 (ALGORITHM 3.3.1): what the authors' TF1 code computes
  (scripts/configs.py, cpc_head and cpc_contrast 'window'; training/utility.py,
  compute_cpc_loss): normalised over a window of 10 sequences x 30 time shifts of
  states for each image, the whole model state as the target, 3 layers, std
  softplus(x + softplus^-1(1)) + 0.01."""

  target, layers, min_std, init_std = 'feat', 3, 0.01, 1.0

  def nce(self, log_q, batch, length):
    return tools.info_nce_window(log_q, batch, length, 10, 30)


class RewardOnly:
  """--objective reward (ALGORITHM 3.4): no image term."""

  heads = {}

  def __init__(self, c):
    pass

  def __call__(self, image, embed, post, feat):
    return {}, {}


OBJECTIVES = dict(reconstruction=Reconstruction, contrastive=Contrastive, contrastive_tf1=ContrastiveTF1, reward=RewardOnly)


def lambda_returns(reward, value, pcont, lambda_):
  """Dreamer's returns of imagined steps [H, N]: lambda-returns of the first H - 1
  steps bootstrapped with the last value (paper eq. 6), weighted by the cumulative
  continuation before each step (paper section 3), as the authors' TF2 code computes
  them (dreamer.py, Dreamer._train)."""
  returns = tools.lambda_return(reward[:-1], value[:-1], pcont[:-1], value[-1], lambda_)
  weights = tf.stop_gradient(tf.math.cumprod(tf.concat([tf.ones_like(pcont[:1]), pcont[:-2]], 0), 0))
  return returns, weights


def reward_returns(reward, pcont):
  """The no-value ablation's returns (paper eq. 4, Fig. 4 and 7): from every imagined
  step t the discounted return of the H imagined rewards, R_t = r_t + c_t R_{t+1} with
  R_H = 0, each step weighted 1, as the authors' TF1 code's actor-only setting
  computes them (training/utility.py, compute_action_values without a value head;
  control/temporal_difference.py, discounted_return). Eq. 4 writes the sum
  undiscounted; their code discounts it by gamma (or the continuation head)."""
  returns = tools.lambda_return(reward, tf.zeros_like(reward), pcont, tf.zeros_like(reward[-1]), 1.0)
  return returns, tf.ones_like(returns)


def actor_head(c, action_size):
  return models.ActionHead(action_size, 4, c.num_units, c.action_dist, c.dense_act, init_std=c.action_init_std)


class ActorValue:
  """--behavior dreamer (ALGORITHM 4.2-4.3): an actor that maximises lambda-returns
  bootstrapped with a value head, which regresses them."""

  def __init__(self, c, action_size):
    self.heads = dict(actor=actor_head(c, action_size), value=models.DenseHead((), 3, c.num_units, 'normal', c.dense_act))

  def act(self, agent, latent, sample):
    dist = self.heads['actor'](agent.dynamics.get_feat(latent))
    return tf.cond(sample, dist.sample, dist.mode)

  def losses(self, imag_feat, reward, pcont, lambda_):
    """Values, the returns the actor maximises, their weights and the value loss
    (paper eq. 6 and 8)."""
    value_dist = self.heads['value'](imag_feat)
    value = value_dist.mode()
    returns, weights = lambda_returns(reward, value, pcont, lambda_)
    # Regresses v(f_t) on the stopped returns, first H-1 steps.
    value_loss = -tf.reduce_mean(weights * value_dist[:-1].log_prob(tf.stop_gradient(returns)))
    return dict(value=value, returns=returns, weights=weights, value_loss=value_loss)


class ActorOnly(ActorValue):
  """--behavior no_value (ALGORITHM 4.4): the actor alone, maximising the discounted
  returns of the imagined rewards."""

  def __init__(self, c, action_size):
    self.heads = dict(actor=actor_head(c, action_size))

  def losses(self, imag_feat, reward, pcont, lambda_):
    returns, weights = reward_returns(reward, pcont)
    return dict(returns=returns, weights=weights, value_loss=tf.constant(0.0))


class Planner:
  """--behavior planet (ALGORITHM 4.4): no actor or value; PlaNet's cross-entropy
  method plans every action."""

  heads = {}

  def __init__(self, c, action_size):
    self._c, self._action_size = c, action_size

  def act(self, agent, latent, sample):
    """The first of the action sequence that the cross-entropy method finds best for
    the predicted rewards summed over planet_horizon imagined steps from the current
    posterior state."""
    c = self._c

    def total_reward(actions):  # [B, N, H, A] candidate sequences -> [B, N].
      batch, candidates = tf.shape(actions)[0], tf.shape(actions)[1]
      start = {k: tf.repeat(v, candidates, 0) for k, v in latent.items()}
      states = agent.dynamics.imagine(tf.reshape(actions, [-1, c.planet_horizon, self._action_size]), start)
      reward = agent.reward(agent.dynamics.get_feat(states)).mode()
      return tf.reshape(tf.reduce_sum(reward, 1), [batch, candidates])

    shape = [tf.shape(latent['deter'])[0], c.planet_horizon, self._action_size]
    return tools.cem(total_reward, shape, c.planet_iterations, c.planet_candidates, c.planet_top)[:, 0]


BEHAVIORS = dict(dreamer=ActorValue, no_value=ActorOnly, planet=Planner)


class Dreamer(tf.Module):
  """World model, behavior and their optimisers (ALGORITHM 2-6). The train step's
  stages are public for the golden check and the benchmark: model_outputs and
  model_loss, imagine_ahead, behavior_outputs and behavior_losses, gradients and
  behavior_gradients."""

  def __init__(self, config, action_size):
    """Build under `strategy.scope()` to train with a tf.distribute strategy."""
    super().__init__(name='dreamer')
    c = self._c = config
    self._strategy = tf.distribute.get_strategy()
    self.encoder = models.ConvEncoder(c.cnn_depth, c.cnn_act)
    self.dynamics = models.RSSM(c.stoch_size, c.deter_size, c.deter_size, c.dense_act, batch_noise=c.batch_noise)
    # The image term (ALGORITHM 3) and the behavior (ALGORITHM 4), chosen by the flags.
    # Their heads are attributes of the agent, as in checkpoints: decoder or
    # state_model; actor and value.
    self.objective = OBJECTIVES[c.objective](c)
    self.reward = models.DenseHead((), 2, c.num_units, 'normal', c.dense_act)
    self.pcont = models.DenseHead((), 3, c.num_units, 'binary', c.dense_act) if c.pcont else None
    self.behavior = BEHAVIORS[c.behavior](c, action_size)
    for name, head in {**self.objective.heads, **self.behavior.heads}.items():
      setattr(self, name, head)
    optimizer = functools.partial(
        tools.Optimizer, eps=c.adam_epsilon, clip=c.grad_clip, wd=c.weight_decay,
        wd_pattern=c.weight_decay_pattern, loss_scaling=c.precision == '16')
    self.model_opt = optimizer('model', c.model_lr)
    learning_rates = dict(actor=c.actor_lr, value=c.value_lr)
    for name in self.behavior.heads:  # actor_opt, value_opt: only for the behavior's heads.
      setattr(self, f'{name}_opt', optimizer(name, learning_rates[name]))
    self.updates = tf.Variable(0, dtype=tf.int64, trainable=False)
    self._action_size = action_size
    self._build()
    # Control flow on tensors is written as tf.cond, tf.scan and tf.while_loop, so
    # AutoGraph's source conversion (over half of the tracing time) is not needed.
    graph_function = functools.partial(tf.function, autograph=False)
    self.train = graph_function(self._train)
    self.policy_step = graph_function(self._policy)
    self.openloop = graph_function(self._openloop) if 'decoder' in self.objective.heads else None

  def _build(self):
    """Create every variable eagerly on a tiny batch, so that each compiled
    function is traced exactly once."""
    image = tf.zeros([1, 1, 64, 64, 3])
    embed = self.encoder(image)
    post, _ = self.dynamics.observe(embed, tf.zeros([1, 1, self._action_size]))
    feat = self.dynamics.get_feat(post)
    heads = dict(reward=self.reward, pcont=self.pcont, **self.objective.heads, **self.behavior.heads)
    # A head names its layers (dense_<n>) when first called: this order keeps the
    # names, and the initial weights of a seed, of earlier versions; heads it does
    # not name come after, in their order above.
    order = ('decoder', 'reward', 'actor', 'pcont', 'value')
    for name in sorted(filter(heads.get, heads), key=lambda n: order.index(n) if n in order else len(order)):
      heads[name](embed if name == 'state_model' else feat)  # The state model reads o_t alone.
    for opt, variables in self.optimizers().values():
      opt.build(variables)

  def optimizers(self):
    """Name -> (optimiser, variables): the world model's ('model'), then those of
    the behavior's heads ('actor', 'value')."""
    world_model = [self.encoder, self.dynamics, *self.objective.heads.values(), self.reward, self.pcont]
    modules = dict(model=world_model, **{name: [head] for name, head in self.behavior.heads.items()})
    return {name: (getattr(self, f'{name}_opt'), [v for m in filter(None, mods) for v in m.trainable_variables])
            for name, mods in modules.items()}

  def _train(self, data, noise=None):
    """One update of the world model, actor and value from one (distributed) batch:
    every replica computes gradients of its share, they are summed across replicas,
    then each optimiser applies them unless they are not finite (ALGORITHM 6).
    `noise`, if given, holds every standard-normal draw of the step (see `gradients`)."""
    grads, metrics, feat = self._strategy.run(self.gradients, (data, noise))
    metrics = {k: self._strategy.reduce('mean', v, axis=None) for k, v in metrics.items()}
    optimizers = self.optimizers()
    for name, (opt, variables) in optimizers.items():
      apply = functools.partial(self._strategy.run, opt.apply, (grads[name], variables))
      if opt.loss_scaling:  # The loss-scale optimiser (float16) skips non-finite steps itself.
        apply()
      else:
        tf.cond(metrics[f'{name}_skipped'] == 0, apply, lambda: None)
    if 'actor' in optimizers:  # As the authors' TF2 code logs it: the updated actor on the batch's posterior.
      entropy = self._strategy.run(lambda f: tf.reduce_mean(self.actor(f).entropy()), (feat,))
      metrics['action_ent'] = self._strategy.reduce('mean', entropy, axis=None)
    self.updates.assign_add(1)
    metrics.update({f'{name}_loss_scale': opt.loss_scale() for name, (opt, _) in optimizers.items() if opt.loss_scaling})
    return metrics

  def gradients(self, data, noise=None):
    """Losses, replica-summed gradients by optimiser name and the posterior
    features; all forward passes use the weights before the update. Imagination
    starts from stopped states, so the world-model tape can be released before it.
    `noise`: None to draw every sample here, or dict(observe=, imagine=) of draws
    for `model_loss` and `imagine_ahead`."""
    noise = noise or {}
    data = self.preprocess(data)
    behavior = self.optimizers()
    model_opt, model_vars = behavior.pop('model')
    grads = {}
    with tf.GradientTape() as tape:
      model_loss, post, metrics = self.model_loss(data, noise.get('observe'))
    metrics['model_grad_norm'], metrics['model_skipped'], grads['model'] = model_opt.gradients(tape, model_loss, model_vars)
    metrics['model_loss'] = model_loss
    if behavior:  # PlaNet's planner learns nothing in imagination.
      # A graph runs independent work in any order: start imagination only once the
      # world-model backward pass has freed its activations, or both peak together.
      with tf.control_dependencies(grads['model']):
        post = tf.nest.map_structure(tf.identity, post)
      behavior_grads, behavior_metrics = self.behavior_gradients(post, noise.get('imagine'), behavior)
      grads.update(behavior_grads)
      metrics.update(behavior_metrics)
    return grads, metrics, self.dynamics.get_feat(post)

  def behavior_gradients(self, post, noise, optimizers):
    """Actor (and value) gradients by name and metrics from imagination (ALGORITHM
    4); `optimizers`: those of `optimizers()` for 'actor' and, if learned, 'value'."""
    actor_opt, actor_vars = optimizers['actor']
    value_opt, value_vars = optimizers.get('value', (None, []))
    grads, metrics = {}, {}
    # One non-persistent tape per loss, the value tape watching only the value head:
    # a persistent tape, or one that sees the imagination loop without needing its
    # gradient, materialises zeros for every activation the loop keeps (0.5 GB).
    with tf.GradientTape() as actor_tape, tf.GradientTape(watch_accessed_variables=False) as value_tape:
      value_tape.watch(value_vars)
      imag_feat = self.imagine_ahead(post, noise)
      actor_loss, value_loss, behavior_metrics = self.behavior_losses(imag_feat)
    metrics['actor_grad_norm'], metrics['actor_skipped'], grads['actor'] = actor_opt.gradients(actor_tape, actor_loss, actor_vars)
    if value_opt:
      metrics['value_grad_norm'], metrics['value_skipped'], grads['value'] = value_opt.gradients(value_tape, value_loss, value_vars)
      metrics['value_loss'] = value_loss
    metrics.update(behavior_metrics, actor_loss=actor_loss)
    return grads, metrics

  def model_loss(self, data, noise=None):
    """World-model loss (ALGORITHM 3), posterior states and metrics; `noise` as for
    `RSSM.observe`."""
    out = self.model_outputs(data, noise)
    metrics = {k: v for k, v in out.items() if k.endswith('_loss') and k not in ('kl_loss', 'model_loss')}
    metrics.update(
        kl=tf.reduce_mean(out['kl']),
        prior_ent=tf.reduce_mean(self.dynamics.get_dist(out['prior']).entropy()),
        post_ent=tf.reduce_mean(self.dynamics.get_dist(out['post']).entropy()))
    return out['model_loss'], out['post'], metrics

  def model_outputs(self, data, noise=None):
    """Every intermediate of the world-model loss, named as in the golden file
    (docs/REFERENCE.md): states, features, head means, KL per step, loss terms."""
    c = self._c
    embed = self.encoder(data['image'])
    post, prior = self.dynamics.observe(embed, data['action'], noise=noise)
    feat = self.dynamics.get_feat(post)
    reward = self.reward(feat)
    likes, out = self.objective(data['image'], embed, post, feat)
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

  def imagine_ahead(self, post, noise=None):
    """Features [H, N, F] of H imagined steps from every posterior state (ALGORITHM
    4.1). `noise`, if given, is dict(stoch=[H, N, stoch], action=[H, N, A]): the
    standard-normal draws of the imagined states and of the actor's samples."""

    def step(prev, x):
      feat = tf.stop_gradient(self.dynamics.get_feat(prev))
      action = self.actor(feat).sample(noise=x.get('action'))
      return self.dynamics.img_step(prev, action, x.get('stoch'))

    states = models.sequential_scan(step, dict(step=tf.range(self._c.horizon), **(noise or {})), self.imagine_start(post))
    return self.dynamics.get_feat(states)

  def imagine_start(self, post):
    """The stopped posterior states [N, ...] imagination starts from (ALGORITHM 4.1)."""
    if self.pcont:  # The last step may be terminal.
      post = {k: v[:, :-1] for k, v in post.items()}
    flatten = lambda x: tf.reshape(x, [-1] + x.shape[2:].as_list())
    return {k: flatten(tf.stop_gradient(v)) for k, v in post.items()}

  def behavior_losses(self, imag_feat):
    """Actor and value losses and metrics (ALGORITHM 4.3)."""
    out = self.behavior_outputs(imag_feat)
    metrics = dict(imag_reward=tf.reduce_mean(out['reward']), imag_return=tf.reduce_mean(out['returns']))
    return out['actor_loss'], out['value_loss'], metrics

  def behavior_outputs(self, imag_feat):
    """Imagined rewards, continuations, then the behavior's values, returns, weights
    and actor and value losses (ALGORITHM 4.2-4.4), named as in the golden file."""
    c = self._c
    reward = self.reward(imag_feat).mode()
    if self.pcont:
      pcont = self.pcont(imag_feat).mean()
    else:
      pcont = c.discount * tf.ones_like(reward)
    out = dict(reward=reward, pcont=pcont, **self.behavior.losses(imag_feat, reward, pcont, c.disclam))
    out['actor_loss'] = -tf.reduce_mean(out['weights'] * out['returns'])  # Paper eq. 7.
    return out

  def preprocess(self, data):
    """uint8 images to [-0.5, 0.5] floats (ALGORITHM 2.5); optional reward squashing."""
    data = dict(data)
    data['image'] = tools.image_to_float(data['image'])
    if self._c.clip_rewards == 'tanh' and 'reward' in data:  # The policy passes images only.
      data['reward'] = tf.tanh(data['reward'])
    return data

  def initial_state(self, batch_size):
    return self.dynamics.initial(batch_size), tf.zeros([batch_size, self._action_size])

  def _policy(self, image, reset, state, sample, amount):
    """One agent step: filter the latent state, act, explore (ALGORITHM 5)."""
    latent, action = state
    keep = 1.0 - tf.cast(reset, tf.float32)[:, None]
    latent = {k: v * tf.cast(keep, v.dtype) for k, v in latent.items()}
    action = action * keep
    embed = self.encoder(self.preprocess({'image': image})['image'])
    latent, _ = self.dynamics.obs_step(latent, action, embed)
    action = self.behavior.act(self, latent, sample)
    # No exploration at amount 0: evaluation adds noise only with --eval_noise > 0.
    action = tf.cond(amount > 0, lambda: self._explore(action, amount), lambda: action)
    return action, (latent, action)

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

  def __init__(self, agent, *, sample, amount):
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
