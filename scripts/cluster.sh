#!/bin/sh
# cluster.sh up|down|status|destroy [--nodes N] — a local kmsd cluster (issue 10,
# docs/SCALE-OUT.md). NOT for production (dev token, dev CA, trust auth in PostgreSQL).
#
#   up       makes (or reuses) under ./var/cluster one SoftHSM2 token shared by all nodes
#            (scripts/dev-token.sh), the dev certificates (scripts/dev-certs.sh),
#            PostgreSQL (scripts/pgtmp.sh; KMS_CLUSTER_STORE=sqlite: one SQLite file
#            instead), runs `kmsd init` once, starts N kmsd nodes (N = 2 or 3, default 3;
#            node_id node-<i>, each its own port and audit log) and HAProxy in front
#            (TCP mode, TLS passed through, health checks on GET /v1/sys/health over TLS);
#            prints how to call it
#   status   what runs, and what HAProxy thinks of each node; exit 1 if anything is down
#   down     stops HAProxy, the nodes (SIGTERM) and PostgreSQL by the PIDs `up` wrote;
#            the data stays for the next `up`
#   destroy  down, then deletes ./var/cluster and PostgreSQL's data
#
# Ports, all on 127.0.0.1: HAProxy on KMS_CLUSTER_PORT (default 8300), node i on
# KMS_CLUSTER_PORT + i, PostgreSQL on KMS_CLUSTER_PORT + 9.
# Environment: KMSD_BIN (build/kmsd), KMS_CLUSTER_STORE (pg | sqlite; default pg),
# KMS_CLUSTER_DIR (var/cluster), KMS_CLUSTER_POLICY (a policy_file for every node; default
# the built-in policy), KMSD_WORKERS (0 = one per core), KMSD_LOG_LEVEL (info).
# The work is done by scripts/kmscluster.py, which the cluster tests and the bench use too.
set -eu
cd "$(dirname "$0")/.."
PYTHON=/usr/bin/python3
[ -x "$PYTHON" ] || PYTHON=python3
exec "$PYTHON" scripts/kmscluster.py "$@"
