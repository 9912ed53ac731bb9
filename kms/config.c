/* kmsd configuration. One table (options[]) gives every option its type, default and
 * rule; defaults, the file parser and kms_config_validate all walk it, so an option is
 * added in exactly one place (plus its paragraph in kmsd.conf.sample, which a unit test
 * keeps honest). */
#include "kms/config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kms/audit/syslog.h"
#include "kms/base/op.h"
#include "kms/core/ratelimit.h"
#include "kms/base/log.h"

/* A config file is a few kilobytes; anything far larger is a wrong path (a log, a
 * database) and is refused before it is read into memory. */
#define CONFIG_FILE_MAX (1024 * 1024)
#define WHY_MAX 128

enum opt_type { OPT_STRING, OPT_PATH, OPT_INT, OPT_BOOL };

/* Returns NULL when v is acceptable, else a reason ("must be ..."). */
typedef const char *(*opt_check_fn)(const char *v);

struct conf_option {
	const char *name;
	enum opt_type type;
	const char *def;
	size_t offset;
	size_t size; /* of the field; strings must fit with their NUL */
	long min, max; /* OPT_INT only */
	int required; /* string may not be empty */
	opt_check_fn check;
};

static const char *check_ip(const char *v);
static const char *check_node_id(const char *v);
static const char *check_store_uri(const char *v);
static const char *check_env_name(const char *v);
static const char *check_log_level(const char *v);
static const char *check_syslog(const char *v);
static const char *check_rate_ops(const char *v);
static const char *check_user(const char *v);
static const char *check_metrics_listen(const char *v);
static const char *check_client_auth(const char *v);

#define FIELD(f) offsetof(struct kms_config, f), sizeof(((struct kms_config *)0)->f)
#define STRING(n, d, req, chk) {#n, OPT_STRING, d, FIELD(n), 0, 0, req, chk}
#define PATH(n, d, req) {#n, OPT_PATH, d, FIELD(n), 0, 0, req, NULL}
#define INT(n, d, lo, hi) {#n, OPT_INT, #d, FIELD(n), lo, hi, 0, NULL}
#define BOOL(n, d) {#n, OPT_BOOL, #d, FIELD(n), 0, 0, 0, NULL}

static const struct conf_option options[] = {
	STRING(listen_address, "127.0.0.1", 1, check_ip),
	/* 0 asks the kernel for a free port; tests read it back from port_file. */
	INT(port, 8200, 0, 65535),
	PATH(port_file, "", 0),
	BOOL(tls, true),
	PATH(tls_cert, "", 0),
	PATH(tls_key, "", 0),
	PATH(tls_client_ca, "", 0),
	STRING(tls_client_auth, "optional", 1, check_client_auth),
	PATH(pkcs11_module, "/usr/lib/softhsm/libsofthsm2.so", 1),
	STRING(token_label, "kmsd", 1, NULL),
	PATH(pin_file, "", 0),
	STRING(pin_env, "", 0, check_env_name),
	PATH(so_pin_file, "", 0),
	PATH(store_path, "./var/kmsd.db", 1),
	STRING(store_uri, "", 0, check_store_uri),
	PATH(audit_path, "./var/audit.log", 1),
	STRING(node_id, "kmsd-1", 1, check_node_id),
	INT(cluster_sync_ms, 1000, 50, 60000),
	INT(workers, 0, 0, 256),
	INT(max_body_bytes, 65536, 1024, 16777216),
	INT(connection_timeout, 30, 1, 3600),
	INT(max_connections, 1024, 1, 65536),
	INT(per_ip_connections, 256, 0, 65536),
	STRING(log_level, "info", 1, check_log_level),
	PATH(policy_file, "", 0),
	INT(max_encryptions_per_version, 1073741824, 1, 2147483647),
	INT(scheduler_interval, 60, 1, 86400),
	INT(phi_retention_floor_days, 2190, 1, 36500),
	INT(audit_checkpoint_records, 1000, 1, 1000000),
	INT(audit_checkpoint_seconds, 60, 1, 86400),
	INT(audit_segment_mb, 256, 0, 1048576),
	INT(audit_segment_seconds, 86400, 0, 31622400),
	STRING(audit_syslog, "", 0, check_syslog),
	INT(rate_limit_rps, 0, 0, 1000000),
	INT(rate_limit_burst, 0, 0, 10000000),
	STRING(rate_limit_ops, "", 0, check_rate_ops),
	INT(auth_fail_rps, 5, 0, 100000),
	INT(auth_fail_burst, 50, 0, 1000000),
	INT(audit_hmac_cache, 4096, 0, 1000000),
	BOOL(tls_session_tickets, true),
	INT(approval_ttl, 86400, 60, 2592000),
	INT(break_glass_max_ttl, 3600, 60, 86400),
	INT(break_glass_reviews, 2, 1, 16),
	/* Whether the account exists is checked when kmsd switches to it (kms/proc.c). */
	STRING(user, "", 0, check_user),
	/* NIST SP 800-63B 5.2.2: at most 100 consecutive failed attempts */
	INT(mfa_max_failures, 5, 1, 100),
	/* The Prometheus listener (kms/http/metrics_listen.h): off unless set. */
	STRING(metrics_listen, "", 0, check_metrics_listen),
	PATH(metrics_port_file, "", 0),
};

#define N_OPTIONS (sizeof(options) / sizeof(options[0]))

static const char *check_client_auth(const char *v)
{
	if (strcmp(v, "optional") == 0 || strcmp(v, "required") == 0)
		return NULL;
	return "must be optional or required";
}

static const char *check_ip(const char *v)
{
	unsigned char buf[sizeof(struct in6_addr)];

	if (inet_pton(AF_INET, v, buf) == 1 || inet_pton(AF_INET6, v, buf) == 1)
		return NULL;
	return "must be an IPv4 or IPv6 address (no brackets, no host names)";
}

/* A libpq connection URI; its content past the scheme is libpq's to judge at open. */
static const char *check_store_uri(const char *v)
{
	if (v[0] == '\0' || strncmp(v, "postgresql://", 13) == 0 || strncmp(v, "postgres://", 11) == 0)
		return NULL;
	return "must start with postgresql:// or postgres://";
}

const char *kms_config_store(const struct kms_config *cfg)
{
	return cfg->store_uri[0] != '\0' ? cfg->store_uri : cfg->store_path;
}

/* node_id goes into every audit record and into metrics labels unescaped. */
static const char *check_node_id(const char *v)
{
	size_t len = strlen(v);

	if (len < 1 || len > 64 || strspn(v, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
				      "0123456789._-") != len)
		return "must be 1 to 64 characters from A-Z a-z 0-9 . _ -";
	return NULL;
}

static const char *check_env_name(const char *v)
{
	size_t len = strlen(v);

	if (len == 0)
		return NULL;
	if ((v[0] >= '0' && v[0] <= '9') ||
	    strspn(v, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_") != len)
		return "must be an environment variable name ([A-Za-z_][A-Za-z0-9_]*)";
	return NULL;
}

static const char *check_rate_ops(const char *v)
{
	double rate[KMS_OP__COUNT], burst[KMS_OP__COUNT];

	return ratelimit_parse_ops(v, rate, burst, KMS_OP__COUNT);
}

static const char *check_syslog(const char *v)
{
	return *v == '\0' ? NULL : audit_syslog_target_problem(v);
}

/* A login name as useradd accepts it, without the trailing '$' of machine accounts:
 * nothing that getpwnam could read as a number or an option. */
static const char *check_user(const char *v)
{
	size_t len = strlen(v);

	if (len > 32 || v[0] == '-' || (v[0] >= '0' && v[0] <= '9') ||
	    strspn(v, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") != len)
		return "must be a login name: 1 to 32 characters from A-Z a-z 0-9 . _ -, "
		       "not starting with a digit or '-'";
	return NULL;
}

static const char *check_log_level(const char *v)
{
	static const char *const levels[] = {"debug", "info", "warn", "error"};
	size_t i;

	for (i = 0; i < sizeof(levels) / sizeof(levels[0]); i++)
		if (strcmp(v, levels[i]) == 0)
			return NULL;
	return "must be one of debug, info, warn, error";
}

/* Checks a value already stored in cfg; shared by the parser and kms_config_validate
 * so that a struct filled by code is held to the same rules as one read from a file. */
static int opt_check(const struct conf_option *o, const struct kms_config *cfg, char *why, size_t cap)
{
	const char *field = (const char *)cfg + o->offset;
	const char *msg;
	int iv;

	switch (o->type) {
	case OPT_INT:
		memcpy(&iv, field, sizeof(iv));
		if (iv < o->min || iv > o->max) {
			snprintf(why, cap, "must be between %ld and %ld", o->min, o->max);
			return -1;
		}
		return 0;
	case OPT_BOOL:
		return 0;
	case OPT_STRING:
	case OPT_PATH:
		if (memchr(field, '\0', o->size) == NULL) {
			snprintf(why, cap, "is not terminated");
			return -1;
		}
		if (o->required && field[0] == '\0') {
			snprintf(why, cap, "must not be empty");
			return -1;
		}
		if (field[0] != '\0' && o->check != NULL && (msg = o->check(field)) != NULL) {
			snprintf(why, cap, "%s", msg);
			return -1;
		}
		return 0;
	}
	snprintf(why, cap, "has an unknown type");
	return -1;
}

/* Parses text v (NUL-terminated, already unquoted) into cfg's field, then checks it. */
static int opt_set(const struct conf_option *o, const char *v, struct kms_config *cfg, char *why,
		   size_t cap)
{
	char *field = (char *)cfg + o->offset;
	size_t len = strlen(v);
	const char *digits;
	long lv;
	int iv;
	bool bv;

	switch (o->type) {
	case OPT_INT:
		/* strtol alone would accept leading blanks, a '+' and trailing junk */
		digits = v + (v[0] == '-');
		if (digits[0] == '\0' || strspn(digits, "0123456789") != strlen(digits)) {
			snprintf(why, cap, "must be an integer");
			return -1;
		}
		errno = 0;
		lv = strtol(v, NULL, 10);
		if (errno == ERANGE || lv < o->min || lv > o->max) {
			snprintf(why, cap, "must be between %ld and %ld", o->min, o->max);
			return -1;
		}
		iv = (int)lv;
		memcpy(field, &iv, sizeof(iv));
		break;
	case OPT_BOOL:
		if (strcmp(v, "true") == 0 || strcmp(v, "yes") == 0) {
			bv = true;
		} else if (strcmp(v, "false") == 0 || strcmp(v, "no") == 0) {
			bv = false;
		} else {
			snprintf(why, cap, "must be true or false");
			return -1;
		}
		memcpy(field, &bv, sizeof(bv));
		break;
	case OPT_STRING:
	case OPT_PATH:
		if (len >= o->size) {
			snprintf(why, cap, "longer than %zu bytes", o->size - 1);
			return -1;
		}
		/* no stale tail from the previous value: the struct compares and copies clean */
		memset(field, 0, o->size);
		memcpy(field, v, len);
		break;
	}
	return opt_check(o, cfg, why, cap);
}

void kms_config_defaults(struct kms_config *cfg)
{
	char why[WHY_MAX];
	size_t i;

	memset(cfg, 0, sizeof(*cfg));
	for (i = 0; i < N_OPTIONS; i++) {
		/* The table's defaults are constants checked by the unit tests; a bad one is
		 * a build mistake, reported loudly rather than left as a zero field. */
		if (opt_set(&options[i], options[i].def, cfg, why, sizeof(why)) != 0)
			kms_error("config: default for %s %s", options[i].name, why);
	}
}

static const struct conf_option *opt_find(const char *name, size_t len)
{
	size_t i;

	for (i = 0; i < N_OPTIONS; i++)
		if (strlen(options[i].name) == len && memcmp(options[i].name, name, len) == 0)
			return &options[i];
	return NULL;
}

static int is_blank(char c)
{
	return c == ' ' || c == '\t' || c == '\r';
}

static int is_name_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '_' || c == '-' || c == '.';
}

/* One "name = value" line, trimmed, as [p, e). Fills cfg or says why not in why. The
 * option named by the line is reported through *opt so that the caller can prefix it. */
static int parse_line(const char *p, const char *e, struct kms_config *cfg, unsigned lineno,
		      unsigned *seen, const struct conf_option **opt, char *why, size_t cap)
{
	char value[KMS_CONFIG_PATH_MAX + 1];
	const char *eq, *ne, *vs, *ve, *q;
	const struct conf_option *o;
	size_t i, vlen;

	*opt = NULL;
	for (q = p; q < e; q++) {
		/* Control characters are either a corrupt file or an attempt to smuggle
		 * escape sequences into the log that echoes our error. */
		if (((unsigned char)*q < 0x20 && *q != '\t') || *q == 0x7f) {
			snprintf(why, cap, "control character in line");
			return -1;
		}
	}
	eq = memchr(p, '=', (size_t)(e - p));
	if (eq == NULL) {
		snprintf(why, cap, "expected 'name = value' (missing '=')");
		return -1;
	}
	ne = eq;
	while (ne > p && is_blank(ne[-1]))
		ne--;
	if (ne == p) {
		snprintf(why, cap, "missing option name before '='");
		return -1;
	}
	for (q = p; q < ne; q++) {
		if (!is_name_char(*q)) {
			snprintf(why, cap, "invalid option name");
			return -1;
		}
	}
	o = opt_find(p, (size_t)(ne - p));
	if (o == NULL) {
		snprintf(why, cap, "unknown option \"%.*s\"", (int)(ne - p > 64 ? 64 : ne - p), p);
		return -1;
	}
	*opt = o;
	i = (size_t)(o - options);
	if (seen[i] != 0) {
		snprintf(why, cap, "already set on line %u", seen[i]);
		return -1;
	}
	seen[i] = lineno;

	vs = eq + 1;
	while (vs < e && is_blank(*vs))
		vs++;
	ve = e;
	if (vs < ve && *vs == '"') {
		q = memchr(vs + 1, '"', (size_t)(ve - vs - 1));
		if (q == NULL) {
			snprintf(why, cap, "unterminated quote");
			return -1;
		}
		if (q + 1 != ve) {
			snprintf(why, cap, "unexpected text after closing quote");
			return -1;
		}
		vs++;
		ve = q;
	}
	vlen = (size_t)(ve - vs);
	if (vlen >= sizeof(value)) {
		/* same wording as opt_set's length check, whichever of the two catches it */
		snprintf(why, cap, "longer than %zu bytes",
			 o->type == OPT_STRING || o->type == OPT_PATH ? o->size - 1 :
									sizeof(value) - 1);
		return -1;
	}
	memcpy(value, vs, vlen);
	value[vlen] = '\0';
	return opt_set(o, value, cfg, why, cap);
}

kms_err kms_config_parse(const char *text, const char *name, struct kms_config *cfg)
{
	char why[WHY_MAX];
	struct kms_config tmp;
	unsigned seen[N_OPTIONS] = {0};
	const struct conf_option *o;
	const char *line, *next, *p, *e;
	unsigned lineno = 0;

	if (name == NULL)
		name = "config";
	if (text == NULL || cfg == NULL)
		return kms_errf(KMS_ERR_CONFIG, "%s: no configuration text", name);
	kms_config_defaults(&tmp);
	for (line = text; *line != '\0'; line = next) {
		lineno++;
		p = line;
		e = strchr(line, '\n');
		if (e != NULL) {
			next = e + 1;
		} else {
			e = line + strlen(line);
			next = e;
		}
		while (p < e && is_blank(*p))
			p++;
		while (e > p && is_blank(e[-1]))
			e--;
		if (p == e || *p == '#')
			continue;
		if (parse_line(p, e, &tmp, lineno, seen, &o, why, sizeof(why)) != 0) {
			if (o != NULL)
				return kms_errf(KMS_ERR_CONFIG, "%s:%u: %s: %s", name, lineno,
						o->name, why);
			return kms_errf(KMS_ERR_CONFIG, "%s:%u: %s", name, lineno, why);
		}
	}
	*cfg = tmp;
	return KMS_OK;
}

kms_err kms_config_load(const char *path, struct kms_config *cfg)
{
	struct stat sb;
	char *text = NULL;
	size_t got = 0;
	ssize_t r;
	kms_err rc;
	int fd = -1;

	if (path == NULL || cfg == NULL)
		return kms_errf(KMS_ERR_CONFIG, "no configuration file given");
	rc = KMS_ERR_CONFIG;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		rc = kms_errf(KMS_ERR_CONFIG, "%s: cannot open: %s", path, strerror(errno));
		goto out;
	}
	if (fstat(fd, &sb) != 0) {
		rc = kms_errf(KMS_ERR_CONFIG, "%s: cannot stat: %s", path, strerror(errno));
		goto out;
	}
	if (!S_ISREG(sb.st_mode)) {
		rc = kms_errf(KMS_ERR_CONFIG, "%s: not a regular file", path);
		goto out;
	}
	if (sb.st_size > CONFIG_FILE_MAX) {
		rc = kms_errf(KMS_ERR_CONFIG, "%s: larger than %d bytes", path, CONFIG_FILE_MAX);
		goto out;
	}
	/* +1 for the NUL, and room to notice a file that grew after fstat */
	text = malloc(CONFIG_FILE_MAX + 2);
	if (text == NULL) {
		rc = kms_errf(KMS_ERR_NOMEM, "out of memory");
		goto out;
	}
	for (;;) {
		r = read(fd, text + got, CONFIG_FILE_MAX + 1 - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			rc = kms_errf(KMS_ERR_CONFIG, "%s: cannot read: %s", path, strerror(errno));
			goto out;
		}
		if (r == 0)
			break;
		got += (size_t)r;
		if (got > CONFIG_FILE_MAX) {
			rc = kms_errf(KMS_ERR_CONFIG, "%s: larger than %d bytes", path,
				      CONFIG_FILE_MAX);
			goto out;
		}
	}
	text[got] = '\0';
	/* The parser works on C strings; a NUL would silently end the file early. */
	if (memchr(text, '\0', got) != NULL) {
		rc = kms_errf(KMS_ERR_CONFIG, "%s: contains a NUL byte", path);
		goto out;
	}
	rc = kms_config_parse(text, path, cfg);
out:
	if (fd >= 0)
		(void)close(fd); /* read-only: nothing to lose */
	free(text);
	return rc;
}

kms_err kms_config_validate(const struct kms_config *cfg)
{
	char why[WHY_MAX];
	size_t i;

	if (cfg == NULL)
		return kms_errf(KMS_ERR_CONFIG, "no configuration");
	/* Every per-option rule again (listen_address through inet_pton, log_level, the
	 * ranges): the struct may have been filled by code rather than by the parser. */
	for (i = 0; i < N_OPTIONS; i++)
		if (opt_check(&options[i], cfg, why, sizeof(why)) != 0)
			return kms_errf(KMS_ERR_CONFIG, "%s: %s", options[i].name, why);
	if (cfg->tls && cfg->tls_cert[0] == '\0')
		return kms_errf(KMS_ERR_CONFIG, "tls_cert: required when tls is true");
	if (cfg->tls && cfg->tls_key[0] == '\0')
		return kms_errf(KMS_ERR_CONFIG, "tls_key: required when tls is true");
	if (!cfg->tls && cfg->tls_client_ca[0] != '\0')
		return kms_errf(KMS_ERR_CONFIG, "tls_client_ca: client certificates need tls = true");
	if (cfg->tls_client_ca[0] == '\0' && strcmp(cfg->tls_client_auth, "required") == 0)
		return kms_errf(KMS_ERR_CONFIG, "tls_client_auth: required needs tls_client_ca");
	if ((cfg->pin_file[0] != '\0') == (cfg->pin_env[0] != '\0'))
		return kms_errf(KMS_ERR_CONFIG, "pin_file, pin_env: set exactly one of them");
	if (!cfg->tls)
		kms_warn("config: tls is false: API tokens and data keys will cross the network "
			 "in the clear; use only for local debugging");
	return KMS_OK;
}

unsigned kms_config_workers(const struct kms_config *cfg)
{
	long n;

	if (cfg->workers > 0)
		return (unsigned)cfg->workers;
	n = sysconf(_SC_NPROCESSORS_ONLN);
	if (n < 1)
		n = 1;
	return n > 32 ? 256 : (unsigned)n * 8;
}

int kms_config_parse_listen(const char *v, char *host, size_t cap, int *port)
{
	const char *colon, *h = v;
	size_t hlen;
	char *end;
	long p;
	unsigned char buf[sizeof(struct in6_addr)];

	if (v == NULL || *v == '\0')
		return -1;
	if (*v == '[') {
		const char *rb = strchr(v, ']');

		if (rb == NULL || rb[1] != ':')
			return -1;
		h = v + 1;
		hlen = (size_t)(rb - h);
		colon = rb + 1;
	} else {
		colon = strrchr(v, ':');
		if (colon == NULL || memchr(v, ':', (size_t)(colon - v)) != NULL)
			return -1; /* an IPv6 address needs brackets */
		hlen = (size_t)(colon - v);
	}
	if (hlen == 0 || hlen >= cap || colon[1] < '0' || colon[1] > '9')
		return -1;
	errno = 0;
	p = strtol(colon + 1, &end, 10);
	if (errno != 0 || *end != '\0' || p < 0 || p > 65535)
		return -1;
	memcpy(host, h, hlen);
	host[hlen] = '\0';
	if (inet_pton(AF_INET, host, buf) != 1 && inet_pton(AF_INET6, host, buf) != 1)
		return -1;
	*port = (int)p;
	return 0;
}

static const char *check_metrics_listen(const char *v)
{
	char host[64];
	int port;

	if (*v == '\0' || kms_config_parse_listen(v, host, sizeof(host), &port) == 0)
		return NULL;
	return "must be empty (off) or ADDRESS:PORT with an IP address literal, e.g. 127.0.0.1:9102 or [::1]:9102";
}
