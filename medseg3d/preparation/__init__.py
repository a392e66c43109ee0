"""Dataset preparation: raw dataset trees converted into prepared datasets (the `prep_brats` command's API)."""
