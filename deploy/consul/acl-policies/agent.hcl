# A client agent's own token: register its node, read services for anti-entropy.
node_prefix "" {
  policy = "write"
}
service_prefix "" {
  policy = "read"
}
