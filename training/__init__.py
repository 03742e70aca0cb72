"""Training and updating routers (installed as ``neural_router.training``).

``config`` (TrainConfig, UpdateConfig: every default), ``train`` (``neural-router train``),
``trainer`` (train_router and the steps an update reuses), ``batches``, ``losses``,
``activation_cache`` (frozen-layer activations; the cached PyTorch predictor), ``router_init`` (a new
router's config and network), ``folder`` (save_router_folder), ``update/`` (``neural-router update``),
``evaluate``, ``lobo`` and ``demo``.
"""
