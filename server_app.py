"""Flower ServerApp of feddat-flwr: runs the FedDAT strategy (see feddat_flwr/flower/server.py)."""

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from feddat_flwr.flower.server import run_server

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_server(grid, context)
