"""Training and evaluation pieces (losses, stage-1 steps, clustering and prototypes, curriculum, checkpoints,
the Cross-modal Referrer) and the two training stages' library modules (stage1.py, stage2.py)."""
