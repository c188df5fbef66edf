"""Real-time monitors of the reelpulse event topics, on Faust (faust-streaming).

Modules, in the order data flows through them:

- ``codec``: Confluent wire format -> records, through the schema registry (cached by id)
- ``pipeline``: decode, dead-letter what cannot be accepted, feed the processor, send alerts
- ``processor``: fold events into windowed partial aggregates, close windows, evaluate rules
- ``monitors``: what each monitor counts and the metrics it reports
- ``stats``, ``windows``: percentiles, baselines, event-time windows and the watermark
- ``alerts``: hysteresis, stable alert ids, alert records, the notification fence
- ``config`` + ``rules.toml``: every threshold, in one file
- ``app``: the Faust worker (tables, agents, flush timer); ``fastpath``: its consumer fixes
- ``web`` + ``live.html``: JSON endpoints and the live page
- ``sinks``: ``reelpulse alerts tail`` and the webhook sink
- ``cli``: the commands

See README.md for how to run it and what it guarantees.
"""
