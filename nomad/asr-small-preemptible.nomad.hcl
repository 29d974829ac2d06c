# asr_small (tiny.en) on preemptible (spot) GPUs: bursts, scaled down to zero when idle.
# Its baseline twin is asr-small-ondemand.nomad.hcl. The two capacity classes are two
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

job "asr-small-preemptible" {
  type        = "service"
  node_pool   = "gpu-preemptible"
  datacenters = var.datacenters

  meta {
    voxmesh_pool           = "asr_small"
    voxmesh_capacity_class = "preemptible"
  }

  # A rollout (and every count change, which Nomad turns into a new job version) is a
  # deployment; the scale API refuses further changes until it ends, so it is short.
  # The instance registers itself in Consul, so there are no Nomad checks: health is the
  # task running for min_healthy_time. Placements fail here whenever spot capacity is
  # gone, and a deployment that cannot place stays active until its progress deadline,
  # refusing every scale call meanwhile: the deadlines are shorter than on-demand's.
  # No auto_revert: a count-only version that cannot place is what spot shortage looks
  # like, not a bad release; reverting it would drop the requested count every
  # progress_deadline while the autoscaler keeps it requested for when capacity returns.
  update {
    max_parallel      = 1
    health_check      = "task_states"
    min_healthy_time  = "10s"
    healthy_deadline  = "3m"
    progress_deadline = "4m"
    auto_revert       = false
  }

  group "asr" {
    count = 0

    # Bounds the autoscaler honours (it clamps to them) and Nomad enforces on the scale
    # API. No policy block: voxmesh's autoscaler is the policy.
    scaling {
      enabled = true
      min     = 0
      max     = 16
    }

    # A reclaimed spot node gives about two minutes' notice: move its allocations at once
    # (each drains its streams first); the autoscaler adds on-demand replacements meanwhile.
    migrate {
      max_parallel     = 4
      health_check     = "task_states"
      min_healthy_time = "10s"
      healthy_deadline = "3m"
    }

    network {
      port "grpc" {}
      port "metrics" {}
    }

    task "asr" {
      driver = "docker"

      # SIGTERM starts the instance's drain: NOT_SERVING, Consul maintenance, streams
      # finish within VOXMESH_ASR_DRAIN_TIMEOUT, deregister, exit. Here that is 100 s, most
      # of a spot reclaim's two-minute notice: the streams stay on the reclaimed node until
      # the on-demand replacements the autoscaler requests on the notice (about a minute to
      # serve) can take them, instead of moving after 30 s to a mesh with no room yet.
      # kill_timeout must exceed the drain timeout (the client's max_kill_timeout must
      # allow 110s).
      kill_signal  = "SIGTERM"
      kill_timeout = "110s"

      config {
        image   = var.image
        command = "python"
        args    = ["-m", "services.asr_small"]
        ports   = ["grpc", "metrics"]
      }

      env {
        VOXMESH_ASR_POOL           = "asr_small"
        VOXMESH_ASR_MODEL          = "tiny.en"
        VOXMESH_ASR_CAPACITY_CLASS = "preemptible"
        VOXMESH_ASR_INSTANCE_ID    = "${NOMAD_ALLOC_ID}"
        VOXMESH_ASR_HOST           = "0.0.0.0"
        VOXMESH_ASR_PORT           = "${NOMAD_PORT_grpc}"
        VOXMESH_ASR_ADVERTISE_HOST = "${NOMAD_IP_grpc}"
        VOXMESH_ASR_METRICS_PORT   = "${NOMAD_PORT_metrics}"
        VOXMESH_ASR_DEVICE         = "cuda"
        VOXMESH_ASR_REGION         = "${node.datacenter}"
        VOXMESH_ASR_DISCOVERY      = "consul"
        VOXMESH_ASR_CONSUL_ADDR    = "http://${attr.unique.network.ip-address}:8500"
        VOXMESH_ASR_DRAIN_TIMEOUT  = "100"
        # PLACEHOLDER: streams per GPU from bench/results/asr_density.json (not measured yet).
        VOXMESH_ASR_MAX_STREAMS = "16"
      }

      # PLACEHOLDER: cpu, memory and GPU memory from bench/results/asr_density.json
      # (not measured yet); tiny.en (39M parameters) is about 80 MB in float16;
      # the rest is per-stream decoding state.
      resources {
        cpu    = 2000
        memory = 3072

        device "nvidia/gpu" {
          count = 1

          constraint {
            attribute = "${device.attr.memory}"
            operator  = ">="
            value     = "4 GiB"
          }
        }
      }
    }
  }
}
