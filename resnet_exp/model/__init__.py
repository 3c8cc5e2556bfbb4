"""The network: the depth configuration as data (netspec.py), the ResNet built from it with its
first stages frozen (network.py), the LightningModule that trains it (classifier.py), and the
inference side a registered model runs (inference.py, pyfunc_model.py, predict.py)."""
