#!/usr/bin/env bash
# Start-up of the GPU image: find (or build, and validate) the TensorRT plan
# for this GPU in the engines volume, assemble the GPU repository, then exec
# tritonserver. Arguments are passed on to tritonserver.
#
# Settings (environment):
#   SPLADE_ENGINE_DIR      plans, kept across restarts (default /engines, a volume)
#   SPLADE_PRECISION       fp16 (default) | fp32
#   SPLADE_BUILD_ENGINE    auto (default): build when no plan matches | never: refuse
#   SPLADE_VALIDATE_TEXTS  texts to validate a new plan on against ONNX Runtime FP32 (0: skip)
#   SPLADE_QUEUE_DELAY_US  the encoder's dynamic-batching queue delay
#   SPLADE_ADMIN_KEY       if set, Triton's repository/shm/trace/logging APIs need it
set -euo pipefail

# NVIDIA's entrypoint first, once, when the base image has it (it sets up
# CUDA forward compatibility for older drivers).
if [ -z "${SPLADE_UNDER_NV_ENTRYPOINT:-}" ] && [ -x /opt/nvidia/nvidia_entrypoint.sh ]; then
  export SPLADE_UNDER_NV_ENTRYPOINT=1
  exec /opt/nvidia/nvidia_entrypoint.sh "$0" "$@"
fi

repository=/opt/splade/repository
prepare=(python3 -m splade_triton.artifacts.engine prepare
  --engines "${SPLADE_ENGINE_DIR:-/engines}"
  --output "$repository"
  --precision "${SPLADE_PRECISION:-fp16}"
  --build "${SPLADE_BUILD_ENGINE:-auto}"
  --validate-texts "${SPLADE_VALIDATE_TEXTS:-300}")
if [ -n "${SPLADE_QUEUE_DELAY_US:-}" ]; then
  prepare+=(--queue-delay-us "$SPLADE_QUEUE_DELAY_US")
fi
"${prepare[@]}"

args=(--model-repository="$repository"
  --strict-readiness=true
  --exit-timeout-secs=30
  # Python models exchange tensors through /dev/shm; grow it in big steps
  # (as the CPU launcher does). compose.yaml gives the container 1 GiB of it.
  --backend-config=python,shm-default-byte-size=16777216
  --backend-config=python,shm-growth-byte-size=16777216)
if [ -n "${SPLADE_ADMIN_KEY:-}" ]; then
  # The same APIs and header as the CPU launcher (splade_triton.launcher.server).
  restricted=$(python3 -c 'import os; from splade_triton.launcher.server import ADMIN_HEADER, RESTRICTED_APIS; print(",".join(RESTRICTED_APIS) + ":" + ADMIN_HEADER + "=" + os.environ["SPLADE_ADMIN_KEY"])')
  args+=(--http-restricted-api="$restricted" --grpc-restricted-protocol="$restricted")
  unset SPLADE_ADMIN_KEY  # the models have no use for it
fi
exec tritonserver "${args[@]}" "$@"
