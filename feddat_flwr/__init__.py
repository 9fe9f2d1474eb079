"""feddat-flwr: FedDAT (Federated Dual-Adapter Teacher) foundation-model finetuning on Flower.

The core (config, methods, records, client, model/, data/, training/, results) never imports
Flower; everything that does is in flower/, and the tooling around runs is in tools/.
"""
