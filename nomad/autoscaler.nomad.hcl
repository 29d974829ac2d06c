# The voxmesh autoscaler with the Nomad target. Two replicas on CPU nodes; a Consul
# session lock elects the one that acts, the other stands by. Nomad registers its gRPC
# control API in Consul. It scales the ASR jobs through Nomad's scale API (see README.md
# for the ACL policy it needs).

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

job "autoscaler" {
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

  group "autoscaler" {
    count = 2

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
      name     = "voxmesh-autoscaler"
      port     = "grpc"
      tags     = ["grpc"]

      meta {
        metrics_port = "${NOMAD_PORT_metrics}"
      }

      check {
        name         = "grpc-health"
        type         = "grpc"
        port         = "grpc"
        grpc_use_tls = false
        interval     = "5s"
        timeout      = "2s"
      }
    }

    task "autoscaler" {
      driver = "docker"

      # SIGTERM: release the leader lock (so the standby takes over at once), finish the
      # decision in flight, stop the gRPC server within VOXMESH_AUTOSCALER_DRAIN_TIMEOUT.
      kill_signal  = "SIGTERM"
      kill_timeout = "45s"

      # A Nomad token for this task (workload identity), used for the scale API.
      identity {
        env = true
      }

      config {
        image   = var.image
        command = "python"
        args    = ["-m", "services.autoscaler"]
        ports   = ["grpc", "metrics"]
      }

      env {
        VOXMESH_AUTOSCALER_HOST          = "0.0.0.0"
        VOXMESH_AUTOSCALER_PORT          = "${NOMAD_PORT_grpc}"
        VOXMESH_AUTOSCALER_METRICS_PORT  = "${NOMAD_PORT_metrics}"
        VOXMESH_AUTOSCALER_INSTANCE_ID   = "autoscaler-${NOMAD_ALLOC_ID}"
        VOXMESH_AUTOSCALER_TARGET        = "nomad"
        VOXMESH_AUTOSCALER_NOMAD_ADDR    = "http://${attr.unique.network.ip-address}:4646"
        VOXMESH_AUTOSCALER_DISCOVERY     = "consul"
        VOXMESH_AUTOSCALER_CONSUL_ADDR   = "http://${attr.unique.network.ip-address}:8500"
        VOXMESH_AUTOSCALER_LEADER_KEY    = "voxmesh/autoscaler/leader"
        VOXMESH_AUTOSCALER_DRAIN_TIMEOUT = "30"
        # asr_large may go to zero when idle (at night); asr_small keeps its baseline of 1.
        VOXMESH_AUTOSCALER_ON_DEMAND_MIN = "asr_large=0"
      }

      resources {
        cpu    = 500
        memory = 256
      }
    }
  }
}
