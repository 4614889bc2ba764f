"""`transferkit tune`: Optuna search over the pipeline's params, trials on Dask."""
