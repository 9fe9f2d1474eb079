"""Everything that imports Flower: the strategy, its round book and grid, the server's run, the
client's context.state codec. The rest of feddat_flwr never imports `flwr`."""
