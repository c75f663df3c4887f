"""An AI monitoring pipeline on Dramatiq and NATS JetStream."""

__version__ = "0.1.0"
