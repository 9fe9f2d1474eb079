"""Differential privacy of the shared adapter: the client's clipping mod, the accounted epsilon
against Flower's accountant called directly, the clean stop at the target epsilon, and a dropped
reply under accounting (Flower's DP pieces on hand-made rounds: no Ray, no SuperLink)."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import GaussianPrivacyEvent
from flwr.serverapp.exception import PrivacyBudgetExhausted
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM, KEY_NORM_BIT

from feddat_flwr.config import ConfigError, load_config
from feddat_flwr.flower.mods import privacy_mod
from feddat_flwr.flower.privacy import accountant_for, with_privacy
from feddat_flwr.records import CLIPPED_METRIC
from helpers.replies import KEYS, FakeGrid, begin_round, make_strategy, train, train_reply

pytestmark = pytest.mark.usefixtures("task_identity")

PRIVATE = {"local.lora_A.weight": np.full((2, 2), 7.0, np.float32)}


def _run_config(mode, **extra):
    return {"privacy.mode": mode, "strategy.weighting": "uniform", **extra}


def _train_message(clipping_norm):
    arrays = ArrayRecord({k: Array(np.zeros((2, 2), np.float32)) for k in KEYS})
    config = ConfigRecord({"server-round": 1, "lr": 0.1, KEY_CLIPPING_NORM: clipping_norm})
    return Message(RecordDict({"arrays": arrays, "config": config}), dst_node_id=1, message_type="train")


def _handler(update_value):
    """A train handler: the received adapter plus `update_value` everywhere; it also keeps a
    private tensor in context.state, as the real one keeps the local adapter and head."""
    def handle(msg, context):
        context.state["private"] = ArrayRecord({k: Array(v.copy()) for k, v in PRIVATE.items()})
        received = msg.content["arrays"]
        shared = {k: Array(received[k].numpy() + update_value) for k in received}
        content = RecordDict({"arrays": ArrayRecord(shared), "metrics": MetricRecord({"unit-weight": 1.0})})
        return Message(content, reply_to=msg)
    return handle


def _context(mode):
    return Context(run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(),
                   run_config=_run_config(mode))


@pytest.mark.parametrize("mode", ["central-fixed", "central-adaptive"])
@pytest.mark.parametrize(("update_value", "clipped"), [(3.0, 1), (0.01, 0)])
def test_the_mod_clips_the_update_to_the_norm_and_leaves_private_state_alone(mode, update_value, clipped):
    context = _context(mode)
    reply = privacy_mod(_train_message(clipping_norm=1.0), context, _handler(update_value))
    assert not reply.has_error()
    arrays = reply.content["arrays"]
    assert list(arrays.keys()) == list(KEYS)  # nothing but the shared adapter
    norm = np.sqrt(sum(np.sum(arrays[k].numpy().astype(np.float64) ** 2) for k in KEYS))
    unclipped = np.sqrt(8) * update_value
    assert norm == pytest.approx(1.0 if clipped else unclipped, rel=1e-5)
    assert reply.content["metrics"][CLIPPED_METRIC] == clipped
    if mode == "central-adaptive":
        assert reply.content["metrics"][KEY_NORM_BIT] == clipped  # Flower's own bit agrees
    private = context.state["private"]
    np.testing.assert_array_equal(private["local.lora_A.weight"].numpy(), PRIVATE["local.lora_A.weight"])


def test_the_mod_leaves_evaluation_and_privacy_none_alone():
    reply = privacy_mod(_train_message(1.0), _context("none"), _handler(3.0))
    assert reply.content["arrays"][KEYS[0]].numpy()[0, 0] == 3.0 and CLIPPED_METRIC not in reply.content["metrics"]
    evaluate = Message(RecordDict({"config": ConfigRecord()}), dst_node_id=1, message_type="evaluate")
    assert privacy_mod(evaluate, _context("central-fixed"), lambda m, c: "passed") == "passed"


def _dp_round(strategy, runner, server_round, replies):
    begin_round(strategy, server_round, grid=FakeGrid(), runner=runner)
    arrays, _ = train(strategy, server_round, replies, runner=runner)
    runner.aggregate_evaluate(server_round, [])
    return arrays


def _clipped_replies(clipped=(1, 0, 1)):
    return [train_reply(11 + i, i, 0.1, 10, metrics={CLIPPED_METRIC: c, KEY_NORM_BIT: c})
            for i, c in enumerate(clipped)]


@pytest.mark.parametrize("mode", ["central-fixed", "central-adaptive"])
def test_epsilon_in_each_round_record_is_flowers_accountant_on_the_same_releases(mode):
    cfg = load_config(_run_config(mode, **{"privacy.noise-multiplier": 0.7, "privacy.clipped-count-stddev": 1.0}))
    strategy = make_strategy("uniform", num_rounds=3)
    runner = with_privacy(strategy, cfg.privacy, num_sampled_clients=3, population=3)
    for r in (1, 2, 3):
        arrays = _dp_round(strategy, runner, r, _clipped_replies())
        assert not np.allclose(arrays[KEYS[0]].numpy(), 0.1)  # noise was added to the mean
    reference = accountant_for(cfg.privacy, population=3)
    for r, record in enumerate(strategy.history, 1):
        reference.compose(GaussianPrivacyEvent(noise_multiplier=0.7, sample_size=3, population_size=3))
        spent = reference.get_privacy_spent()
        assert record.privacy.epsilon == pytest.approx(spent.epsilon)
        assert record.privacy.delta == 1e-5 and record.privacy.releases == r
        assert record.privacy.clipped_share == pytest.approx(2 / 3)
    assert strategy.history[0].privacy.clipping_norm == cfg.privacy["clipping-norm"]
    assert "epsilon" in strategy.history[-1].headline(3)


@pytest.mark.parametrize("mode", ["central-fixed", "central-adaptive"])
def test_the_round_that_would_exceed_the_target_epsilon_is_never_sent(mode):
    reference = accountant_for(load_config(_run_config(mode)).privacy, population=3)
    reference.compose(GaussianPrivacyEvent(noise_multiplier=1.0, sample_size=3, population_size=3))
    one_release = reference.get_privacy_spent().epsilon
    cfg = load_config(_run_config(mode, **{"privacy.target-epsilon": one_release * 1.01,
                                           "privacy.clipped-count-stddev": 1.0}))
    strategy = make_strategy("uniform", num_rounds=3)
    runner = with_privacy(strategy, cfg.privacy, num_sampled_clients=3, population=3)
    _dp_round(strategy, runner, 1, _clipped_replies())
    with pytest.raises(PrivacyBudgetExhausted):
        runner.configure_train(2, strategy.latest_arrays, ConfigRecord(), FakeGrid())
    assert strategy.book.held.privacy.epsilon <= one_release * 1.01  # round 1, awaiting its evaluation


@pytest.mark.parametrize("mode", ["central-fixed", "central-adaptive"])
def test_under_accounting_a_round_with_a_dropped_reply_releases_nothing(mode):
    cfg = load_config(_run_config(mode, **{"privacy.clipped-count-stddev": 1.0}))
    strategy = make_strategy("uniform")
    runner = with_privacy(strategy, cfg.privacy, num_sampled_clients=3, population=3)
    replies = _clipped_replies()
    replies[2] = train_reply(13, 2, 0.1, 10, arrays={k: np.full((2, 2), np.nan, np.float32) for k in KEYS})
    begin_round(strategy, 1, runner=runner)
    arrays, _ = train(strategy, 1, replies, runner=runner)
    assert arrays is None  # the global adapter stays as it was
    runner.aggregate_evaluate(1, [])
    held = strategy.book.held  # round 1 of 2, awaiting its evaluation
    assert held.privacy.releases == 0 and held.privacy.epsilon == 0.0


@pytest.mark.parametrize(("overrides", "message"), [
    ({"privacy.mode": "central-fixed"}, r"needs strategy.weighting=uniform"),
    (_run_config("central-fixed", **{"strategy.aggregation": "median"}), r"needs strategy.aggregation=fedavg"),
    (_run_config("central-fixed", method="local-only"), r"method 'local-only' sends no shared adapter"),
    (_run_config("central-fixed", **{"privacy.noise-multiplier": 0.0}), r"needs privacy.noise-multiplier > 0"),
    (_run_config("central-fixed", **{"privacy.target-delta": 1.0}), r"'privacy.target-delta' must be in \(0, 1\)"),
])
def test_privacy_settings_that_cannot_be_accounted_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides)
