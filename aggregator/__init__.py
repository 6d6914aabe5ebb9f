"""The tickbus aggregator: consumes metric events from RabbitMQ and serves them as one Prometheus target."""
