"""Local services for development, the demo and tests: Kafka (KRaft, from Maven jars), Redis, a Flink cluster."""
