"""MONAI inferers: the foreground-cropped sliding window, the 2.5D slice-stack inferer, CPU kernel choice."""
