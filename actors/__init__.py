"""The pipeline's Dramatiq actors; importing this package sets the broker.

``dramatiq actors --queues <stage>`` starts a worker on the JetStream
broker, set up from :mod:`pipeline.settings`: ``PIPELINE_NATS_URL`` names the
server, and without it an embedded ``nats-server`` is started under
``.pipeline/``; ``PIPELINE_PREFIX`` names the streams and subjects (default
``pipeline``); ``PIPELINE_NATS_REPLICAS`` their replicas.  The actors are thin: the
work lives in :mod:`pipeline.stages`; metrics: :mod:`pipeline.observability`.
"""

import os

import dramatiq
from dramatiq.middleware import CurrentMessage
from dramatiq.middleware.prometheus import DB_PATH

# Our metrics go where Dramatiq's go (``dramatiq_prom_db``), in every worker process:
# prometheus-client reads this when it is first imported, which is below.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", DB_PATH)

from pipeline import redact
from pipeline.broker import JetStreamBroker
from pipeline.observability import WorkerMetrics
from pipeline.settings import current

redact.install()  # Dramatiq logs failed messages with their arguments: no URL secrets in them
settings = current()
broker = JetStreamBroker(settings.nats.url, prefix=settings.prefix)
broker.add_middleware(WorkerMetrics())
broker.add_middleware(CurrentMessage())  # a message put back to wait (actors.recovery) keeps its retries
dramatiq.set_broker(broker)

from actors import stages  # noqa: E402, F401 - declares the stage actors on the broker
