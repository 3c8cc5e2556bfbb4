"""`python -m resnet_exp ...` is `resnet-exp ...` (MLproject uses this form)."""

from resnet_exp.cli import run

run()
