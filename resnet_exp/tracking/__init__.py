"""What MLflow keeps: where runs are stored (store.py), the one scope that opens and closes every
run (runs.py), what a training run records (training_run.py, diagnostics.py), which stopped run a
training continues (resume.py), the logged model (logged_model.py) and its registered versions
(registry.py), and a tracking server that fails or refuses us, said in one line (server.py)."""
