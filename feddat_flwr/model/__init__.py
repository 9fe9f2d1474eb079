"""The frozen ViLT with its three adapters (backbone.py), the private answer head (head.py) and
the recipe of the embedded default model (default_model.py)."""
