"""Recipes for the trainers people use: ``fusedlr.integrations.transformers`` (Hugging Face
Trainer) and ``fusedlr.integrations.lightning``. Each is imported on its own: ``import fusedlr``
imports neither transformers nor lightning."""
