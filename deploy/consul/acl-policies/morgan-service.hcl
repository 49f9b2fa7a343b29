# Processors and gateways: register, check and deregister their own services
# ("morgan-gateway", "morgan-vad", "morgan-stt", ...), and read the catalog.
service_prefix "morgan-" {
  policy = "write"
}
node_prefix "" {
  policy = "read"
}
service_prefix "" {
  policy = "read"
}
