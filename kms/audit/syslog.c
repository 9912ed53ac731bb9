/* RFC 5424 forwarding of audit records (contract in syslog.h). */
#include "kms/audit/syslog.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define SYSLOG_MSG_MAX 65000 /* a UDP datagram's payload, with room to spare */
#define FACILITY_AUTHPRIV 10

struct audit_syslog {
	int fd;
	struct sockaddr_storage addr;
	socklen_t addr_len;
	char host[256];
	long pid;
	char *msg; /* SYSLOG_MSG_MAX */
	uint64_t sent, dropped;
};

static const char *parse_target(const char *t, struct sockaddr_storage *ss, socklen_t *len)
{
	memset(ss, 0, sizeof(*ss));
	if (strncmp(t, "unix:", 5) == 0) {
		struct sockaddr_un *un = (struct sockaddr_un *)ss;
		const char *p = t + 5;

		if (*p != '/')
			return "unix: needs an absolute path, e.g. unix:/dev/log";
		if (strlen(p) >= sizeof(un->sun_path))
			return "unix: path too long";
		un->sun_family = AF_UNIX;
		memcpy(un->sun_path, p, strlen(p) + 1);
		*len = (socklen_t)sizeof(*un);
		return NULL;
	}
	if (strncmp(t, "udp:", 4) == 0) {
		char host[64];
		const char *p = t + 4, *colon, *end;
		unsigned long port;
		bool bracketed = *p == '[';
		size_t hl;

		if (bracketed) {
			end = strchr(p, ']');
			if (end == NULL || end[1] != ':')
				return "udp: an IPv6 address goes in brackets: udp:[::1]:514";
			p++;
			hl = (size_t)(end - p);
			colon = end + 1;
		} else {
			colon = strrchr(p, ':');
			if (colon == NULL)
				return "udp: needs HOST:PORT, e.g. udp:127.0.0.1:514";
			hl = (size_t)(colon - p);
		}
		if (hl == 0 || hl >= sizeof(host))
			return "udp: bad address";
		memcpy(host, p, hl);
		host[hl] = '\0';
		errno = 0;
		port = strtoul(colon + 1, (char **)&end, 10);
		if (errno != 0 || *end != '\0' || colon[1] == '\0' || port == 0 || port > 65535)
			return "udp: port must be 1..65535";
		if (!bracketed && inet_pton(AF_INET, host, &((struct sockaddr_in *)ss)->sin_addr) == 1) {
			((struct sockaddr_in *)ss)->sin_family = AF_INET;
			((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
			*len = (socklen_t)sizeof(struct sockaddr_in);
			return NULL;
		}
		if (!bracketed) /* only bracketed hosts may be IPv6 */
			return "udp: HOST must be an IPv4 address, or an IPv6 one in brackets";
		if (inet_pton(AF_INET6, host, &((struct sockaddr_in6 *)ss)->sin6_addr) == 1) {
			((struct sockaddr_in6 *)ss)->sin6_family = AF_INET6;
			((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
			*len = (socklen_t)sizeof(struct sockaddr_in6);
			return NULL;
		}
		return "udp: HOST must be an IPv4 or IPv6 address (no names: no DNS on the audit path)";
	}
	return "must be udp:HOST:PORT or unix:PATH";
}

const char *audit_syslog_target_problem(const char *target)
{
	struct sockaddr_storage ss;
	socklen_t len;

	return parse_target(target, &ss, &len);
}

kms_err audit_syslog_open(const char *target, struct audit_syslog **out)
{
	struct audit_syslog *s;
	const char *why;

	*out = NULL;
	s = calloc(1, sizeof(*s));
	if (s == NULL)
		return kms_errf(KMS_ERR_NOMEM, "syslog");
	s->fd = -1;
	why = parse_target(target, &s->addr, &s->addr_len);
	if (why != NULL) {
		free(s);
		return kms_errf(KMS_ERR_CONFIG, "audit_syslog \"%.200s\": %s", target, why);
	}
	s->msg = malloc(SYSLOG_MSG_MAX);
	s->fd = socket(s->addr.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (s->msg == NULL || s->fd < 0) {
		kms_err rc = s->msg == NULL ? kms_errf(KMS_ERR_NOMEM, "syslog")
					    : kms_errf(KMS_ERR_IO, "audit_syslog: socket: %s", strerror(errno));
		audit_syslog_close(s);
		return rc;
	}
	if (gethostname(s->host, sizeof(s->host)) != 0 || s->host[0] == '\0')
		snprintf(s->host, sizeof(s->host), "-");
	s->host[sizeof(s->host) - 1] = '\0';
	s->host[strcspn(s->host, " ")] = '\0'; /* a HOSTNAME has no spaces */
	s->pid = (long)getpid();
	*out = s;
	return KMS_OK;
}

/* The record's "time" value, or "-" (the NILVALUE). */
static int record_time(const char *line, size_t len, const char **t)
{
	static const char key[] = "\"time\":\"";
	const char *p = memmem(line, len, key, sizeof(key) - 1), *q;

	if (p == NULL) {
		*t = "-";
		return 1;
	}
	p += sizeof(key) - 1;
	q = memchr(p, '"', len - (size_t)(p - line));
	if (q == NULL || q - p > 40) {
		*t = "-";
		return 1;
	}
	*t = p;
	return (int)(q - p);
}

/* From the record's own outcome: the first "outcome" member, which comes before any
 * batch item's (audit.c writes the standard members first). */
static int severity(const char *line, size_t len)
{
	static const char key[] = "\"outcome\":\"";
	const char *p = memmem(line, len, key, sizeof(key) - 1);
	size_t rest;

	/* break-glass grants are alerts (1): the member is written by kmsd, never taken
	 * from a request (a quote inside a string value is always escaped) */
	if (memmem(line, len, "\"alert\":true", 12) != NULL)
		return 1;
	if (p == NULL)
		return 6;
	p += sizeof(key) - 1;
	rest = len - (size_t)(p - line);
	if (rest >= 5 && memcmp(p, "deny\"", 5) == 0)
		return 5;
	if (rest >= 6 && memcmp(p, "error\"", 6) == 0)
		return 4;
	return 6;
}

void audit_syslog_send(struct audit_syslog *s, const char *buf, size_t len)
{
	const char *p = buf, *end = buf + len, *nl, *t;
	int tl, n;

	while (p < end) {
		size_t ll;

		nl = memchr(p, '\n', (size_t)(end - p));
		ll = nl ? (size_t)(nl - p) : (size_t)(end - p);
		tl = record_time(p, ll, &t);
		n = snprintf(s->msg, SYSLOG_MSG_MAX, "<%d>1 %.*s %s kmsd %ld audit - ",
			     FACILITY_AUTHPRIV * 8 + severity(p, ll), tl, t, s->host, s->pid);
		if (n > 0 && (size_t)n + ll <= SYSLOG_MSG_MAX) {
			memcpy(s->msg + n, p, ll);
			if (sendto(s->fd, s->msg, (size_t)n + ll, MSG_DONTWAIT | MSG_NOSIGNAL,
				   (const struct sockaddr *)&s->addr, s->addr_len) == (ssize_t)((size_t)n + ll))
				__atomic_fetch_add(&s->sent, 1, __ATOMIC_RELAXED);
			else
				__atomic_fetch_add(&s->dropped, 1, __ATOMIC_RELAXED);
		} else {
			__atomic_fetch_add(&s->dropped, 1, __ATOMIC_RELAXED); /* too large for one datagram */
		}
		p += ll + 1;
	}
}

void audit_syslog_counts(struct audit_syslog *s, uint64_t *sent, uint64_t *dropped)
{
	*sent = __atomic_load_n(&s->sent, __ATOMIC_RELAXED);
	*dropped = __atomic_load_n(&s->dropped, __ATOMIC_RELAXED);
}

void audit_syslog_close(struct audit_syslog *s)
{
	if (s == NULL)
		return;
	if (s->fd >= 0)
		close(s->fd);
	free(s->msg);
	free(s);
}
