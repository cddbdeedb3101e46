"""Labs: small, readable implementations for understanding, not for training."""
