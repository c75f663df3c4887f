"""The pipeline's Dramatiq actors; importing this package sets the broker.

``dramatiq actors --queues <stage>`` starts a worker on the JetStream
broker: ``PIPELINE_NATS_URL`` names the server, and without it an embedded
``nats-server`` is started under ``.pipeline/``.
"""

import dramatiq

from pipeline.broker import JetStreamBroker

broker = JetStreamBroker()
dramatiq.set_broker(broker)
