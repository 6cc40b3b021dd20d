"""Runnable examples. ``python -m gradtape.examples.digits`` (or ``gradtape-demo``) trains an
MLP and a small CNN on scikit-learn's bundled handwritten digits."""
