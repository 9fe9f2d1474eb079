"""FedDAT's local training and evaluation, Flower-free: losses, steps, the round loop, the lr schedule."""
