"""Contrastive training of a PromptedCLIP: config, loss, cached images, checkpoints, validation and the loop."""
