"""Training: the loss (token-weighted), and as they land the step, loop and checkpoints."""
