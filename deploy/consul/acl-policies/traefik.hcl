# Traefik's consulCatalog provider: read services, their health and nodes.
service_prefix "" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}
