"""A server that survives bad updates: every validation rule, the round book dropping and
recording hostile replies, each aggregation option on hand-made updates, and the attacks."""

import re

import numpy as np
import pytest

from feddat_flwr.attacks import ATTACKS, attacked_partitions
from feddat_flwr.flower.round_book import TooFewValidReplies
from feddat_flwr.flower.strategy import STRATEGIES
from feddat_flwr.robustness import AGGREGATIONS, norm_outliers, update_norm, update_problem
from helpers.replies import KEYS, FakeGrid, begin_round, make_strategy, train, train_reply

pytestmark = pytest.mark.usefixtures("task_identity")

SENT = {"a": np.zeros((2, 3), np.float32), "b": np.zeros(4, np.float32)}


@pytest.mark.parametrize(("reply", "message"), [
    ({"a": np.zeros((2, 3), np.float32)}, r"missing keys \['b'\]"),
    ({**SENT, "head.weight": np.zeros(2, np.float32)}, r"extra keys \['head.weight'\]"),
    ({**SENT, "a": np.zeros((3, 2), np.float32)}, r"'a' is float32\[3, 2\], the server sent float32\[2, 3\]"),
    ({**SENT, "b": np.zeros(4, np.float64)}, r"'b' is float64\[4\], the server sent float32\[4\]"),
    ({**SENT, "b": np.array([0, np.nan, np.inf, 1], np.float32)}, r"'b' has 2 non-finite values"),
])
def test_each_validation_rule_names_the_problem(reply, message):
    problem = update_problem(SENT, reply)
    assert problem is not None and re.search(message, problem), problem


def test_a_clean_reply_passes_and_its_update_norm_is_l2_over_all_arrays():
    reply = {"a": np.full((2, 3), 1.0, np.float32), "b": np.full(4, 2.0, np.float32)}
    assert update_problem(SENT, reply) is None
    assert update_norm(SENT, reply) == pytest.approx(np.sqrt(6 * 1 + 4 * 4))


def test_norm_outliers_are_relative_to_the_median():
    flags = norm_outliers([1.0, 1.2, 0.9, 500.0], 100.0)
    assert flags[:3] == [None] * 3 and "over 100 x the round's median" in flags[3]
    assert norm_outliers([1.0, 500.0], 0.0) == [None, None]  # 0: the check is off
    assert norm_outliers([0.0, 0.0, 3.0], 10.0) == [None] * 3  # nothing else moved: no reference


def _replies(values, **kw):
    return [train_reply(11 + i, i, v, 10, **kw) for i, v in enumerate(values)]


def test_book_drops_hostile_replies_records_why_and_aggregates_the_rest():
    strategy = make_strategy("uniform", min_valid_replies=2)
    begin_round(strategy, grid=FakeGrid(range(11, 17)))
    hostile = [
        train_reply(14, 3, 0.0, 10, arrays={k: np.full((2, 2), np.nan, np.float32) for k in KEYS}),
        train_reply(15, 4, 0.0, 10, arrays={KEYS[0]: np.zeros((1, 2), np.float32), KEYS[1]: np.zeros((2, 2), np.float32)}),
        train_reply(16, 5, 1000.0, 10),
    ]
    arrays, _ = train(strategy, 1, _replies([1.0, 2.0, 3.0]) + hostile)
    np.testing.assert_allclose(arrays[KEYS[0]].numpy(), 2.0)  # the mean of the three honest replies
    failures = {f.node_id: f.reason for f in strategy.book.current.failures}
    assert set(failures) == {14, 15, 16}
    assert "non-finite" in failures[14] and "float32[1, 2]" in failures[15]
    assert "strategy.max-update-norm" in failures[16]
    record = strategy.book.current
    assert set(record.clients) == {"0", "1", "2"}
    assert record.clients["2"].update_norm == pytest.approx(np.sqrt(8 * 9))


def test_a_round_with_too_few_valid_replies_stops_with_the_reasons():
    strategy = make_strategy("uniform", min_valid_replies=2)
    begin_round(strategy)
    nan = {k: np.full((2, 2), np.nan, np.float32) for k in KEYS}
    with pytest.raises(TooFewValidReplies, match=r"round 1: 1 valid train replies, fewer than "
                                                 r"strategy.min-valid-replies=2 \(node 12: array .* non-finite"):
        strategy.book.received([train_reply(11, 0, 1.0, 10), train_reply(12, 1, 1.0, 10, arrays=nan)])


def test_every_aggregation_name_has_a_strategy():
    assert tuple(STRATEGIES) == AGGREGATIONS


@pytest.mark.parametrize(("aggregation", "options", "expected"), [
    ("fedavg", {}, (1 + 2 + 3 + 4 + 40) / 5),
    ("median", {}, 3.0),
    ("trimmed-mean", {"beta": 0.2}, 3.0),  # one value cut from each tail: mean of 2, 3, 4
    ("krum", {"num_malicious_nodes": 1}, None),  # one of the honest updates, never the outlier
])
def test_each_aggregation_on_hand_made_updates(aggregation, options, expected):
    strategy = make_strategy("uniform", aggregation=aggregation, **options)
    begin_round(strategy, grid=FakeGrid(range(11, 16)))
    arrays, _ = train(strategy, 1, _replies([1.0, 2.0, 3.0, 4.0, 40.0]))
    value = arrays[KEYS[0]].numpy()
    assert np.unique(value).size == 1
    if expected is None:
        assert value.flat[0] in (2.0, 3.0, 4.0)
    else:
        assert value.flat[0] == pytest.approx(expected)


@pytest.mark.parametrize("kind", [k for k, attack in ATTACKS.items() if attack is not None])
def test_every_attack_is_refused_by_the_book(kind):
    rng = np.random.default_rng(0)
    sent = {k: np.zeros((2, 2), np.float32) for k in KEYS}
    honest = [{k: np.full((2, 2), v, np.float32) for k in KEYS} for v in (1.0, 1.5, 2.0)]
    hostile = ATTACKS[kind](sent, honest[0], 1000.0, rng)
    strategy = make_strategy("uniform")
    begin_round(strategy, grid=FakeGrid(range(11, 15)))
    valid = strategy.book.received([train_reply(11 + i, i, 0.0, 10, arrays=a) for i, a in enumerate(honest)]
                                   + [train_reply(14, 3, 0.0, 10, arrays=hostile)])
    assert len(valid) == 3 and [f.node_id for f in strategy.book.current.failures] == [14]


def test_scaled_random_update_has_the_scaled_norm():
    sent = {"a": np.zeros(100, np.float32)}
    honest = {"a": np.full(100, 0.1, np.float32)}
    hostile = ATTACKS["scaled-random"](sent, honest, 50.0, np.random.default_rng(1))
    assert update_norm(sent, hostile) == pytest.approx(50.0 * update_norm(sent, honest), rel=1e-4)


def test_attacked_partitions_parse_and_refuse_junk():
    assert attacked_partitions("") == set() and attacked_partitions("0, 3") == {0, 3}
    with pytest.raises(ValueError, match="'attack.partitions' has 'x'"):
        attacked_partitions("1,x")
