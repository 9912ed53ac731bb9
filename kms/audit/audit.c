#include "kms/audit/audit.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "kms/base/json.h"
#include "kms/base/log.h"

struct audit {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int fd;
	char node[65];
	uint64_t seq;	      /* last seq assigned */
	uint64_t durable_seq; /* last seq known to be on disk */
	bool writing;	      /* a leader is writing the pending buffer */
	bool failed;
	char *pend;	      /* records formatted but not yet written */
	size_t pend_len, pend_cap;
};

static kms_err pend_append(struct audit *a, const char *s, size_t n)
{
	if (a->pend_len + n > a->pend_cap) {
		size_t cap = a->pend_cap ? a->pend_cap : 16384;
		char *p;
		while (cap < a->pend_len + n)
			cap *= 2;
		p = realloc(a->pend, cap); /* audit records hold no secret */
		if (p == NULL)
			return kms_errf(KMS_ERR_NOMEM, "audit buffer");
		a->pend = p;
		a->pend_cap = cap;
	}
	memcpy(a->pend + a->pend_len, s, n);
	a->pend_len += n;
	return KMS_OK;
}

static uint64_t last_seq_of(const char *line)
{
	json_t *v = json_loads(line, 0, NULL);
	uint64_t s = 0;

	if (v != NULL && json_is_integer(json_object_get(v, "seq")))
		s = (uint64_t)json_integer_value(json_object_get(v, "seq"));
	json_decref(v);
	return s;
}

/* Finds the last complete line, cuts a torn tail, returns the last seq. */
static kms_err audit_recover(struct audit *a, const char *path)
{
	struct stat st;
	off_t size, start;
	char *buf = NULL;
	ssize_t n;
	kms_err rc = KMS_ERR_IO;

	if (fstat(a->fd, &st) != 0)
		return kms_errf(KMS_ERR_IO, "audit: stat %s: %s", path, strerror(errno));
	size = st.st_size;
	if (size == 0)
		return KMS_OK;
	start = size > 65536 ? size - 65536 : 0;
	buf = malloc((size_t)(size - start) + 1);
	if (buf == NULL)
		return kms_errf(KMS_ERR_NOMEM, "audit recover");
	n = pread(a->fd, buf, (size_t)(size - start), start);
	if (n != size - start) {
		rc = kms_errf(KMS_ERR_IO, "audit: read %s failed", path);
		goto out;
	}
	buf[n] = '\0';
	if (buf[n - 1] != '\n') {
		char *nl = strrchr(buf, '\n');
		off_t keep = nl ? start + (nl - buf) + 1 : start;
		kms_warn("audit: %s ends in a torn record (%lld bytes); cutting it", path,
			 (long long)(size - keep));
		if (ftruncate(a->fd, keep) != 0 || fdatasync(a->fd) != 0) {
			rc = kms_errf(KMS_ERR_IO, "audit: cannot cut torn tail of %s", path);
			goto out;
		}
		if (nl == NULL) {
			rc = KMS_OK;
			goto out;
		}
		*nl = '\0';
	} else {
		buf[n - 1] = '\0';
	}
	{
		char *last = strrchr(buf, '\n');
		a->seq = last_seq_of(last ? last + 1 : buf);
		a->durable_seq = a->seq;
	}
	rc = KMS_OK;
out:
	free(buf);
	return rc;
}

kms_err audit_open(const char *path, const char *node_id, struct audit **out)
{
	struct audit *a;
	kms_err rc;

	a = calloc(1, sizeof(*a));
	if (a == NULL)
		return kms_errf(KMS_ERR_NOMEM, "audit");
	a->fd = -1;
	pthread_mutex_init(&a->mu, NULL);
	pthread_cond_init(&a->cv, NULL);
	snprintf(a->node, sizeof(a->node), "%s", node_id);
	a->fd = open(path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	if (a->fd < 0) {
		rc = kms_errf(KMS_ERR_IO, "audit: cannot open %s: %s", path, strerror(errno));
		goto fail;
	}
	rc = audit_recover(a, path);
	if (rc != KMS_OK)
		goto fail;
	*out = a;
	return KMS_OK;
fail:
	audit_close(a);
	return rc;
}

static void fmt_time(char *buf, size_t cap)
{
	struct timespec ts;
	struct tm tm;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	snprintf(buf, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ", tm.tm_year + 1900, tm.tm_mon + 1,
		 tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000);
}

static json_t *str_or_null(const char *s)
{
	return s ? json_string(s) : json_null();
}

static char *format_record(struct audit *a, uint64_t seq, const struct audit_record *r)
{
	char when[96];
	json_t *o;
	char *s;

	fmt_time(when, sizeof(when));
	o = json_object();
	if (o == NULL)
		return NULL;
	json_object_set_new(o, "seq", json_integer((json_int_t)seq));
	json_object_set_new(o, "time", json_string(when));
	json_object_set_new(o, "node", json_string(a->node));
	json_object_set_new(o, "request_id", str_or_null(r->request_id));
	json_object_set_new(o, "principal", str_or_null(r->principal));
	json_object_set_new(o, "auth_method", str_or_null(r->auth_method));
	json_object_set_new(o, "mfa", json_false());
	json_object_set_new(o, "remote_addr", str_or_null(r->remote_addr));
	json_object_set_new(o, "operation", str_or_null(r->operation));
	json_object_set_new(o, "tenant", str_or_null(r->tenant));
	json_object_set_new(o, "key", str_or_null(r->key));
	json_object_set_new(o, "version", r->version ? json_integer(r->version) : json_null());
	if (r->batch)
		json_object_set_new(o, "batch", json_integer(r->batch));
	json_object_set_new(o, "outcome", str_or_null(r->outcome));
	json_object_set_new(o, "status", json_integer(r->status));
	json_object_set_new(o, "reason", str_or_null(r->reason));
	s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII);
	json_decref(o);
	return s;
}

static int write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

kms_err audit_append(struct audit *a, const struct audit_record *r)
{
	uint64_t mine;
	char *line;
	size_t n;
	kms_err rc;

	pthread_mutex_lock(&a->mu);
	if (a->failed) {
		pthread_mutex_unlock(&a->mu);
		return kms_errf(KMS_ERR_AUDIT, "audit log unavailable");
	}
	mine = a->seq + 1;
	line = format_record(a, mine, r);
	if (line == NULL) {
		pthread_mutex_unlock(&a->mu);
		return kms_errf(KMS_ERR_NOMEM, "audit record");
	}
	n = strlen(line);
	line[n] = '\n'; /* json_dumps leaves room for the NUL we overwrite */
	rc = pend_append(a, line, n + 1);
	kms_json_free_str(line, n); /* allocated by jansson's (wiping) allocator */
	if (rc != KMS_OK) {
		pthread_mutex_unlock(&a->mu);
		return rc;
	}
	a->seq = mine;
	while (!a->failed && a->durable_seq < mine) {
		if (a->writing) {
			pthread_cond_wait(&a->cv, &a->mu);
			continue;
		}
		/* Leader: take everything pending, write and sync it without the lock so
		 * that followers can queue the next batch meanwhile. */
		char *buf = a->pend;
		size_t len = a->pend_len;
		uint64_t upto = a->seq;
		int ok;
		a->pend = NULL;
		a->pend_len = a->pend_cap = 0;
		a->writing = true;
		pthread_mutex_unlock(&a->mu);
		ok = write_all(a->fd, buf, len) == 0 && fdatasync(a->fd) == 0;
		if (!ok)
			kms_error("audit: write or fdatasync failed: %s; audit log marked failed, "
				  "key operations are refused until an operator intervenes",
				  strerror(errno));
		free(buf);
		pthread_mutex_lock(&a->mu);
		a->writing = false;
		if (ok)
			a->durable_seq = upto;
		else
			a->failed = true;
		pthread_cond_broadcast(&a->cv);
	}
	rc = a->failed && a->durable_seq < mine ? kms_errf(KMS_ERR_AUDIT, "audit log unavailable") : KMS_OK;
	pthread_mutex_unlock(&a->mu);
	return rc;
}

bool audit_healthy(struct audit *a)
{
	bool ok;

	pthread_mutex_lock(&a->mu);
	ok = !a->failed;
	pthread_mutex_unlock(&a->mu);
	return ok;
}

uint64_t audit_seq(struct audit *a)
{
	uint64_t s;

	pthread_mutex_lock(&a->mu);
	s = a->durable_seq;
	pthread_mutex_unlock(&a->mu);
	return s;
}

void audit_close(struct audit *a)
{
	if (a == NULL)
		return;
	if (a->fd >= 0)
		close(a->fd);
	free(a->pend);
	pthread_cond_destroy(&a->cv);
	pthread_mutex_destroy(&a->mu);
	free(a);
}
