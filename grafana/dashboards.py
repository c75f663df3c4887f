"""The Grafana dashboards, as code (grafana-foundation-sdk); ``python grafana/dashboards.py`` writes their JSON.

Four dashboards, provisioned from ``grafana/dashboards/`` (see
``grafana/provisioning/``):

- **Pipeline overview**: per stage, lag, throughput, latency quantiles,
  errors, retries, dead letters, in-flight messages, workers, check outcomes;
- **Fetch health**: status codes, errors, bytes, time, politeness, alerts, events; render time,
  browser starts and memory;
- **LLM and rate limits**: calls by outcome, 429s per key, tokens, cost,
  limiter waits and denials, cache hits;
- **NATS JetStream**: prometheus-nats-exporter's consumer and stream
  figures, on the consumer (stream) leader only: other replicas report 0.

Every query here is evaluated by tests/test_dashboards.py against a real
Prometheus scraping a live pipeline, and must return data.  The committed
JSON must match this file (the same test regenerates and compares it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard, prometheus, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

OUT = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="prometheus")
RATE = "$__rate_interval"


def panel(title: str, description: str, unit: str, *queries: tuple[str, str]) -> timeseries.Panel:
    """A time series panel, half the width of the dashboard; ``queries`` are (PromQL, legend)."""
    built = timeseries.Panel().title(title).description(description).unit(unit).datasource(DATASOURCE)
    built = built.height(8).span(12).line_width(1).fill_opacity(10)
    for n, (expr, legend) in enumerate(queries):
        query = prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(chr(ord("A") + n))
        built = built.with_target(query.datasource(DATASOURCE))
    return built


def quantiles(metric: str, by: str = "", scale: str = "") -> list[tuple[str, str]]:
    """p50, p95 and p99 of a histogram, per ``by`` label if given."""
    group, legend = (f"le, {by}", f" {{{{{by}}}}}") if by else ("le", "")
    return [
        (
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket[{RATE}]))){scale}",
            f"p{int(q * 100)}{legend}",
        )
        for q in (0.5, 0.95, 0.99)
    ]


def board(uid: str, title: str, description: str) -> dashboard.Dashboard:
    return (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["pipeline"])
        .refresh("10s")
        .time("now-1h", "now")
        .timezone("browser")
    )


def overview() -> dashboard.Dashboard:
    return (
        board("pipeline-overview", "Pipeline overview", "Each stage of fetch -> scrape -> analyse -> alert")
        .with_row(dashboard.Row("Backlog and throughput"))
        .with_panel(
            panel(
                "Lag per stage",
                "num_pending + num_ack_pending of each stage's consumer: what KEDA scales on;"
                " and whether the exporter can read JetStream (1 = it can)",
                "short",
                ("pipeline_queue_lag", "{{queue}}"),
                ("pipeline_queue_pending", "{{queue}} not yet delivered"),
                ("pipeline_queue_ack_pending", "{{queue}} being processed"),
                ("pipeline_exporter_jetstream_up", "exporter reads JetStream"),
            )
        )
        .with_panel(
            panel(
                "Throughput per stage",
                "Messages finished per second (done or failed); under load a message carries up to 16 checks, "
                "which Check outcomes counts one by one",
                "ops",
                (f"sum by (queue_name) (rate(dramatiq_messages_total[{RATE}]))", "{{queue_name}}"),
            )
        )
        .with_panel(
            panel(
                "Latency per stage",
                "Time an actor spends on a message: p50, p95, p99",
                "s",
                *quantiles("dramatiq_message_duration_milliseconds", "queue_name", " / 1000"),
            )
        )
        .with_panel(
            panel(
                "Workers per stage",
                "Worker processes consuming each queue",
                "short",
                ("sum by (queue) (pipeline_worker_processes)", "{{queue}}"),
            )
        )
        .with_row(dashboard.Row("Failures"))
        .with_panel(
            panel(
                "Errors per stage",
                "Messages whose actor raised, per second",
                "ops",
                (f"sum by (queue_name) (rate(dramatiq_message_errors_total[{RATE}]))", "{{queue_name}}"),
            )
        )
        .with_panel(
            panel(
                "Retries per stage",
                "Messages sent back for another try, per second",
                "ops",
                (f"sum by (queue_name) (rate(dramatiq_message_retries_total[{RATE}]))", "{{queue_name}}"),
            )
        )
        .with_panel(
            panel(
                "Dead letters",
                "Dead letters kept per queue (events: invalid events; `pipeline dlq list`), and new ones per minute",
                "short",
                ("pipeline_dead_letters", "{{queue}} kept"),
                (
                    f"sum by (queue_name) (rate(dramatiq_message_rejects_total[{RATE}])) * 60",
                    "{{queue_name}} per minute",
                ),
            )
        )
        .with_panel(
            panel(
                "In flight",
                "Messages a worker is processing now (delays wait in NATS, not in workers)",
                "short",
                ("sum by (queue_name) (dramatiq_messages_inprogress)", "{{queue_name}}"),
            )
        )
        .with_row(dashboard.Row("Checks"))
        .with_panel(
            panel(
                "Check outcomes",
                "Stage results per second: fetched, unchanged, changed, relevant, sent, error",
                "ops",
                (f"sum by (stage, outcome) (rate(pipeline_checks_total[{RATE}]))", "{{stage}} {{outcome}}"),
            )
        )
    )


def fetch_health() -> dashboard.Dashboard:
    return (
        board("pipeline-fetch", "Fetch health", "What the fetch stage gets from the sites, and what alert delivers")
        .with_row(dashboard.Row("Fetch"))
        .with_panel(
            panel(
                "Responses by status",
                "HTTP responses per second, by status code",
                "ops",
                (f"sum by (code) (rate(pipeline_fetch_responses_total[{RATE}]))", "{{code}}"),
            )
        )
        .with_panel(
            panel(
                "Fetch errors",
                "Failed fetches per second: blocked, timeout, too_large, http_status, ...",
                "ops",
                (f"sum by (kind) (rate(pipeline_fetch_errors_total[{RATE}]))", "{{kind}}"),
            )
        )
        .with_panel(
            panel(
                "Bytes read",
                "Body bytes read per second",
                "Bps",
                (f"sum(rate(pipeline_fetch_response_bytes_total[{RATE}]))", "bytes"),
            )
        )
        .with_panel(
            panel(
                "Fetch time", "Request to last byte: p50, p95, p99", "s", *quantiles("pipeline_fetch_duration_seconds")
            )
        )
        .with_panel(
            panel(
                "Politeness",
                "Fetches sent back because their host's turn was taken, per second",
                "ops",
                (f'sum(rate(pipeline_ratelimit_denied_total{{limiter="fetch"}}[{RATE}]))', "waiting for a host"),
            )
        )
        .with_panel(
            panel(
                "Alerts",
                "Deliveries per second by channel and outcome",
                "ops",
                (f"sum by (channel, outcome) (rate(pipeline_alerts_total[{RATE}]))", "{{channel}} {{outcome}}"),
            )
        )
        .with_panel(
            panel(
                "Events",
                "Events ingested per second from NATS subjects, by kind and outcome",
                "ops",
                (f"sum by (kind, outcome) (rate(pipeline_events_total[{RATE}]))", "{{kind}} {{outcome}}"),
            )
        )
        .with_row(dashboard.Row("Render (pages written by JavaScript)"))
        .with_panel(
            panel(
                "Render time",
                "Load, wait, DOM and screenshot of a page in Chromium: p50, p95, p99",
                "s",
                *quantiles("pipeline_render_duration_seconds"),
            )
        )
        .with_panel(
            panel(
                "Browser starts",
                "Browsers started per minute, by reason: first, recycled (by count), memory (above"
                " PIPELINE_RENDER_MEMORY_LIMIT), crashed",
                "short",
                (f"sum by (reason) (rate(pipeline_render_browser_launches_total[{RATE}])) * 60", "{{reason}}"),
            )
        )
        .with_panel(
            panel(
                "Browser memory",
                "Proportional set size of the render workers' Chromium processes, all workers together",
                "bytes",
                ("sum(pipeline_render_browser_memory_bytes)", "browsers"),
            )
        )
    )


def llm_and_limits() -> dashboard.Dashboard:
    return (
        board(
            "pipeline-llm", "LLM and rate limits", "LLM calls per key (by label, never the key) and the shared quotas"
        )
        .with_panel(
            panel(
                "LLM calls by outcome",
                "ok, rate_limited (429), server_error, auth_error, ... per second",
                "ops",
                (f"sum by (outcome) (rate(pipeline_llm_requests_total[{RATE}]))", "{{outcome}}"),
            )
        )
        .with_panel(
            panel(
                "429s per key",
                "Calls the provider refused with 429, per second, per key label",
                "ops",
                (f'sum by (key) (rate(pipeline_llm_requests_total{{outcome="rate_limited"}}[{RATE}]))', "{{key}}"),
            )
        )
        .with_panel(
            panel(
                "Tokens",
                "Tokens per second the provider reported, prompt and completion",
                "short",
                (f"sum by (kind) (rate(pipeline_llm_tokens_total[{RATE}]))", "{{kind}}"),
            )
        )
        .with_panel(
            panel(
                "Cost",
                "USD per hour, by the configured price table",
                "currencyUSD",
                (f"sum by (model) (rate(pipeline_llm_cost_usd_total[{RATE}])) * 3600", "{{model}}"),
            )
        )
        .with_panel(
            panel(
                "Waiting for a slot",
                "Time calls waited for their slot in a shared quota: p50, p95, p99",
                "s",
                *quantiles("pipeline_ratelimit_wait_seconds", "limiter"),
            )
        )
        .with_panel(
            panel(
                "Sent back by a quota",
                "Calls returned to their queue because a quota was busy, per second",
                "ops",
                (f"sum by (limiter) (rate(pipeline_ratelimit_denied_total[{RATE}]))", "{{limiter}}"),
            )
        )
        .with_panel(
            panel(
                "Verdict cache hits",
                "Share of LLM questions answered from the cache",
                "percentunit",
                (
                    f'sum(rate(pipeline_llm_cache_total{{result="hit"}}[{RATE}]))'
                    f" / sum(rate(pipeline_llm_cache_total[{RATE}]))",
                    "hit ratio",
                ),
            )
        )
    )


def jetstream() -> dashboard.Dashboard:
    leader = 'is_consumer_leader="true"'
    return (
        board("pipeline-jetstream", "NATS JetStream", "prometheus-nats-exporter (-jsz=all), leaders only")
        .with_panel(
            panel(
                "Consumer pending",
                "Messages not yet delivered, per stream (consumer leader)",
                "short",
                (f'jetstream_consumer_num_pending{{{leader}, consumer_name="workers"}}', "{{stream_name}}"),
            )
        )
        .with_panel(
            panel(
                "Consumer ack pending",
                "Delivered, not yet acknowledged (consumer leader)",
                "short",
                (f'jetstream_consumer_num_ack_pending{{{leader}, consumer_name="workers"}}', "{{stream_name}}"),
            )
        )
        .with_panel(
            panel(
                "Redelivered",
                "Messages delivered more than once (consumer leader)",
                "short",
                (f"jetstream_consumer_num_redelivered{{{leader}}}", "{{stream_name}} {{consumer_name}}"),
            )
        )
        .with_panel(
            panel(
                "Stream messages",
                "Messages stored per stream (stream leader)",
                "short",
                ('jetstream_stream_total_messages{is_stream_leader="true"}', "{{stream_name}}"),
            )
        )
        .with_panel(
            panel(
                "Stream bytes",
                "Bytes stored per stream (stream leader)",
                "bytes",
                ('jetstream_stream_total_bytes{is_stream_leader="true"}', "{{stream_name}}"),
            )
        )
    )


DASHBOARDS = {"overview": overview, "fetch": fetch_health, "llm": llm_and_limits, "jetstream": jetstream}


def render() -> dict[str, str]:
    """File name -> JSON text of each dashboard."""
    return {
        f"{name}.json": json.dumps(build().build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"
        for name, build in DASHBOARDS.items()
    }


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text)
        print(f"wrote {OUT / name}", file=sys.stderr)


if __name__ == "__main__":
    main()
