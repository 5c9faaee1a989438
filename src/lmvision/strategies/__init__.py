"""One LightningModule per strategy; each owns its loss, steps, metrics and optimiser wiring."""
