"""What operators of the operator look at: the Grafana fleet dashboard, built as code."""
