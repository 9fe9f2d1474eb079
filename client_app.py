"""Flower ClientApp of feddat-flwr: thin handlers over feddat_flwr.client.

The frozen backbone and the client's encoded data are cached per process; the client's private
state (local adapter, head) lives in `context.state` (mirrored to the node-config `state-dir`
when given) and never goes into a reply. The mods (feddat_flwr/flower/mods.py) clip the reply's
update under privacy.mode and, for robustness evaluation only, make attack.partitions hostile.
"""

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from logging import DEBUG
from pathlib import Path

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import log

from feddat_flwr.client import client_for, evaluate_client, train_client
from feddat_flwr.config import load_config
from feddat_flwr.fedpft.alignment import ZeroCounter
from feddat_flwr.fedpft.backbone import proxy_backbone_for, use_proxy_version
from feddat_flwr.fedpft.proxy import check_digest
from feddat_flwr.flower.proxy_rounds import COUNT_ZEROS, DIGEST, VERSION, received_layers
from feddat_flwr.methods import get_method
from feddat_flwr.flower.mods import attack_mod, privacy_mod
from feddat_flwr.packing import pack, unpack
from feddat_flwr.flower.state import mirror_dir, persist_state, restore_state
from feddat_flwr.records import ARRAYS_KEY, EVALUATE_FIRST, RUN_KEY, train_reply_metrics

app = ClientApp(mods=[attack_mod, privacy_mod])  # a hostile client (attack_mod, outermost) skips clipping


def _mirror(msg: Message, context: Context, cfg) -> Path | None:
    run_key = str(msg.content["config"].get(RUN_KEY, context.run_id))
    return mirror_dir(context.node_config, run_key, cfg["client-state-dir"])


@contextmanager
def _computing(kind: str) -> Iterator[None]:
    """Mark the message's compute in the node's log (FLWR_LOG_LEVEL=DEBUG; benchmarks/deployment.py
    reads it): everything else between receiving and sending is per-message overhead."""
    log(DEBUG, "[feddat] %s compute starts", kind)
    yield
    log(DEBUG, "[feddat] %s compute ends", kind)


def _global_adapter(msg: Message, backbone) -> dict:
    """The received global adapter, unpacked (empty when the method communicates nothing)."""
    arrays = msg.content[ARRAYS_KEY]
    return unpack(arrays.to_torch_state_dict(), backbone.adapter_state("shared")) if len(arrays) else {}


def _proxy(cfg, msg: Message, state) -> tuple:
    """FedPFT (a method with `proxy`): the proxy backbone, with the compressed layers of the
    newest version this client has (the message's, else its state's) put in; (backbone, proxy,
    version, layers). (None, None, 0, {}) for every other method."""
    if not get_method(cfg["method"]).proxy:
        return None, None, 0, {}
    backbone, proxy = proxy_backbone_for(cfg)
    config = msg.content["config"]
    check_digest(proxy, str(config.get(DIGEST, "")))
    layers, version = received_layers(msg), int(config.get(VERSION, 0))
    if layers is None:
        layers, version = (state.proxy, state.proxy_version) if state is not None else ({}, 0)
    use_proxy_version(backbone, proxy, layers)
    return backbone, proxy, version, layers


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Evaluate the received aggregate first when the server asks (EVALUATE_FIRST: it is the
    previous round's evaluation after aggregation), then train one round; one reply with both.
    FedPFT trains on its proxy and, when asked, counts the proxy's zero activations meanwhile."""
    cfg = load_config(context.run_config)
    backbone, data = client_for(cfg, context.node_config, context.node_id)
    mirror = _mirror(msg, context, cfg)
    config = msg.content["config"]
    state = restore_state(context.state, mirror, before_round=int(config["server-round"]))
    global_adapter = _global_adapter(msg, backbone)
    proxy_backbone, proxy, proxy_version, proxy_layers = _proxy(cfg, msg, state)
    counter = (ZeroCounter(proxy_backbone.vilt, proxy.kept) if bool(config.get(COUNT_ZEROS, False))
               else nullcontext())
    with _computing("train"):
        evaluation = (evaluate_client(backbone, data, state, global_adapter, cfg, proxy_backbone)
                      if bool(config.get(EVALUATE_FIRST, False)) else None)
        with counter:
            shared, report, state = train_client(
                proxy_backbone or backbone, data, state, global_adapter, cfg,
                lr=float(config["lr"]), server_round=int(config["server-round"]),
            )
    if proxy is not None:
        state = replace(state, proxy=proxy_layers, proxy_version=proxy_version)
    persist_state(context.state, mirror, state)
    metrics = train_reply_metrics(report, evaluation)
    if proxy is not None:
        metrics |= {VERSION: proxy_version, **(counter.metrics() if isinstance(counter, ZeroCounter) else {})}
    return Message(content=RecordDict({ARRAYS_KEY: ArrayRecord(pack(shared)), "metrics": MetricRecord(metrics)}),
                   reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """The evaluation of the last round's aggregate (earlier rounds' ride on the train messages)."""
    cfg = load_config(context.run_config)
    backbone, data = client_for(cfg, context.node_config, context.node_id)
    server_round = int(msg.content["config"]["server-round"])  # the round whose aggregate this is
    state = restore_state(context.state, _mirror(msg, context, cfg), before_round=server_round + 1)
    proxy_backbone = _proxy(cfg, msg, state)[0]
    with _computing("evaluate"):
        report = evaluate_client(backbone, data, state, _global_adapter(msg, backbone), cfg, proxy_backbone)
    return Message(content=RecordDict({"metrics": MetricRecord(report.to_metrics())}), reply_to=msg)
