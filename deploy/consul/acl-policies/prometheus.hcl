# Prometheus consul_sd_configs: read services and nodes; /v1/agent/metrics needs agent read.
service_prefix "" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}
agent_prefix "" {
  policy = "read"
}
