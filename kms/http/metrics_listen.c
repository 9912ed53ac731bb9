#include "kms/http/metrics_listen.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "kms/base/log.h"
#include "kms/config.h"
#include "kms/core/core.h"

#define ML_CONNECTIONS 16
#define ML_PER_IP 8
#define ML_TIMEOUT 10 /* seconds a connection may sit idle */

struct metrics_listener {
	struct MHD_Daemon *d;
	struct core *core;
	int fd; /* until libmicrohttpd takes it; -1 after */
	bool ipv6;
	char addr[72];
};

static enum MHD_Result answer(struct MHD_Connection *conn, unsigned status, const char *type, char *text,
			      bool owned)
{
	struct MHD_Response *r;
	enum MHD_Result ret;

	if (owned)
		r = MHD_create_response_from_buffer_with_free_callback(strlen(text), text, free);
	else
		r = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_PERSISTENT);
	if (r == NULL) {
		if (owned)
			free(text);
		return MHD_NO;
	}
	MHD_add_response_header(r, "Content-Type", type);
	MHD_add_response_header(r, "Cache-Control", "no-store");
	MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
	ret = MHD_queue_response(conn, status, r);
	MHD_destroy_response(r);
	return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
				  const char *version, const char *upload_data, size_t *upload_size,
				  void **con_cls)
{
	static char not_found[] = "404 page not found\n";
	struct metrics_listener *m = cls;
	char *text = NULL;
	kms_err rc;

	(void)version;
	(void)upload_data;
	(void)con_cls;
	/* Answered on the first call, whatever the body: a request with one is never
	 * GET /metrics, and libmicrohttpd closes the connection after an unread body. */
	if ((strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) || strcmp(url, "/metrics") != 0 ||
	    *upload_size != 0)
		return answer(conn, MHD_HTTP_NOT_FOUND, "text/plain; charset=utf-8", not_found, false);
	rc = core_metrics_prometheus(m->core, &text);
	if (rc != KMS_OK) {
		static char unavailable[] = "metrics unavailable\n";

		kms_warn("metrics listener: %s", kms_err_detail(rc));
		return answer(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "text/plain; charset=utf-8", unavailable, false);
	}
	return answer(conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", text, true);
}

static void __attribute__((format(printf, 2, 0))) on_mhd_log(void *cls, const char *fmt, va_list ap)
{
	char buf[512];

	(void)cls;
	vsnprintf(buf, sizeof(buf), fmt, ap);
	buf[strcspn(buf, "\n")] = '\0';
	kms_debug("metrics listener: %s", buf);
}

kms_err metrics_listen_prepare(const struct kms_config *cfg, struct metrics_listener **out, int *port_out)
{
	struct metrics_listener *m;
	struct sockaddr_storage ss = {0};
	socklen_t sl;
	char host[64];
	int port, one = 1;

	if (kms_config_parse_listen(cfg->metrics_listen, host, sizeof(host), &port) != 0)
		return kms_errf(KMS_ERR_CONFIG, "metrics_listen \"%s\" is not ADDRESS:PORT", cfg->metrics_listen);
	m = calloc(1, sizeof(*m));
	if (m == NULL)
		return kms_errf(KMS_ERR_NOMEM, "metrics listener");
	m->fd = -1;
	snprintf(m->addr, sizeof(m->addr), "%s", cfg->metrics_listen);
	if (inet_pton(AF_INET, host, &((struct sockaddr_in *)&ss)->sin_addr) == 1) {
		ss.ss_family = AF_INET;
		((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)port);
		sl = sizeof(struct sockaddr_in);
	} else if (inet_pton(AF_INET6, host, &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1) {
		ss.ss_family = AF_INET6;
		((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)port);
		sl = sizeof(struct sockaddr_in6);
		m->ipv6 = true;
	} else {
		free(m);
		return kms_errf(KMS_ERR_CONFIG, "metrics_listen \"%s\": not an IP address", cfg->metrics_listen);
	}
	m->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (m->fd < 0 || setsockopt(m->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
	    (m->ipv6 && setsockopt(m->fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) != 0) ||
	    bind(m->fd, (struct sockaddr *)&ss, sl) != 0 || listen(m->fd, 64) != 0) {
		int e = errno;

		metrics_listen_stop(m);
		return kms_errf(KMS_ERR_IO, "cannot listen on metrics_listen %s: %s", cfg->metrics_listen, strerror(e));
	}
	sl = sizeof(ss);
	if (getsockname(m->fd, (struct sockaddr *)&ss, &sl) != 0) {
		int e = errno;

		metrics_listen_stop(m);
		return kms_errf(KMS_ERR_IO, "getsockname: %s", strerror(e));
	}
	*port_out = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
						   : ((struct sockaddr_in *)&ss)->sin_port);
	if (ss.ss_family == AF_INET ? ntohl(((struct sockaddr_in *)&ss)->sin_addr.s_addr) >> 24 != 127
				    : !IN6_IS_ADDR_LOOPBACK(&((struct sockaddr_in6 *)&ss)->sin6_addr))
		kms_warn("metrics_listen %s is not a loopback address: anyone who reaches it reads the "
			 "metrics (no token, no TLS); restrict it with a firewall",
			 cfg->metrics_listen);
	*out = m;
	return KMS_OK;
}

kms_err metrics_listen_start(struct metrics_listener *m, struct core *core)
{
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ERROR_LOG;

	m->core = core;
	if (m->ipv6)
		flags |= MHD_USE_IPv6;
	m->d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, m, MHD_OPTION_LISTEN_SOCKET, (MHD_socket)m->fd,
				MHD_OPTION_CONNECTION_LIMIT, (unsigned)ML_CONNECTIONS,
				MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)ML_PER_IP,
				MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)ML_TIMEOUT,
				MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)16384,
				MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, m, MHD_OPTION_END);
	if (m->d == NULL)
		return kms_errf(KMS_ERR_IO, "cannot serve metrics on %s", m->addr);
	m->fd = -1; /* libmicrohttpd's now */
	return KMS_OK;
}

void metrics_listen_stop(struct metrics_listener *m)
{
	if (m == NULL)
		return;
	if (m->d != NULL)
		MHD_stop_daemon(m->d);
	if (m->fd >= 0)
		(void)close(m->fd);
	free(m);
}
