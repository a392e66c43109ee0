"""The bundle runtime: running, resuming and cross-validating bundle workflows, and `medseg3d infer` over a bundle."""
