"""Pipelines on top of the router_ml library: simulate logged traffic, train and version policies, run the demo."""
