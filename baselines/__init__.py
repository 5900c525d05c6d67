"""Supervised segmentation baselines (MONAI U-Net family) trained and scored like PixelDRL-MG.

``baselines.models``: ``build_baseline``; ``baselines.train``: the trainer
(``python -m baselines.train``, ``train_baseline``) and ``evaluate_baseline``. See
docs/BASELINES.md. May import ``a3c`` and ``datasets``, never ``workers`` or ``tools``.
"""
