# Consul client agent on gpu-linux and gpu-wsl (host networking). Processors and the
# gateway on the host talk to it at http://host.docker.internal:8500 (CONSUL_HTTP_ADDR);
# it forwards to the server on cpu-linux and runs the TTL checks locally.
# Started as: consul agent -config-file=client.hcl -node=<host> -advertise=<HOST_IP>

datacenter = "home"
data_dir   = "/consul/data"
server     = false

# The server, by host name; retried until it answers, so start order does not matter.
retry_join = ["cpu-linux"]

bind_addr   = "0.0.0.0"
client_addr = "0.0.0.0"

acl {
  enabled                  = true
  default_policy           = "deny"
  enable_token_persistence = true
  # The agent token (policy acl-policies/agent.hcl) is set after the first start with
  #   consul acl set-agent-token agent <token>
  # and persisted by enable_token_persistence, so it is not written in this file.
}

# encrypt = "<same gossip key as server.hcl>"

telemetry {
  prometheus_retention_time = "60s"
  disable_hostname          = true
}
