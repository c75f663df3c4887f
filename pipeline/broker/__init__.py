"""A Dramatiq broker on NATS JetStream."""

from pipeline.broker.broker import JetStreamBroker
from pipeline.broker.errors import BatchPublishError, DeadLetterError
from pipeline.names import QueueNames

__all__ = ["BatchPublishError", "DeadLetterError", "JetStreamBroker", "QueueNames"]
