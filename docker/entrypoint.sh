#!/usr/bin/env bash
# Start-up of the GPU image: find (or build, and validate) the TensorRT plan
# for this GPU in the engines volume, assemble the GPU repository, then exec
# the launcher (python3 -m splade_triton.launcher, from /opt/splade): it runs
# the image's /opt/tritonserver as its child, reloads a model whose Python stub
# dies, and stops on SIGTERM without failing a request (readiness on port 8003
# reads 503 and every request is still served for the grace period; then the
# requests in flight finish). Arguments are passed on to tritonserver.
#
# Settings (environment):
#   SPLADE_ENGINE_DIR      plans, kept across restarts (default /engines, a volume)
#   SPLADE_PRECISION       fp16 (default) | fp32
#   SPLADE_BUILD_ENGINE    auto (default): build when no plan matches | never: refuse
#   SPLADE_VALIDATE_TEXTS  texts to validate a new plan on against ONNX Runtime FP32 (0: skip)
#   SPLADE_QUEUE_DELAY_US  the encoder's dynamic-batching queue delay
#   SPLADE_ADMIN_KEY       Triton's repository/shm/trace/logging APIs need it (unset: a random key
#                          only the launcher knows)
#   SPLADE_GRACE_PERIOD_S  seconds after SIGTERM with readiness 503 and every request still served,
#                          for load balancers to stop sending (default 0; the cluster's 15)
#   SPLADE_DRAIN_TIMEOUT_S seconds in-flight requests get after the grace period (default 30)
#   SPLADE_MODEL_CONTROL_MODE explicit (default: stub recovery and the drain) | none (no model
#                          loading or unloading at all; deploy/k8s/overlays/gpu)
set -euo pipefail

# NVIDIA's entrypoint first, once, when the base image has it (it sets up
# CUDA forward compatibility for older drivers).
if [ -z "${SPLADE_UNDER_NV_ENTRYPOINT:-}" ] && [ -x /opt/nvidia/nvidia_entrypoint.sh ]; then
  export SPLADE_UNDER_NV_ENTRYPOINT=1
  exec /opt/nvidia/nvidia_entrypoint.sh "$0" "$@"
fi

repository=/opt/splade/repository
prepare=(python3 -m splade_triton.artifacts.gpu_startup prepare
  --engines "${SPLADE_ENGINE_DIR:-/engines}"
  --output "$repository"
  --precision "${SPLADE_PRECISION:-fp16}"
  --build "${SPLADE_BUILD_ENGINE:-auto}"
  --validate-texts "${SPLADE_VALIDATE_TEXTS:-300}")
if [ -n "${SPLADE_QUEUE_DELAY_US:-}" ]; then
  prepare+=(--queue-delay-us "$SPLADE_QUEUE_DELAY_US")
fi
"${prepare[@]}"

# The launcher adds --strict-readiness, the restricted APIs behind the admin
# key, the Python backend's shm sizes and --load-model=* (explicit model
# control, for stub recovery and the drain). It binds 0.0.0.0 here: the
# container's network is the boundary (compose publishes on loopback only).
cd /opt/splade
export SPLADE_TRITONSERVER=/opt/tritonserver/bin/tritonserver  # the image's, even if pytriton is installed
exec python3 -m splade_triton.launcher \
  --model-repository "$repository" \
  --host 0.0.0.0 \
  --health-port 8003 \
  --grace-period "${SPLADE_GRACE_PERIOD_S:-0}" \
  --drain-timeout "${SPLADE_DRAIN_TIMEOUT_S:-30}" \
  --model-control-mode "${SPLADE_MODEL_CONTROL_MODE:-explicit}" \
  --exit-timeout 30 \
  -- "$@"
