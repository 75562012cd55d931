"""Pod linking: which Pod each in-cluster agent runs in, and ending agents whose Pod is deleted."""
