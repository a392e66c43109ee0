"""Training wiring on MONAI's ignite workflows: checkpoints, datalists, handlers and run records."""
