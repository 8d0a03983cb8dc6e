"""Training: the LightningModule, its metrics, exact resume, safe checkpoint files, memory check, callbacks."""
