# Consul server on cpu-linux (deploy/compose/cpu-linux.yml, host networking).
# Started as: consul agent -config-file=server.hcl -node=cpu-linux -advertise=<HOST_IP>
#
# One server, as the seed design has it. Morgan tolerates Consul being down: processors
# and gateways keep running on NATS, re-register with backoff, and serve config from
# their last good copy on disk. For a registry that survives a host, run three servers
# (bootstrap_expect = 3 on three hosts) and retry_join all of them.

datacenter = "home"
data_dir   = "/consul/data"
server     = true
bootstrap_expect = 1

# Listen on every interface; gossip and RPC advertise -advertise. The HTTP API (8500) is
# reached by Traefik, Prometheus and containers through host.docker.internal, and from
# other hosts by clients without a local agent (mac-m1): ACLs below guard it.
bind_addr   = "0.0.0.0"
client_addr = "0.0.0.0"

ui_config {
  enabled = true
}

ports {
  http     = 8500
  grpc     = 8502
  dns      = 8600
}

# ACLs: deny by default. After the first start, once:
#   consul acl bootstrap                      -> the management token; keep it offline
#   consul acl policy create -name morgan-service  -rules @acl-policies/morgan-service.hcl
#   consul acl policy create -name morgan-config   -rules @acl-policies/morgan-config.hcl
#   consul acl policy create -name traefik         -rules @acl-policies/traefik.hcl
#   consul acl policy create -name prometheus      -rules @acl-policies/prometheus.hcl
#   consul acl policy create -name agent           -rules @acl-policies/agent.hcl
#   consul acl token create -policy-name morgan-service -policy-name morgan-config
#       -> CONSUL_HTTP_TOKEN of every processor and gateway (secrets/CONSUL_HTTP_TOKEN)
#   consul acl token create -policy-name traefik     -> secrets/TRAEFIK_CONSUL_TOKEN
#   consul acl token create -policy-name prometheus  -> secrets/PROMETHEUS_CONSUL_TOKEN
#   consul acl token create -policy-name agent       -> acl.tokens.agent of each client agent
# enable_token_persistence keeps tokens set with `consul acl set-agent-token` across restarts.
acl {
  enabled                  = true
  default_policy           = "deny"
  enable_token_persistence = true
}

# Gossip encryption: generate with `consul keygen` and add the same key to client.hcl:
#   encrypt = "<base64 key>"

performance {
  raft_multiplier = 1
}

telemetry {
  prometheus_retention_time = "60s"
  disable_hostname          = true
}
