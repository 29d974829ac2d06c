# The voxmesh router: the one public gRPC endpoint, in front of the ASR pools. It runs on
# CPU nodes (node pool "default"). Nomad registers it in Consul (its metadata is static);
# the ASR instances register themselves instead (see README.md).

variable "image" {
  type        = string
  description = "Container image with voxmesh installed (entry points python -m services.*)."
  default     = "voxmesh:0.1.0"
}

variable "datacenters" {
  type        = list(string)
  description = "Datacenters the job may run in."
  default     = ["*"]
}

job "router" {
  type        = "service"
  node_pool   = "default"
  datacenters = var.datacenters

  update {
    max_parallel      = 1
    health_check      = "checks"
    min_healthy_time  = "10s"
    healthy_deadline  = "3m"
    progress_deadline = "10m"
    auto_revert       = true
  }

  group "router" {
    count = 2

    # Deregister from Consul first, then SIGTERM: clients stop picking this router
    # before it starts draining.
    shutdown_delay = "5s"

    migrate {
      max_parallel     = 1
      health_check     = "checks"
      min_healthy_time = "10s"
      healthy_deadline = "3m"
    }

    spread {
      attribute = "${node.unique.id}"
    }

    network {
      port "grpc" {}
      port "metrics" {}
    }

    service {
      provider = "consul"
      name     = "voxmesh-router"
      port     = "grpc"
      tags     = ["grpc"]

      meta {
        metrics_port = "${NOMAD_PORT_metrics}"
      }

      check {
        name         = "grpc-health"
        type         = "grpc"
        port         = "grpc"
        grpc_service = "voxmesh.stt.v1.RecognizerService"
        grpc_use_tls = false
        interval     = "5s"
        timeout      = "2s"
      }
    }

    task "router" {
      driver = "docker"

      # SIGTERM drains: NOT_SERVING, no new streams, active ones get
      # VOXMESH_ROUTER_DRAIN_TIMEOUT_S (30 s). kill_timeout must exceed it.
      kill_signal  = "SIGTERM"
      kill_timeout = "45s"

      # The router starts its native data path (Go, `make dataplane`) as a child
      # process serving the grpc port: the image (Dockerfile) carries it and names it
      # in VOXMESH_ROUTER_DATAPLANE_BIN; an image without it needs
      # VOXMESH_ROUTER_DATA_PATH = "python" to relay in Python.
      config {
        image   = var.image
        command = "python"
        args    = ["-m", "services.router"]
        ports   = ["grpc", "metrics"]
      }

      env {
        VOXMESH_ROUTER_HOST            = "0.0.0.0"
        VOXMESH_ROUTER_PORT            = "${NOMAD_PORT_grpc}"
        VOXMESH_ROUTER_METRICS_PORT    = "${NOMAD_PORT_metrics}"
        VOXMESH_ROUTER_INSTANCE_ID     = "router-${NOMAD_ALLOC_ID}"
        VOXMESH_ROUTER_REGION          = "${node.datacenter}"
        VOXMESH_ROUTER_DISCOVERY       = "consul"
        VOXMESH_ROUTER_CONSUL_ADDRESS  = "http://${attr.unique.network.ip-address}:8500"
        VOXMESH_ROUTER_DRAIN_TIMEOUT_S = "30"
        # Off: a draining instance gets no new stream. "true" sends a stream to a
        # preemptible instance under a spot notice (100 s drain, 30 s must be left) when
        # no other instance has room, instead of queueing it (nomad/README.md, Stopping).
        VOXMESH_ROUTER_LAST_RESORT = "false"
        # TLS on the public endpoint (docs/router.md, TLS): render the pair into the
        # secrets dir (a template from Vault PKI, change_mode "noop": the router re-reads
        # changed files at the next handshake) and set grpc_use_tls on the check above.
        # The autoscaler must then reach the routers over TLS too:
        # VOXMESH_AUTOSCALER_ROUTER_TLS_CA_FILE (and _CERT_FILE/_KEY_FILE for mutual TLS).
        # VOXMESH_ROUTER_TLS_CERT_FILE = "${NOMAD_SECRETS_DIR}/tls.pem"
        # VOXMESH_ROUTER_TLS_KEY_FILE  = "${NOMAD_SECRETS_DIR}/tls.key"
      }

      resources {
        cpu    = 1000
        memory = 512
      }
    }
  }
}
