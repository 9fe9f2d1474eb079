"""Differential privacy of the shared adapter on the server: Flower's central-DP wrappers and its
RDP accountant around the FedDAT strategy (`privacy.mode`; README, "Privacy").

- central-fixed: Flower's `DifferentialPrivacyClientSideFixedClipping` with its own accountant
  (`RdpAccountant`, no sampling amplification: every sampled client's clipped update is averaged
  with equal weight and Gaussian noise of std noise-multiplier * clipping-norm / clients is
  added). Clients clip with Flower's `fixedclipping_mod` (feddat_flwr.flower.mods).
- central-adaptive: Flower's `DifferentialPrivacyClientSideAdaptiveClipping` (Andrew et al. 2019),
  which has no accountant of its own. Flower splits the given noise multiplier z between the
  update and the clipped-count bit so that the pair is, by Andrew et al.'s Theorem 1, one
  Gaussian release of multiplier z; `AccountedAdaptiveClipping` composes exactly that event per
  released round in Flower's accountant, and refuses a round with a dropped reply as Flower's
  accounted fixed-clipping wrapper does.

With privacy.target-epsilon > 0, the round whose release would take epsilon past it raises
Flower's `PrivacyBudgetExhausted` before anything is sent; the server ends the run there.
The DP noise comes from numpy's global generator, which the server never seeds: a run's noise is
not predictable from its seed (and so DP runs are not bit-reproducible).
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import (
    GaussianPrivacyEvent,
    Grid,
    NeighboringRelation,
    PrivacyConfig,
    RdpAccountant,
    SamplingMethod,
)
from flwr.serverapp.exception import PrivacyBudgetExhausted
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    Strategy,
)

from feddat_flwr.flower.strategy import FedDAT
from feddat_flwr.privacy import CENTRAL_ADAPTIVE, CENTRAL_FIXED
from feddat_flwr.records import PrivacyRecord, RoundRecord


def accountant_for(privacy_cfg, population: int) -> RdpAccountant:
    """Flower's RDP accountant for `population` clients, client-level (add or remove one client),
    without sampling amplification (every round samples a fixed set of clients)."""
    target = privacy_cfg["target-epsilon"]
    return RdpAccountant(PrivacyConfig(
        target_delta=privacy_cfg["target-delta"],
        population_size=population,
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
        sampling_method=SamplingMethod.NO_AMPLIFICATION,
        max_epsilon=target if target > 0 else None,
    ))


class AccountedAdaptiveClipping(DifferentialPrivacyClientSideAdaptiveClipping):
    """Flower's client-side adaptive clipping, each released round composed in an accountant."""

    def __init__(self, strategy: Strategy, noise_multiplier: float, num_sampled_clients: int, *,
                 accountant: RdpAccountant, **adaptive):
        super().__init__(strategy, noise_multiplier, num_sampled_clients, **adaptive)
        self.accountant = accountant
        self.event = GaussianPrivacyEvent(noise_multiplier=noise_multiplier, sample_size=num_sampled_clients,
                                          population_size=accountant.config.population_size)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        messages = super().configure_train(server_round, arrays, config, grid)
        if self.accountant.config.max_epsilon is not None and self.accountant.would_exceed(self.event):
            spent = self.accountant.get_privacy_spent()
            raise PrivacyBudgetExhausted(
                f"The next private release would exceed max_epsilon (current epsilon: {spent.epsilon}, "
                f"delta: {spent.delta}).")
        return messages

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        if len(replies) != self.num_sampled_clients:
            log(INFO, "Round %s: %d of %d replies valid; no private release this round (the noise is "
                "calibrated to %d clients).", server_round, len(replies), self.num_sampled_clients,
                self.num_sampled_clients)
            return None, None
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is not None:
            self.accountant.compose(self.event)
        return arrays, metrics

    def privacy_spent(self):
        return self.accountant.get_privacy_spent()


def with_privacy(strategy: FedDAT, privacy_cfg, num_sampled_clients: int, population: int) -> Strategy:
    """The strategy Flower runs for `privacy_cfg` (the config's privacy section): `strategy` itself
    for mode none, else the DP wrapper around it; the wrapper's account reaches every round record."""
    mode = privacy_cfg["mode"]
    if mode not in (CENTRAL_FIXED, CENTRAL_ADAPTIVE):
        return strategy
    accountant = accountant_for(privacy_cfg, population)
    z = privacy_cfg["noise-multiplier"]
    if mode == CENTRAL_FIXED:
        wrapper = DifferentialPrivacyClientSideFixedClipping(
            strategy, z, privacy_cfg["clipping-norm"], num_sampled_clients, accountant=accountant)
    else:
        wrapper = AccountedAdaptiveClipping(
            strategy, z, num_sampled_clients, accountant=accountant,
            initial_clipping_norm=privacy_cfg["clipping-norm"],
            target_clipped_quantile=privacy_cfg["target-clipped-quantile"],
            clip_norm_lr=privacy_cfg["clip-norm-lr"],
            clipped_count_stddev=privacy_cfg["clipped-count-stddev"] or None)

    def account(clipping_norm: float, record: RoundRecord) -> PrivacyRecord:
        spent = wrapper.privacy_spent()
        return PrivacyRecord(mode=mode, epsilon=spent.epsilon, delta=spent.delta, releases=spent.num_releases,
                             noise_multiplier=z, clipping_norm=clipping_norm,
                             clipped_share=record.clipped_share())

    strategy.privacy_account = account
    return wrapper


def privacy_state(runner: Strategy) -> dict:
    """What a checkpoint keeps of a DP wrapper: its accountant and its current clipping norm
    (adapted every round in central-adaptive); {} without privacy."""
    accountant = getattr(runner, "accountant", None)
    if accountant is None:
        return {}
    return {"accountant": accountant.state_dict(), "clipping-norm": runner.clipping_norm}


def restore_privacy(runner: Strategy, state: dict) -> None:
    """A resumed run's DP wrapper continues from the checkpoint's account and clipping norm."""
    if state:
        runner.accountant.load_state_dict(state["accountant"])
        runner.clipping_norm = float(state["clipping-norm"])
