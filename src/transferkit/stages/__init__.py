"""Pipeline stages: each is ``run(params)`` (called by dvc, the CLI and flows) plus ``main()``."""
