/* The metrics listener (metrics_listen = ADDRESS:PORT): plain HTTP, no token, one
 * route: GET (or HEAD) /metrics answers the Prometheus text of core_metrics_prometheus;
 * every other path or method is 404, with no body read. Why no token and no TLS
 * (docs/API.md "Metrics listener"): the text holds counters, gauges and tenant names,
 * never key material, tokens, principal names or context values, and Prometheus
 * scrapers rarely carry a bearer token per target; the default is off, and the
 * documented deployment binds it to loopback for a local agent. It is small on
 * purpose: one polling thread, a handful of connections, short timeouts, and scrapes
 * cost at most one store aggregate a second (CORE_GAUGE_REFRESH_MS). Scrapes are not
 * audited (they touch no key and no principal). */
#ifndef KMS_HTTP_METRICS_LISTEN_H
#define KMS_HTTP_METRICS_LISTEN_H

#include "kms/base/err.h"

struct metrics_listener;
struct core;
struct kms_config;

/* Binds cfg->metrics_listen (before kmsd leaves root); *port_out: the bound port.
 * KMS_ERR_CONFIG for a malformed value, KMS_ERR_IO when it cannot bind. */
KMS_WUR kms_err metrics_listen_prepare(const struct kms_config *cfg, struct metrics_listener **out,
				       int *port_out);

/* Serves until metrics_listen_stop; core must outlive it. */
KMS_WUR kms_err metrics_listen_start(struct metrics_listener *m, struct core *core);

/* Stops serving, closes, frees. Accepts NULL. */
void metrics_listen_stop(struct metrics_listener *m);

#endif
