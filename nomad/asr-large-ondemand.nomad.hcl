# asr_large (base) on on-demand GPUs: the pool's baseline. Unlike asr_small this pool may
# scale to zero when idle (at night): Nomad's floor is 0, and so is the autoscaler's
# (VOXMESH_AUTOSCALER_ON_DEMAND_MIN in autoscaler.nomad.hcl).
# Its burst twin is asr-large-preemptible.nomad.hcl. The two capacity classes are two
# jobs because node_pool is a job attribute and a deployment blocks scaling of the whole
# job (see README.md). The voxmesh autoscaler changes `count` through the scale API.

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

job "asr-large-ondemand" {
  type        = "service"
  node_pool   = "gpu-ondemand"
  datacenters = var.datacenters

  meta {
    voxmesh_pool           = "asr_large"
    voxmesh_capacity_class = "on-demand"
  }

  # A rollout (and every count change, which Nomad turns into a new job version) is a
  # deployment; the scale API refuses further changes until it ends, so it is short.
  # The instance registers itself in Consul, so there are no Nomad checks: health is the
  # task running for min_healthy_time.
  update {
    max_parallel      = 1
    health_check      = "task_states"
    min_healthy_time  = "10s"
    healthy_deadline  = "5m"
    progress_deadline = "10m"
    auto_revert       = true
  }

  group "asr" {
    count = 1

    # Bounds the autoscaler honours (it clamps to them) and Nomad enforces on the scale
    # API. No policy block: voxmesh's autoscaler is the policy.
    scaling {
      enabled = true
      min     = 0
      max     = 8
    }

    # Node drains move allocations a few at a time; every instance drains its streams first.
    migrate {
      max_parallel     = 1
      health_check     = "task_states"
      min_healthy_time = "10s"
      healthy_deadline = "5m"
    }

    network {
      port "grpc" {}
      port "metrics" {}
    }

    task "asr" {
      driver = "docker"

      # SIGTERM starts the instance's drain: NOT_SERVING, Consul maintenance, streams
      # finish within VOXMESH_ASR_DRAIN_TIMEOUT (30 s), deregister, exit. kill_timeout
      # must exceed that drain timeout (the client's max_kill_timeout must allow 45s).
      kill_signal  = "SIGTERM"
      kill_timeout = "45s"

      config {
        image   = var.image
        command = "python"
        args    = ["-m", "services.asr_large"]
        ports   = ["grpc", "metrics"]
      }

      env {
        VOXMESH_ASR_POOL           = "asr_large"
        VOXMESH_ASR_MODEL          = "base"
        VOXMESH_ASR_CAPACITY_CLASS = "on-demand"
        VOXMESH_ASR_INSTANCE_ID    = "${NOMAD_ALLOC_ID}"
        VOXMESH_ASR_HOST           = "0.0.0.0"
        VOXMESH_ASR_PORT           = "${NOMAD_PORT_grpc}"
        VOXMESH_ASR_ADVERTISE_HOST = "${NOMAD_IP_grpc}"
        VOXMESH_ASR_METRICS_PORT   = "${NOMAD_PORT_metrics}"
        VOXMESH_ASR_DEVICE         = "cuda"
        VOXMESH_ASR_REGION         = "${node.datacenter}"
        VOXMESH_ASR_DISCOVERY      = "consul"
        VOXMESH_ASR_CONSUL_ADDR    = "http://${attr.unique.network.ip-address}:8500"
        VOXMESH_ASR_DRAIN_TIMEOUT  = "30"
        # PLACEHOLDER: streams per GPU from bench/results/asr_density.json (not measured yet).
        VOXMESH_ASR_MAX_STREAMS = "8"
      }

      # PLACEHOLDER: cpu, memory and GPU memory from bench/results/asr_density.json
      # (not measured yet); base (74M parameters) is about 150 MB in float16;
      # the rest is per-stream decoding state.
      resources {
        cpu    = 2000
        memory = 4096

        device "nvidia/gpu" {
          count = 1

          constraint {
            attribute = "${device.attr.memory}"
            operator  = ">="
            value     = "8 GiB"
          }
        }
      }
    }
  }
}
