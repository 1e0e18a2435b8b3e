import io

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from agent import BEHAVIORS, OBJECTIVES, Dreamer, Policy, exploration_amount, reward_returns
import configs
import dreamer

tfd = tfp.distributions


def tiny_config(*flags):
  return configs.parse_args([
      '--logdir', '/tmp/unused', '--task', 'dmc_cartpole_balance', '--configs', 'debug',
      '--batch_size', '3', '--batch_length', '6', *flags])


def random_batch(config, action_size=2, seed=0):
  rng = np.random.default_rng(seed)
  shape = (config.batch_size, config.batch_length)
  return dict(
      image=rng.integers(0, 256, shape + (64, 64, 3), dtype=np.uint8),
      action=rng.uniform(-1, 1, shape + (action_size,)).astype(np.float32),
      reward=rng.normal(size=shape).astype(np.float32),
      discount=np.ones(shape, np.float32))


def model_loss(agent, config, batch):
  tf.random.set_seed(0)
  loss, _, metrics = agent.model_loss(agent.preprocess(batch))
  return float(loss), {k: float(v) for k, v in metrics.items()}


def test_free_nats_clip_active_below_threshold_and_inactive_above():
  config = tiny_config()
  agent = Dreamer(config, 2)
  batch = random_batch(config)
  _, metrics = model_loss(agent, config, batch)
  likes = metrics['image_loss'] + metrics['reward_loss']
  kl = metrics['kl']
  assert kl < 3  # A fresh model's prior and posterior are close.
  config.free_nats = 3.0
  loss, _ = model_loss(agent, config, batch)
  assert loss == pytest.approx(3.0 + likes, rel=1e-5)
  config.free_nats = kl / 2  # Below the KL: the clip is inactive.
  loss, _ = model_loss(agent, config, batch)
  assert loss == pytest.approx(kl + likes, rel=1e-5)


def test_free_nats_per_step_clips_each_step_before_averaging():
  config = tiny_config('--free_nats_per_step', 'True')
  agent = Dreamer(config, 2)
  batch = random_batch(config)
  tf.random.set_seed(0)
  data = agent.preprocess(batch)
  post, prior = agent.dynamics.observe(agent.encoder(data['image']), data['action'])
  kl = agent.dynamics.get_dist(post).kl_divergence(agent.dynamics.get_dist(prior)).numpy()
  config.free_nats = float(np.median(kl))  # Half the steps are clipped.
  loss, metrics = model_loss(agent, config, batch)
  likes = metrics['image_loss'] + metrics['reward_loss']
  assert loss == pytest.approx(np.maximum(kl, config.free_nats).mean() + likes, rel=1e-5)


def test_behavior_losses_match_numpy_lambda_returns_and_discount_weights():
  config = tiny_config('--discount', '0.9', '--disclam', '0.8')
  agent = Dreamer(config, 2)
  feat = tf.random.normal([5, 7, config.stoch_size + config.deter_size])
  actor_loss, value_loss, _ = agent.behavior_losses(feat)
  reward = agent.reward(feat).mean().numpy()
  value = agent.value(feat).mean().numpy()
  returns = np.zeros_like(reward[:-1])
  last = value[-1]
  for t in reversed(range(4)):  # R_t = r_t + g((1 - l) v_{t+1} + l R_{t+1}).
    returns[t] = reward[t] + 0.9 * (0.2 * value[t + 1] + 0.8 * last)
    last = returns[t]
  weights = 0.9 ** np.arange(4)[:, None]  # cumprod([1, g, g, g]).
  assert float(actor_loss) == pytest.approx(-np.mean(weights * returns), rel=1e-4)
  squared = 0.5 * (returns - value[:-1]) ** 2 + 0.5 * np.log(2 * np.pi)
  assert float(value_loss) == pytest.approx(np.mean(weights * squared), rel=1e-4)


def variables_of(*modules):
  return [v.numpy().copy() for m in modules for v in m.trainable_variables]


def changed(before, modules):
  return [not np.array_equal(b, v.numpy()) for b, v in zip(before, [v for m in modules for v in m.trainable_variables])]


def test_actor_gradient_reaches_dynamics_but_only_actor_optimiser_updates_actor():
  config = tiny_config('--model_lr', '0', '--value_lr', '0')
  agent = Dreamer(config, 2)
  world = [agent.encoder, agent.dynamics, agent.decoder, agent.reward]
  data = agent.preprocess(random_batch(config))
  with tf.GradientTape(persistent=True) as tape:
    _, post, _ = agent.model_loss(data)
    actor_loss, value_loss, _ = agent.behavior_losses(agent.imagine_ahead(post))
  actor_grads = tape.gradient(actor_loss, agent.actor.trainable_variables)
  assert all(g is not None and np.abs(g.numpy()).sum() > 0 for g in actor_grads)
  # The analytic gradient flows through the learned dynamics and reward head...
  dynamics_grads = tape.gradient(actor_loss, agent.dynamics.trainable_variables)
  assert any(g is not None and np.abs(g.numpy()).sum() > 0 for g in dynamics_grads)
  # ...but imagination starts from stopped posterior states: no encoder gradient.
  assert all(g is None for g in tape.gradient(actor_loss, agent.encoder.trainable_variables))
  # The value regresses stopped returns: no gradient into the reward head.
  assert all(g is None for g in tape.gradient(value_loss, agent.reward.trainable_variables))
  before_world, before_value, before_actor = variables_of(*world), variables_of(agent.value), variables_of(agent.actor)
  agent.train(random_batch(config))
  assert not any(changed(before_world, world))
  assert not any(changed(before_value, [agent.value]))
  assert all(changed(before_actor, [agent.actor]))


def test_train_step_losses_finite_and_model_loss_falls_on_fixed_batch():
  tf.random.set_seed(0)
  config = tiny_config('--model_lr', '3e-3')
  agent = Dreamer(config, 2)
  batch = random_batch(config)
  batch['image'][:] = np.linspace(0, 255, 64, dtype=np.uint8)[:, None, None]  # Learnable.
  # The image loss of a unit-variance Normal is at least 0.5 log(2 pi) per pixel.
  floor = 64 * 64 * 3 * 0.5 * np.log(2 * np.pi)
  losses = []
  for _ in range(30):
    metrics = agent.train(batch)
    assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
    losses.append(float(metrics['model_loss']) - floor)
  assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
  assert int(agent.updates) == 30


def test_train_and_policy_are_traced_once():
  config = tiny_config()
  agent = Dreamer(config, 2)
  for seed in range(3):
    agent.train(random_batch(config, seed=seed))
  assert agent.train.experimental_get_tracing_count() == 1
  policy = Policy(agent, sample=True, amount=0.3)
  evaluate = Policy(agent, sample=False, amount=0.0)
  state = None
  rng = np.random.default_rng(0)
  for step in range(4):
    image = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    action, state = (policy if step % 2 else evaluate)({'image': image}, np.array([step == 0, False]), state)
    assert action.shape == (2, 2) and np.all(np.abs(action) <= 1)
  assert agent.policy_step.experimental_get_tracing_count() == 1


def test_policy_reset_zeroes_state_of_that_environment_only():
  config = tiny_config()
  agent = Dreamer(config, 2)
  image = np.zeros((2, 64, 64, 3), np.uint8)
  policy = Policy(agent, sample=False, amount=0.0)
  _, state = policy({'image': image}, np.array([True, True]), None)
  fresh = agent.initial_state(2)
  _, (latent, _) = policy({'image': image}, np.array([True, False]), state)
  # Env 0 restarted from the zero state, env 1 continued from `state`.
  tf.random.set_seed(0)
  expected_fresh, _ = agent.dynamics.obs_step(fresh[0], fresh[1], agent.encoder(agent.preprocess({'image': image})['image']))
  np.testing.assert_allclose(latent['deter'][0], expected_fresh['deter'][0], rtol=1e-5)
  assert not np.allclose(latent['deter'][1], expected_fresh['deter'][1])


@pytest.mark.parametrize('expl, check', [
    ('additive_gaussian', lambda a: np.all(np.abs(a) <= 1) and a.std() > 0.1),
    ('completely_random', lambda a: np.all(np.abs(a) <= 1) and abs(a.mean()) < 0.1),
])
def test_exploration_modes(expl, check):
  config = tiny_config('--expl', expl)
  agent = Dreamer(config, 2)
  action = agent._explore(tf.zeros([2000, 2]), tf.constant(0.3)).numpy()
  assert check(action)


def test_epsilon_greedy_replaces_a_fraction_of_actions_with_random_one_hots():
  config = tiny_config('--expl', 'epsilon_greedy', '--action_dist', 'onehot')
  agent = Dreamer(config, 4)
  greedy = tf.one_hot(tf.zeros([4000], tf.int32), 4)
  action = agent._explore(greedy, tf.constant(0.4)).numpy()
  assert np.all(action.sum(-1) == 1)
  # A random one-hot differs from the greedy one with probability 3/4.
  assert np.mean(action[:, 0] == 0) == pytest.approx(0.4 * 0.75, abs=0.03)


def test_exploration_amount_decays_by_half_life_to_floor():
  config = tiny_config('--expl_amount', '0.4', '--expl_decay', '1000', '--expl_min', '0.15')
  assert exploration_amount(config, 0, 50) == pytest.approx(0.4)
  assert exploration_amount(config, 1000, 50) == pytest.approx(0.2)
  assert exploration_amount(config, 5000, 50) == pytest.approx(0.15)


def test_atari_exploration_falls_linearly_in_updates_as_the_tf1_schedule_does():
  config = tiny_config('--configs', 'atari', 'debug')
  assert (config.expl_amount, config.expl_schedule, config.expl_decay, config.expl_min) == (0.4, 'linear', 1.5e5, 0.1)
  # TF1: 0.4 * max(0.25, 1 - step / 1e7) with its step counting 50 per update.
  for updates in (0, 1000, 75000, 149000, 150000, 400000):
    expected = 0.4 * max(0.25, 1 - 50 * updates / 1e7)
    assert exploration_amount(config, 123456, updates) == pytest.approx(expected, rel=1e-6)
  assert exploration_amount(config, 0, 75000) == pytest.approx(0.25)  # Half way, whatever the env steps.


def test_reward_returns_are_discounted_sums_of_all_h_rewards_from_each_step_by_hand():
  reward = tf.constant([[1.0], [2.0], [3.0]])
  pcont = tf.constant([[0.5], [0.5], [0.5]])
  returns, weights = reward_returns(reward, pcont)
  # R_2 = 3; R_1 = 2 + 0.5 * 3 = 3.5; R_0 = 1 + 0.5 * 3.5 = 2.75.
  np.testing.assert_allclose(returns.numpy()[:, 0], [2.75, 3.5, 3.0])
  np.testing.assert_array_equal(weights.numpy(), np.ones((3, 1)))


def test_no_value_ablation_maximises_the_discounted_returns_of_all_imagined_rewards():
  config = tiny_config('--behavior', 'no_value', '--discount', '0.9')
  agent = Dreamer(config, 2)
  assert not hasattr(agent, 'value')
  feat = tf.random.normal([5, 3, config.stoch_size + config.deter_size])
  actor_loss, value_loss, metrics = agent.behavior_losses(feat)
  reward = agent.reward(feat).mean().numpy()  # All 5 imagined rewards, the last included.
  returns = np.array([sum(0.9 ** (k - t) * reward[k] for k in range(t, 5)) for t in range(5)])
  assert float(actor_loss) == pytest.approx(-np.mean(returns), rel=1e-4)
  assert float(metrics['imag_return']) == pytest.approx(np.mean(returns), rel=1e-4)
  assert float(value_loss) == 0


def test_pcont_head_is_trained_and_drops_last_start_state():
  config = tiny_config('--pcont', 'True')
  agent = Dreamer(config, 2)
  data = agent.preprocess(random_batch(config))
  _, post, metrics = agent.model_loss(data)
  assert 'pcont_loss' in metrics
  feat = agent.imagine_ahead(post)
  assert feat.shape[:2] == (config.horizon, config.batch_size * (config.batch_length - 1))
  assert np.isfinite(float(agent.train(random_batch(config))['model_loss']))


def test_shared_batch_noise_shares_imagined_state_noise_but_not_the_actors():
  config = tiny_config('--batch_noise', 'shared')
  agent = Dreamer(config, 2)
  data = agent.preprocess(random_batch(config))
  _, post, _ = agent.model_loss(data)
  same = {k: tf.repeat(v[:1, :1], 3, 0) for k, v in post.items()}  # Three equal start states.
  feat = agent.imagine_ahead(same).numpy()
  stoch = feat[..., :config.stoch_size]
  assert not np.allclose(stoch[:, 0], stoch[:, 1])  # The actions differ, so do the states after them.
  prior = agent.dynamics.img_step({k: v[:, 0] for k, v in same.items()}, tf.zeros([3, 2]))
  noise = ((prior['stoch'] - prior['mean']) / prior['std']).numpy()
  np.testing.assert_allclose(noise[1:], np.broadcast_to(noise[:1], noise[1:].shape), atol=1e-5)
  actions = agent.actor(agent.dynamics.get_feat({k: v[:, 0] for k, v in same.items()})).sample().numpy()
  assert not np.allclose(actions[0], actions[1])
  assert np.isfinite(float(agent.train(random_batch(config))['model_loss']))


def test_train_step_with_given_noise_is_reproducible_and_depends_on_it():
  config = tiny_config()
  agent = Dreamer(config, 2)
  batch = random_batch(config)
  rng = np.random.default_rng(3)
  b, t, n, s = config.batch_size, config.batch_length, config.batch_size * config.batch_length, config.stoch_size
  normal = lambda *shape: rng.normal(size=shape).astype(np.float32)
  noise = dict(observe=dict(prior=normal(b, t, s), post=normal(b, t, s)),
               imagine=dict(stoch=normal(config.horizon, n, s), action=normal(config.horizon, n, 2)))
  losses = lambda noise: {k: float(v) for k, v in agent.gradients(batch, noise)[1].items() if k.endswith('_loss')}
  first = losses(noise)
  tf.random.set_seed(123)  # The stored draws, not the global seed, decide the losses.
  assert losses(noise) == first
  noise['imagine']['action'][0, 0, 0] += 1.0
  changed = losses(noise)
  assert changed['model_loss'] == first['model_loss'] and changed['actor_loss'] != first['actor_loss']


def reference_train(agent, config, batch):
  """The straightforward formulation of one update, as in the authors' code:
  Python-unrolled loops and a separate tape per loss, all updates at the end.
  Draws random numbers in the same order as Dreamer._train."""
  data = agent.preprocess(batch)
  dyn = agent.dynamics
  with tf.GradientTape() as model_tape:
    embed = agent.encoder(data['image'])
    state, posts, priors = dyn.initial(config.batch_size), [], []
    for t in range(config.batch_length):
      state, prior = dyn.obs_step(state, data['action'][:, t], embed[:, t])
      posts.append(state)
      priors.append(prior)
    post = {k: tf.stack([s[k] for s in posts], 1) for k in state}
    prior = {k: tf.stack([s[k] for s in priors], 1) for k in state}
    feat = dyn.get_feat(post)
    image = tfd.Independent(tfd.Normal(agent.decoder(feat).mean(), 1.0), 3)  # TFP's own, not distributions.UnitNormal.
    image_like = tf.reduce_mean(image.log_prob(data['image']))
    reward_like = tf.reduce_mean(agent.reward(feat).log_prob(data['reward']))
    kl = tf.reduce_mean(dyn.get_dist(post).kl_divergence(dyn.get_dist(prior)))
    model_loss = tf.maximum(kl, config.free_nats) - image_like - reward_like
  with tf.GradientTape() as actor_tape:
    state = {k: tf.reshape(tf.stop_gradient(v), [-1, v.shape[-1]]) for k, v in post.items()}
    feats = []
    for _ in range(config.horizon):
      action = agent.actor(tf.stop_gradient(dyn.get_feat(state))).sample()
      state = dyn.img_step(state, action)
      feats.append(dyn.get_feat(state))
    imag_feat = tf.stack(feats, 0)
    reward = agent.reward(imag_feat).mode()
    value = agent.value(imag_feat).mode()
    returns, last = [], value[-1]
    for t in reversed(range(config.horizon - 1)):
      last = reward[t] + config.discount * ((1 - config.disclam) * value[t + 1] + config.disclam * last)
      returns.insert(0, last)
    returns = tf.stack(returns, 0)
    weights = config.discount ** tf.range(config.horizon - 1, dtype=tf.float32)[:, None]
    actor_loss = -tf.reduce_mean(weights * returns)
  with tf.GradientTape() as value_tape:
    value_pred = agent.value(imag_feat)[:-1]
    value_loss = -tf.reduce_mean(weights * value_pred.log_prob(tf.stop_gradient(returns)))
  for (opt, variables), loss, tape in zip(agent.optimizers().values(), (model_loss, actor_loss, value_loss), (model_tape, actor_tape, value_tape)):
    grads, norm = tf.clip_by_global_norm(tape.gradient(loss, variables), config.grad_clip)
    opt.opt.apply_gradients(zip(grads, variables))
  agent.actor(feat).entropy()  # Dreamer._train's entropy metric draws its samples last.
  return dict(model_loss=model_loss, actor_loss=actor_loss, value_loss=value_loss)


def test_train_step_matches_straightforward_formulation():
  config = tiny_config('--batch_length', '5')
  fast = Dreamer(config, 2)
  slow = Dreamer(config, 2)
  for a, b in zip(fast.variables, slow.variables):
    b.assign(a)
  batch = random_batch(config)
  tf.random.set_seed(7)
  metrics = fast._train(batch)  # Eager, so both draw noise in the same order.
  tf.random.set_seed(7)
  expected = reference_train(slow, config, batch)
  for name, value in expected.items():
    assert float(metrics[name]) == pytest.approx(float(value), rel=1e-5), name
  for a, b in zip(fast.trainable_variables, slow.trainable_variables):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.name)
  assert any(not np.allclose(a.numpy(), b.numpy()) for a, b in zip(fast.trainable_variables, Dreamer(config, 2).trainable_variables))


def test_action_entropy_is_logged_from_the_updated_actor_on_the_batchs_posterior():
  """As the authors' TF2 code logs it: after all three updates. The one-hot actor's
  entropy has a closed form, so the logged value can be recomputed exactly."""
  config = tiny_config('--action_dist', 'onehot', '--actor_lr', '0.05')
  agent = Dreamer(config, 3)
  batch = random_batch(config, action_size=3)
  rng = np.random.default_rng(0)
  shape = (config.batch_size, config.batch_length, config.stoch_size)
  observe = {k: rng.normal(size=shape).astype(np.float32) for k in ('prior', 'post')}
  data = agent.preprocess(batch)
  post, _ = agent.dynamics.observe(agent.encoder(data['image']), data['action'], noise=observe)
  feat = agent.dynamics.get_feat(post)
  entropy = lambda: float(np.mean(agent.actor(feat).entropy()))
  before = entropy()
  metrics = agent.train(batch, dict(observe=observe))
  after = entropy()
  assert abs(after - before) > 1e-3  # The update moved the actor.
  assert float(metrics['action_ent']) == pytest.approx(after, rel=1e-5)


class SkippingAgent:
  """Stands in for Dreamer: its world-model updates are skipped from update 3 on."""

  def __init__(self):
    self.updates = 0

  def train(self, batch):
    self.updates += 1
    bad = float(self.updates >= 3)
    return dict(model_skipped=bad, model_loss=np.nan if bad else 1.0, actor_skipped=0.0)


def test_trainer_stops_after_patience_non_finite_updates_in_a_row_naming_the_loss():
  trainer = dreamer.Trainer(SkippingAgent(), iter(range(100)), patience=4)
  trainer.train(5)  # Updates 3, 4, 5 skipped: three in a row, below patience.
  with pytest.raises(dreamer.NonFiniteError, match='The model loss or its gradient was not finite for 4 updates in a row'):
    trainer.train(5)
  assert trainer._agent.updates == 6


def test_trainer_streak_resets_after_a_good_update():
  agent = SkippingAgent()
  trainer = dreamer.Trainer(agent, iter(range(100)), patience=3)
  trainer.train(4)  # Two skipped in a row.
  agent.updates = 0  # The next two updates are good again.
  trainer.train(4)
  assert agent.updates == 4


class SteppingClock:
  """A clock for the Trainer: each update advances it by the next of `durations`
  (seconds); counts its reads."""

  def __init__(self, durations):
    self.now, self.reads, self._durations = 0.0, 0, iter(durations)

  def advance(self):
    self.now += next(self._durations)

  def __call__(self):
    self.reads += 1
    return self.now


class TimedAgent:
  """An agent whose every update takes the clock's next duration."""

  def __init__(self, clock):
    self.clock, self.updates = clock, 0

  def train(self, batch):
    self.clock.advance()
    self.updates += 1
    return {}


class Terminal(io.StringIO):
  def isatty(self):
    return True


def timed_phase(durations, out):
  clock = SteppingClock(durations)
  dreamer.Trainer(TimedAgent(clock), iter(range(100)), patience=3, out=out, clock=clock).train(len(durations))
  return clock


def test_long_phase_prints_updates_rate_and_eta_as_plain_lines_into_a_log():
  # The first update builds the graph (20 s), then 8 s each: update k ends at 20 + 8 (k - 1) s.
  out = io.StringIO()
  clock = timed_phase([20] + [8] * 19, out)
  # Past 30 s at update 3 (36 s): (36 - 20) / 2 = 8 s per update, 17 left = 136 s. Plain
  # lines at least 60 s apart: update 11 (100 s; 80 / 10 = 8, 9 left = 72 s) and update 19
  # (164 s; 1 left = 8 s). Then the end, at 172 s.
  assert out.getvalue().splitlines() == [
      'Training: 3/20 updates, 8.00 s/update, phase ETA 2m 16s',
      'Training: 11/20 updates, 8.00 s/update, phase ETA 1m 12s',
      'Training: 19/20 updates, 8.00 s/update, phase ETA 8s',
      'Training: 20/20 updates, 8.00 s/update, phase took 2m 52s']
  assert clock.reads == 21  # One read per update and one at the start: nothing else slows the loop.


def test_long_phase_rewrites_one_line_on_a_terminal_and_a_short_phase_prints_nothing():
  out = Terminal()
  timed_phase([10] * 6, out)  # Updates end at 10, 20, ..., 60 s; shown from 30 s, every second.
  text = out.getvalue()
  assert text.count('\n') == 1 and text.endswith('\n')
  assert [line.removesuffix('\x1b[K') for line in text.rstrip('\n').split('\r')[1:]] == [
      'Training: 3/6 updates, 10.00 s/update, phase ETA 30s',
      'Training: 4/6 updates, 10.00 s/update, phase ETA 20s',
      'Training: 5/6 updates, 10.00 s/update, phase ETA 10s',
      'Training: 6/6 updates, 10.00 s/update, phase took 1m 00s']
  for out in (io.StringIO(), Terminal()):
    timed_phase([9] * 3, out)  # 27 s: below the half minute.
    assert out.getvalue() == ''


def sigmoid_log_likelihood(logits, target):
  """log Bernoulli(target; sigmoid(logits)) for soft targets, in NumPy."""
  return -target * np.logaddexp(0, -logits) - (1 - target) * np.logaddexp(0, logits)


def test_pcont_targets_are_zero_at_an_early_terminal_and_imagined_weights_drop_after_it():
  tf.random.set_seed(0)
  config = tiny_config('--pcont', 'True', '--model_lr', '3e-3', '--discount', '0.9')
  agent = Dreamer(config, 2)
  batch = random_batch(config)
  batch['discount'][0, -1] = 0  # Sequence 0 is an episode that ends early, at its last row.
  # World model: the continuation target is discount * gamma (ALGORITHM 2.4), 0 at the terminal.
  data = agent.preprocess(batch)
  rng = np.random.default_rng(0)
  shape = (config.batch_size, config.batch_length, config.stoch_size)
  noise = dict(prior=rng.normal(size=shape).astype(np.float32), post=rng.normal(size=shape).astype(np.float32))
  _, _, metrics = agent.model_loss(data, noise)
  post, _ = agent.dynamics.observe(agent.encoder(data['image']), data['action'], noise=noise)
  logits = agent.pcont(agent.dynamics.get_feat(post)).distribution.logits.numpy()
  target = np.full(shape[:2], 0.9)
  target[0, -1] = 0.0
  expected = -10 * np.mean(sigmoid_log_likelihood(logits, target))
  assert float(metrics['pcont_loss']) == pytest.approx(expected, rel=1e-5)
  # Once the head has learned the terminal, imagined steps after it get weight ~0.
  for _ in range(150):
    agent.train(batch)
  post, _ = agent.dynamics.observe(agent.encoder(data['image']), data['action'], noise=noise)
  episode = agent.dynamics.get_feat(post)[0]  # [T, F], terminal at T - 1.
  # An imagined sequence that passes through the episode's terminal state, then stays there.
  feat = tf.concat([episode, tf.repeat(episode[-1:], 2, 0)], 0)[:, None]  # [T + 2, 1, F].
  actor_loss, _, _ = agent.behavior_losses(feat)
  pcont = 1 / (1 + np.exp(-agent.pcont(feat).distribution.logits.numpy()[:, 0]))
  reward, value = agent.reward(feat).mean().numpy()[:, 0], agent.value(feat).mean().numpy()[:, 0]
  horizon = len(pcont)
  weights = np.cumprod(np.concatenate([[1.0], pcont[:horizon - 2]]))  # w_t = prod_{k<t} c_k.
  returns, last = np.zeros(horizon - 1), value[-1]
  for t in reversed(range(horizon - 1)):  # ALGORITHM 4.2, paper eq. 6.
    returns[t] = reward[t] + pcont[t] * ((1 - 0.95) * value[t + 1] + 0.95 * last)
    last = returns[t]
  assert float(actor_loss) == pytest.approx(-np.mean(weights * returns), rel=1e-4, abs=1e-6)
  terminal = config.batch_length - 1
  assert pcont[terminal] < 0.1 and (np.abs(pcont[:terminal] - 0.9) < 0.1).all()
  np.testing.assert_allclose(weights[:terminal + 1], 0.9 ** np.arange(terminal + 1), rtol=0.3)
  assert weights[terminal + 1] < 0.1 * weights[terminal]


class ShiftedActionModel:
  """Hand-built world model for the planner: the state after an action is the
  action plus the start state's `stoch`, the reward -|state - target|^2, so the best
  action of every step is target - start['stoch']."""

  def __init__(self, target):
    self.target = tf.constant(target)

  def imagine(self, action, state):
    return dict(stoch=action + state['stoch'][:, None])

  def get_feat(self, state):
    return state['stoch']

  def reward(self, feat):
    return tfd.Normal(-tf.reduce_sum(tf.square(feat - self.target), -1), 1.0)


def test_planner_returns_the_action_of_maximal_reward_for_each_start_state(monkeypatch):
  config = tiny_config('--behavior', 'planet')  # PlaNet's CEM: horizon 12, 10 x 1000, top 100.
  agent = Dreamer(config, 2)
  assert not any(hasattr(agent, name) for name in ('actor', 'value', 'actor_opt', 'value_opt'))
  model = ShiftedActionModel([0.5, -0.2])
  monkeypatch.setattr(agent, 'dynamics', model)
  monkeypatch.setattr(agent, 'reward', model.reward)
  shift = np.array([[0.0, 0.0], [0.3, -0.5], [-0.4, 0.1]], np.float32)
  tf.random.set_seed(0)
  action = agent.behavior.act(agent, dict(stoch=tf.constant(shift), deter=tf.zeros([3, 4])), tf.constant(False)).numpy()
  np.testing.assert_allclose(action, [0.5, -0.2] - shift, atol=0.03)


def test_planet_trains_the_world_model_only_and_plans_in_the_compiled_policy():
  config = tiny_config('--behavior', 'planet', '--planet_candidates', '30', '--planet_top', '5')
  agent = Dreamer(config, 2)
  assert list(agent.optimizers()) == ['model']
  metrics = agent.train(random_batch(config))
  assert not any(k.startswith(('actor_', 'value_', 'action_', 'imag_')) for k in metrics)
  assert np.isfinite(float(metrics['model_loss']))
  image = np.zeros((2, 64, 64, 3), np.uint8)
  action, state = Policy(agent, sample=True, amount=0.0)({'image': image}, np.array([True, True]), None)
  assert action.shape == (2, 2) and np.all(np.abs(action) <= 1)
  Policy(agent, sample=False, amount=0.3)({'image': image}, np.array([False, False]), state)
  assert agent.policy_step.experimental_get_tracing_count() == 1


def numpy_info_nce(z, mean, std):
  """log q(z_i | o_i) - log sum_j q(z_i | o_j) with diagonal Normals, one pair at a time."""
  z, mean, std = (np.asarray(x, np.float64) for x in (z, mean, std))
  log_q = np.array([[np.sum(-0.5 * ((zi - m) / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi))
                     for m, s in zip(mean, std)] for zi in z])
  return np.diag(log_q) - np.log(np.exp(log_q).sum(1))


def test_contrastive_loss_is_infonce_of_the_posterior_states_over_the_batch():
  config = tiny_config('--objective', 'contrastive')
  agent = Dreamer(config, 2)
  assert not hasattr(agent, 'decoder')
  data = agent.preprocess(random_batch(config))
  rng = np.random.default_rng(0)
  shape = (config.batch_size, config.batch_length, config.stoch_size)
  noise = {k: rng.normal(size=shape).astype(np.float32) for k in ('prior', 'post')}
  _, post, metrics = agent.model_loss(data, noise)
  assert 'image_loss' not in metrics
  embed = agent.encoder(data['image'])
  dist = agent.state_model(embed).distribution  # Normal over z_t from o_t's embedding.
  flat = lambda x: x.numpy().reshape(-1, config.stoch_size)  # All 18 observations of the batch.
  expected = -numpy_info_nce(flat(post['stoch']), flat(dist.loc), flat(dist.scale)).mean()
  assert float(metrics['contrastive_loss']) == pytest.approx(expected, rel=1e-4)


def numpy_info_nce_over_states(feat, mean, std):
  """log q(s_i | o_i) - log sum_k q(s_k | o_i): for each image over every state."""
  log_q = np.array([[np.sum(-0.5 * ((sk - m) / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi))
                     for sk in np.asarray(feat, np.float64)] for m, s in zip(mean, std)])  # [image, state].
  return np.diag(log_q) - np.log(np.exp(log_q - log_q.max(1, keepdims=True)).sum(1)) - log_q.max(1)


def test_contrastive_tf1_predicts_the_whole_state_and_normalises_over_states_for_each_image():
  config = tiny_config('--objective', 'contrastive_tf1')  # 3 x 6 batch: the 10 x 30 window covers it.
  agent = Dreamer(config, 2)
  assert not hasattr(agent, 'decoder')
  assert sorted(agent.state_model.named_layers()) == ['h0', 'h1', 'h2', 'out']
  data = agent.preprocess(random_batch(config))
  rng = np.random.default_rng(0)
  shape = (config.batch_size, config.batch_length, config.stoch_size)
  noise = {k: rng.normal(size=shape).astype(np.float32) for k in ('prior', 'post')}
  _, post, metrics = agent.model_loss(data, noise)
  dist = agent.state_model(agent.encoder(data['image'])).distribution
  size = config.stoch_size + config.deter_size
  flat = lambda x: x.numpy().reshape(-1, size)
  # The std starts near softplus(softplus^-1(1)) + 0.01 and never goes below 0.01.
  assert np.all(dist.scale.numpy() > 0.01) and 0.5 < np.median(dist.scale.numpy()) < 2
  feat = flat(agent.dynamics.get_feat(post))
  expected = -numpy_info_nce_over_states(feat, flat(dist.loc), flat(dist.scale)).mean()
  assert float(metrics['contrastive_loss']) == pytest.approx(expected, rel=1e-4)
  over_images = -numpy_info_nce(feat, flat(dist.loc), flat(dist.scale)).mean()
  assert abs(over_images - expected) > 1e-3  # The two normalisations differ.
  assert np.isfinite(float(agent.train(random_batch(config))['model_loss']))


def test_reward_objective_creates_trains_and_saves_no_decoder(tmp_path):
  full = Dreamer(tiny_config(), 2)
  config = tiny_config('--objective', 'reward')
  agent = Dreamer(config, 2)
  assert not hasattr(agent, 'decoder') and not hasattr(agent, 'state_model') and agent.openloop is None
  decoder_count = len(full.decoder.trainable_variables)
  assert len(agent.optimizers()['model'][1]) == len(full.optimizers()['model'][1]) - decoder_count
  for model, name in ((full, 'full'), (agent, 'reward')):
    tf.train.Checkpoint(agent=model).write(str(tmp_path / name / 'ckpt'))
  saved = lambda name: [key for key, _ in tf.train.list_variables(str(tmp_path / name / 'ckpt'))]
  assert any('decoder' in key for key in saved('full'))
  assert not any('decoder' in key for key in saved('reward'))
  metrics = agent.train(random_batch(config))
  assert set(k for k in metrics if k.endswith('_loss')) == {'reward_loss', 'model_loss', 'actor_loss', 'value_loss'}
  # Without an image term the loss is the KL (clipped at free nats) and the reward term.
  assert float(metrics['model_loss']) == pytest.approx(max(float(metrics['kl']), 3.0) + float(metrics['reward_loss']), rel=1e-5)


@pytest.mark.parametrize('flag, old', [('--behavior', 'no_value'), ('--objective', 'contrastive')])
def test_logdir_of_another_variant_is_not_resumed(tmp_path, flag, old):
  (tmp_path / 'config.json').write_text(f'{{"{flag[2:]}": "{old}"}}')
  config = tiny_config('--logdir', str(tmp_path / 'new'))  # The defaults, dreamer and reconstruction.
  config.logdir = str(tmp_path)
  assert configs.check_logdir(config) == f'{tmp_path} holds a run with {flag} {old}; resume with those settings or use a new --logdir.'


def test_every_objective_and_behavior_flag_has_one_variant():
  assert list(OBJECTIVES) == list(configs.CHOICES['objective'])
  assert list(BEHAVIORS) == list(configs.CHOICES['behavior'])
