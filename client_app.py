"""Flower ClientApp of feddat-flwr: thin handlers over feddat_flwr.client.

The frozen backbone and the client's encoded data are cached per process; the client's private
state (local adapter, head) lives in `context.state` and never goes into a reply.
"""

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from feddat_flwr.client import client_for, evaluate_client, train_client
from feddat_flwr.config import load_config
from feddat_flwr.state import read_state, write_state

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = load_config(context.run_config)
    backbone, data = client_for(cfg, context.node_config)
    shared, metrics, state = train_client(
        backbone, data, read_state(context.state), msg.content["arrays"].to_torch_state_dict(), cfg,
        lr=float(msg.content["config"]["lr"]), server_round=int(msg.content["config"]["server-round"]),
    )
    write_state(context.state, state)
    content = RecordDict({"arrays": ArrayRecord(shared), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg = load_config(context.run_config)
    backbone, data = client_for(cfg, context.node_config)
    metrics = evaluate_client(backbone, data, read_state(context.state),
                              msg.content["arrays"].to_torch_state_dict(), cfg)
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
