"""A client's data: easy-VQA loading, partitioning (flwr-datasets), each client's view (visual
domain and task) and the encoding into model-ready tensors."""
