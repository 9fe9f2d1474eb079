"""The ClientApp's mods: DP clipping of the shared-adapter update and, for robustness evaluation,
hostile replies. Mods are built when client_app.py is imported, before any run config exists, so
each reads the run's settings from `context.run_config` on every message: one app serves every
setting.

- `privacy_mod`: for privacy.mode central-fixed / central-adaptive, runs the train handler inside
  Flower's `fixedclipping_mod` / `adaptiveclipping_mod`, which clip the update (reply - received
  global adapter) to the clipping norm the server's DP wrapper sent. Only the shared adapter is in
  the reply: the private `local` adapter and head are not touched. The reply also says whether
  the update was clipped (records.CLIPPED_METRIC), for the round's clipped share.
- `attack_mod`: with attack.kind other than none, the clients of attack.partitions replace their
  reply's shared adapter with a hostile one (feddat_flwr.attacks), after any clipping.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM, get_norm

from feddat_flwr.attacks import ATTACKS, attacked_partitions
from feddat_flwr.config import load_config
from feddat_flwr.privacy import CENTRAL_ADAPTIVE, CENTRAL_FIXED
from feddat_flwr.records import CLIPPED_METRIC

CLIPPING_MODS = {CENTRAL_FIXED: fixedclipping_mod, CENTRAL_ADAPTIVE: adaptiveclipping_mod}


def _numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in record.items()}


def privacy_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, context)
    clipping_mod = CLIPPING_MODS.get(load_config(context.run_config).privacy["mode"])
    if clipping_mod is None:
        return call_next(msg, context)
    received = msg.content["arrays"].to_numpy_ndarrays()

    def train_and_report(inner: Message, ctx: Context) -> Message:
        reply = call_next(inner, ctx)
        if not reply.has_error():
            sent = reply.content["arrays"].to_numpy_ndarrays()
            norm = get_norm([s - r for s, r in zip(sent, received, strict=True)])
            reply.content["metrics"][CLIPPED_METRIC] = int(norm > float(inner.content["config"][KEY_CLIPPING_NORM]))
        return reply

    return clipping_mod(msg, context, train_and_report)


def attack_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    reply = call_next(msg, context)
    if msg.metadata.message_type != MessageType.TRAIN or reply.has_error():
        return reply
    cfg = load_config(context.run_config)
    attack = ATTACKS[cfg.attack["kind"]]
    partition = context.node_config.get("partition-id")
    if attack is None or partition is None or int(partition) not in attacked_partitions(cfg.attack["partitions"]):
        return reply
    rng = np.random.default_rng([cfg["seed"], int(msg.content["config"]["server-round"]), int(partition)])
    hostile = attack(_numpy(msg.content["arrays"]), _numpy(reply.content["arrays"]), cfg.attack["scale"], rng)
    reply.content["arrays"] = ArrayRecord({k: Array(v) for k, v in hostile.items()})
    return reply
