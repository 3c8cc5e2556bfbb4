"""A depth study: the grid of (configuration, seed) cells (grid.py), what one cell's attempt does
(cells.py), the parent run and the sweep as a whole (run.py), the executors that run cells
locally or as Ray Tune trials (executors.py, ray_trial.py), and seeds added where the ranking is
unresolved (adaptive.py)."""
