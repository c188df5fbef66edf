"""The event collector: the HTTP front door devices post events to.

``collector.app.create_app`` builds the ASGI service (``reelpulse collector serve`` runs it
with uvicorn); ``collector.client`` is a device-like client. See ``collector/README.md``
for the wire format, the status codes and the delivery guarantee.
"""
