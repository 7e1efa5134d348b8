"""The HTTP routing service (tracked as its own issue); it will stand on router_ml, never on training."""
