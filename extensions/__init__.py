"""The platform's Jupyter server extensions, one package each."""
