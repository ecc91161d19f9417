#!/usr/bin/env bash
# Serve an open chat model with vLLM's OpenAI-compatible server on this node, for the query
# stage (infra/vllm/README.md). Usage: serve.sh MODEL [vllm serve options...]
# Run it as a Ray job so the GPUs it uses are reserved in the cluster the corpus build runs on.
set -euo pipefail
model="${1:?usage: serve.sh MODEL [vllm serve options]}"; shift
port="${VLLM_PORT:-8000}"
ip="$(python -c 'import ray._private.services as s; print(s.get_node_ip_address())' 2>/dev/null || hostname -I | awk '{print $1}')"
echo "query endpoint: --set stages.query.base_url=http://${ip}:${port}/v1 --set stages.query.model=${model} --set stages.query.api_key_env=null"
exec vllm serve "$model" --host 0.0.0.0 --port "$port" "$@"
