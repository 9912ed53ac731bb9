/* The HTTPS front: libmicrohttpd with GnuTLS, a thread pool, body caps and
 * connection limits. It parses and bounds; kms/core decides and performs. */
#ifndef KMS_HTTP_SERVER_H
#define KMS_HTTP_SERVER_H

#include "kms/base/err.h"

struct http_server;
struct core;
struct kms_config;

/* Reads tls_cert and tls_key and binds the listening socket (connections wait in its
 * backlog until http_start); starts no thread. Run before kmsd leaves root, which may
 * be what reading the key or binding a port below 1024 needs. *port_out receives the
 * bound port (useful with port 0). Free with http_stop. */
KMS_WUR kms_err http_prepare(const struct kms_config *cfg, struct http_server **out, int *port_out);

/* Serves on s's socket: the worker pool and the request-deadline sweeper. On failure s
 * is still http_stop's to free. */
KMS_WUR kms_err http_start(struct http_server *s, const struct kms_config *cfg, struct core *core);

/* Stops accepting, waits for the workers, closes the socket, frees. Accepts NULL. */
void http_stop(struct http_server *s);

#endif
