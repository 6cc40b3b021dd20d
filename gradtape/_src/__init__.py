"""gradtape's internals, in layers (see ARCHITECTURE.md). Nothing here is public API: the
public surface is ``gradtape``, ``gradtape.extend``, ``gradtape.nn``, ``gradtape.optimizers``
and ``gradtape.testing``."""
