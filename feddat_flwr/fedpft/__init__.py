"""FedPFT, proxy fine-tuning (Peng et al., IJCAI 2024), as a comparison method on ViLT.

Not Flower's baselines/fedpft (parametric feature transfer, an unrelated method). Flower-free:
the sub-FM (subfm.py), its layer-level distillation on public data (distill.py, public_data.py),
the cached proxy artefact (proxy.py) and the neuron-level alignment of the rounds (alignment.py).
"""
