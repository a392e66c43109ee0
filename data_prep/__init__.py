"""Dataset converters: raw public datasets to the prepared layout medseg3d trains on."""
