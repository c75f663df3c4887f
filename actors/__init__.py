"""The pipeline's Dramatiq actors; importing this package sets the broker.

``dramatiq actors --queues <stage>`` starts a worker on the JetStream
broker: ``PIPELINE_NATS_URL`` names the server, and without it an embedded
``nats-server`` is started under ``.pipeline/``; ``PIPELINE_PREFIX`` names the
streams and subjects (default ``pipeline``).  The actors are thin: the
work lives in :mod:`pipeline.stages`.
"""

import os

import dramatiq

from pipeline import redact
from pipeline.broker import JetStreamBroker

redact.install()  # Dramatiq logs failed messages with their arguments: no URL secrets in them
broker = JetStreamBroker(prefix=os.environ.get("PIPELINE_PREFIX", "pipeline"))
dramatiq.set_broker(broker)

from actors import stages  # noqa: E402, F401 - declares the stage actors on the broker
