"""Tooling around the app: the simulation launcher, the comparison grid, lr tuning, and the
SuperLink/CLI helpers they share. Nothing here is on a client's or the server's path."""
