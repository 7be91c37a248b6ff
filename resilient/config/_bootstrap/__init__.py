"""The folder `resilient run` puts first on the child's PYTHONPATH (it holds `sitecustomize`)."""
