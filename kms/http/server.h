/* The HTTPS front: libmicrohttpd with GnuTLS, a thread pool, body caps and
 * connection limits. It parses and bounds; kms/core decides and performs. */
#ifndef KMS_HTTP_SERVER_H
#define KMS_HTTP_SERVER_H

#include "kms/base/err.h"

struct http_server;
struct core;
struct kms_config;

/* Starts listening; *port_out receives the bound port (useful with port 0). */
KMS_WUR kms_err http_start(const struct kms_config *cfg, struct core *core, struct http_server **out,
			   int *port_out);

/* Stops accepting, waits for the workers, frees. Accepts NULL. */
void http_stop(struct http_server *s);

#endif
