"""Images in: a Hub dataset, a local image folder or the generated demo, split into train,
validation and test (splits.py), decoded once into a uint8 store (store.py), normalised as
ImageNet expects (images.py)."""
