"""Learning steps: training (with context windows), its curves, and evaluation with the gate."""
