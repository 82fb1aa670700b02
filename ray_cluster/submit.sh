#!/usr/bin/env bash
# Submit one Themis stage to a running Ray cluster from this checkout (`make submit` runs this):
#   ray_cluster/submit.sh STAGE [key=value ...]
# It runs `ray job submit --working-dir . --runtime-env ray_cluster/runtime_env.yaml --
#   python -m jobs.STAGE --config $JOB_CONFIG run.storage.root=$STORAGE_ROOT [key=value ...]`
# and follows the job's logs until it ends (Ctrl-C detaches; `ray job stop <id>` stops it).
#
# Where: RAY_ADDRESS (e.g. http://127.0.0.1:8265 under `ray dashboard ray_cluster/vms.yaml`), or,
# when unset, a port-forward to the KubeRay head service $RAY_CLUSTER-head-svc in $NAMESPACE on
# the current kube context, opened here and closed on exit. By hand that is:
#   kubectl -n themis port-forward svc/themis-train-head-svc 8265:8265
# Auth: Ray 2.60 clusters want a token. RAY_AUTH_TOKEN, else ~/.ray/auth_token, else the Secret
# KubeRay made for the cluster (authOptions.mode: token), key auth_token.
# DRY_RUN=1 prints the submit command instead of running it.
set -euo pipefail

stage=${1:?usage: ray_cluster/submit.sh STAGE [key=value ...]}
shift
namespace=${NAMESPACE:-themis}
cluster=${RAY_CLUSTER:-themis-train}
port=${PORT:-8265}
: "${JOB_CONFIG:?set JOB_CONFIG, e.g. jobs/configs/cluster.yaml}"
: "${STORAGE_ROOT:?set STORAGE_ROOT, e.g. s3://<bucket>/runs}"

command=("${RAY:-ray}" job submit --address "${RAY_ADDRESS:-http://127.0.0.1:$port}" --working-dir .
  --runtime-env ray_cluster/runtime_env.yaml --
  python -m "jobs.$stage" --config "$JOB_CONFIG" "run.storage.root=$STORAGE_ROOT" "$@")
if [ -n "${DRY_RUN:-}" ]; then
  printf '%q ' "${command[@]}"
  echo
  exit 0
fi

if [ -z "${RAY_ADDRESS:-}" ]; then
  kubectl -n "$namespace" port-forward "svc/$cluster-head-svc" "$port:8265" >/dev/null &
  forward=$!
  trap 'kill "$forward" 2>/dev/null || true' EXIT
  for _ in $(seq 60); do
    (: </dev/tcp/127.0.0.1/"$port") 2>/dev/null && break
    sleep 1
  done
fi

if [ -z "${RAY_AUTH_TOKEN:-}" ] && [ ! -f "${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}" ]; then
  RAY_AUTH_TOKEN=$(kubectl -n "$namespace" get secret "$cluster" -o jsonpath='{.data.auth_token}' | base64 -d)
  export RAY_AUTH_TOKEN
fi
export RAY_AUTH_MODE=token
"${command[@]}"
