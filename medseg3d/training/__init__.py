"""Training on MONAI's ignite workflows: datasets and sampling, losses and optimizers, validation, handlers."""
