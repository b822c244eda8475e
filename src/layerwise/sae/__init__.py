"""Sparse autoencoders on cached transformer activations: ``model`` (config, the SAE and its one
forward pass, save/load), ``train`` (the trainer, scale factors, finiteness checks) and
``evaluate`` (raw-space metrics). Import from the submodules."""
