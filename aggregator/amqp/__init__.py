"""The AMQP side: connecting, the topology, consuming with acks, publishing dead letters, the operator's DLQ tool."""
