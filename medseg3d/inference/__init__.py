"""Inference on a folder of scans: one scan through the predictor, the batch runner, previews."""
