"""Analysis of finished runs: reads only what `resnet_exp.tracking` wrote to MLflow (params,
tags, metric histories with step = epoch) and ranks depth configurations. The ranking, plots
and report arrive with the depth-study entry point (`mlflow run . -e analyze`)."""
