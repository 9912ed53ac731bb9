#include "kms/http/server.h"

#include <arpa/inet.h>
#include <stdbool.h>
#include <time.h>
#include <sys/socket.h>
#include <pthread.h>
#include <errno.h>
#include <fcntl.h>
#include <gnutls/abstract.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kms/base/b64.h"
#include "kms/base/json.h"
#include "kms/base/log.h"
#include "kms/base/secret.h"
#include "kms/config.h"
#include "kms/core/core.h"
#include "kms/http/routes.h"

/* TLS 1.2 and 1.3 only, AEAD ciphers with forward secrecy, ECDHE only. -KX-ALL does
 * not reach TLS 1.3, whose key exchange is chosen by group: without -GROUP-DH-ALL a
 * TLS 1.3 client could still agree on finite-field DHE (ffdhe2048..8192; sslscan). */
#define TLS_PRIORITIES                                                                          \
	"SECURE128:+SECURE192:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:-CIPHER-ALL:+AES-256-GCM:"    \
	"+AES-128-GCM:+CHACHA20-POLY1305:-MAC-ALL:+AEAD:-KX-ALL:+ECDHE-ECDSA:+ECDHE-RSA:"     \
	"-DHE-RSA:-GROUP-DH-ALL:%SERVER_PRECEDENCE"

/* Largest oversize body that is read and discarded before answering 413. */
#define DRAIN_MAX (8u << 20)

/* Request deadlines. libmicrohttpd's connection timeout measures idleness only: a
 * client that trickles one byte a second (slowloris, slow body) is never idle and would
 * hold its connection for ever. So every connection is tracked, and must deliver each
 * complete request within connection_timeout seconds of connecting or of its previous
 * answer; a sweeper thread shuts down the socket of one that does not (libmicrohttpd
 * then closes it as if the client had hung up). Entries leave the list in the
 * connection-closed notification, which libmicrohttpd sends before it closes the
 * socket, so the sweeper, holding the list lock, never touches a reused descriptor. */
/* What the request path needs of a connection's client certificate, worked out at its
 * first request (the handshake is over by then) and kept for the connection's life:
 * the certificate cannot change on a connection (renegotiation is off in TLS 1.3 and
 * refused by GnuTLS servers by default in 1.2). */
enum cert_state { CERT_UNKNOWN = 0, CERT_NONE, CERT_OK, CERT_BAD };
#define CERT_SUBJECT_MAX 1024

struct conn_track {
	struct conn_track *prev, *next;
	MHD_socket fd;
	int64_t deadline; /* CLOCK_MONOTONIC seconds; INT64_MAX while a request is handled */
	/* touched only by the thread serving the connection's requests */
	enum cert_state cert;
	time_t not_after; /* the certificate's expiry: a kept-alive connection ends there */
	char spki[65];
	char subject[CERT_SUBJECT_MAX + 1]; /* "" = none, or too long to map */
};

struct http_server {
	struct MHD_Daemon *d;
	struct core *core;
	size_t max_body;
	char *cert_pem, *key_pem;
	size_t cert_len, key_len;
	char *client_ca_pem; /* tls_client_ca, or NULL: no client certificates asked for */
	size_t client_ca_len;
	bool client_required;
	int listen_fd; /* until libmicrohttpd takes it; -1 after */
	bool ipv6;
	unsigned timeout;
	pthread_mutex_t track_mu;
	struct conn_track *tracked;
	pthread_t sweeper;
	bool sweeper_running, stopping;
	pthread_cond_t sweep_cv;
	/* TLS session tickets (tls_session_tickets): the server's ticket-encryption key,
	 * made at start, never stored, wiped at stop; data NULL = no tickets */
	gnutls_datum_t ticket_key;
	/* Answers held until their audit record is durable (see "Held answers" below). */
	pthread_mutex_t hold_mu;
	pthread_cond_t hold_cv;
	struct req *held;	 /* suspended requests waiting for their record's sync */
	uint64_t held_max;	 /* the highest audit seq among them */
	pthread_t committer;
	bool committer_running, committer_idle, hold_stopping;
};

static int64_t mono_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec;
}

static void track_deadline(struct http_server *s, struct MHD_Connection *conn, int64_t deadline)
{
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
	struct conn_track *t = ci != NULL ? ci->socket_context : NULL;

	if (t == NULL)
		return;
	pthread_mutex_lock(&s->track_mu);
	t->deadline = deadline;
	pthread_mutex_unlock(&s->track_mu);
}

/* ---- client certificates (mTLS) ------------------------------------------------ */

/* Checks the client's chain against tls_client_ca (the trust list libmicrohttpd loaded
 * into the credentials from MHD_OPTION_HTTPS_MEM_TRUST): signatures, validity dates,
 * CA flags and path length, and that the leaf may be used for TLS client
 * authentication (an extendedKeyUsage without clientAuth is refused; key usage is
 * checked by GnuTLS when the client signs the handshake). Called by GnuTLS during the
 * handshake, once the client's Certificate message is in: a non-zero return aborts the
 * handshake, so an unknown CA never reaches HTTP. No certificate: allowed here; with
 * tls_client_auth = required GnuTLS has already refused the handshake. */
static int verify_client_cert(gnutls_session_t session)
{
	gnutls_typed_vdata_st purpose = {GNUTLS_DT_KEY_PURPOSE_OID, (unsigned char *)GNUTLS_KP_TLS_WWW_CLIENT, 0};
	unsigned n = 0, status = 0;

	if (gnutls_certificate_get_peers(session, &n) == NULL || n == 0)
		return 0;
	if (gnutls_certificate_verify_peers(session, &purpose, 1, &status) < 0 || status != 0) {
		gnutls_datum_t why = {NULL, 0};

		if (gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &why, 0) == 0) {
			kms_info("http: client certificate refused in the TLS handshake: %s", (const char *)why.data);
			gnutls_free(why.data);
		}
		return GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR;
	}
	return 0;
}

/* Before the handshake (libmicrohttpd made the session, the handshake runs later in
 * the event loop): ask for a certificate, or insist on one, and check it ourselves. */
static void client_cert_setup(struct http_server *s, struct MHD_Connection *conn)
{
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
	gnutls_session_t session;

	if (ci == NULL || ci->tls_session == NULL)
		return;
	session = (gnutls_session_t)ci->tls_session;
	gnutls_certificate_server_set_request(session, s->client_required ? GNUTLS_CERT_REQUIRE : GNUTLS_CERT_REQUEST);
	gnutls_session_set_verify_function(session, verify_client_cert);
}

/* The connection's certificate identity into t (once per connection). The handshake
 * refused a bad certificate already; it is verified once more here so that nothing
 * reaches the core on the word of a callback alone. */
static void client_cert_identify(struct MHD_Connection *conn, struct conn_track *t)
{
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
	gnutls_session_t session;
	const gnutls_datum_t *peers;
	gnutls_x509_crt_t crt = NULL;
	gnutls_pubkey_t pub = NULL;
	gnutls_datum_t spki = {NULL, 0}, dn = {NULL, 0};
	uint8_t md[32];
	unsigned n = 0;

	t->cert = CERT_NONE;
	t->spki[0] = t->subject[0] = '\0';
	if (ci == NULL || ci->tls_session == NULL)
		return;
	session = (gnutls_session_t)ci->tls_session;
	if ((peers = gnutls_certificate_get_peers(session, &n)) == NULL || n == 0)
		return;
	t->cert = CERT_BAD;
	if (verify_client_cert(session) != 0)
		return;
	if (gnutls_x509_crt_init(&crt) < 0 || gnutls_x509_crt_import(crt, &peers[0], GNUTLS_X509_FMT_DER) < 0 ||
	    gnutls_pubkey_init(&pub) < 0 || gnutls_pubkey_import_x509(pub, crt, 0) < 0 ||
	    gnutls_pubkey_export2(pub, GNUTLS_X509_FMT_DER, &spki) < 0 ||
	    gnutls_hash_fast(GNUTLS_DIG_SHA256, spki.data, spki.size, md) < 0)
		goto out;
	kms_hex_encode(md, sizeof(md), t->spki);
	t->not_after = gnutls_x509_crt_get_expiration_time(crt);
	if (t->not_after == (time_t)-1)
		goto out;
	/* RFC 4514 order (most specific first), as `openssl x509 -subject -nameopt RFC2253` */
	if (gnutls_x509_crt_get_dn3(crt, &dn, 0) >= 0 && dn.data != NULL && dn.size > 0 && dn.size <= CERT_SUBJECT_MAX &&
	    memchr(dn.data, '\0', dn.size) == NULL) {
		memcpy(t->subject, dn.data, dn.size);
		t->subject[dn.size] = '\0';
	}
	t->cert = CERT_OK;
out:
	gnutls_free(spki.data);
	gnutls_free(dn.data);
	gnutls_pubkey_deinit(pub);
	gnutls_x509_crt_deinit(crt);
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
			  enum MHD_ConnectionNotificationCode code)
{
	struct http_server *s = cls;
	struct conn_track *t;

	if (code == MHD_CONNECTION_NOTIFY_STARTED) {
		const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);

		if (s->client_ca_pem != NULL)
			client_cert_setup(s, conn);
		t = calloc(1, sizeof(*t));
		if (t == NULL || ci == NULL) {
			free(t);
			*socket_context = NULL;
			return;
		}
		t->fd = ci->connect_fd;
		t->deadline = mono_now() + s->timeout;
		/* libmicrohttpd has made the TLS session, and no byte of the handshake has been
		 * read yet: a client that kept a ticket can resume instead of a full ECDHE +
		 * signature handshake. */
		if (s->ticket_key.data != NULL) {
			const union MHD_ConnectionInfo *ti =
				MHD_get_connection_info(conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
			if (ti != NULL && ti->tls_session != NULL &&
			    gnutls_session_ticket_enable_server((gnutls_session_t)ti->tls_session, &s->ticket_key) !=
				    GNUTLS_E_SUCCESS)
				kms_warn("TLS: session tickets not enabled on a connection");
		}
		pthread_mutex_lock(&s->track_mu);
		t->next = s->tracked;
		if (s->tracked != NULL)
			s->tracked->prev = t;
		s->tracked = t;
		pthread_mutex_unlock(&s->track_mu);
		*socket_context = t;
		return;
	}
	t = *socket_context;
	if (t == NULL)
		return;
	pthread_mutex_lock(&s->track_mu);
	if (t->prev != NULL)
		t->prev->next = t->next;
	else
		s->tracked = t->next;
	if (t->next != NULL)
		t->next->prev = t->prev;
	pthread_mutex_unlock(&s->track_mu);
	free(t);
	*socket_context = NULL;
}

static void *sweeper_main(void *arg)
{
	struct http_server *s = arg;

	pthread_mutex_lock(&s->track_mu);
	while (!s->stopping) {
		struct timespec until;
		int64_t now = mono_now();
		for (struct conn_track *t = s->tracked; t != NULL; t = t->next)
			if (t->deadline < now) {
				(void)shutdown(t->fd, SHUT_RDWR);
				t->deadline = INT64_MAX;
			}
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_nsec += 500000000L;
		if (until.tv_nsec >= 1000000000L) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000L;
		}
		(void)pthread_cond_timedwait(&s->sweep_cv, &s->track_mu, &until);
	}
	pthread_mutex_unlock(&s->track_mu);
	return NULL;
}

/* Per-request state. The body may hold plaintext: it is never realloc'd, and it is
 * wiped when the request ends. */
struct req {
	char *body;
	size_t len, cap;
	int too_large;
	/* a held answer (res.audit_seq set while its record is not durable) */
	bool holding;
	struct core_result res;
	struct MHD_Connection *conn;
	struct req *held_next;
};

static void req_free(struct req *r)
{
	if (r == NULL)
		return;
	if (r->holding) { /* closed before it was sent (daemon stopping): drop the answer */
		json_decref(r->res.body);
		free(r->res.text);
		if (r->res.has_file)
			close(r->res.file_fd);
	}
	if (r->body != NULL) {
		kms_wipe(r->body, r->cap);
		free(r->body);
	}
	free(r);
}

static int body_append(struct req *r, const char *data, size_t n, size_t max)
{
	if (r->len + n > max)
		return -1;
	if (r->len + n > r->cap) {
		size_t cap = r->cap ? r->cap : 1024;
		char *nb;
		while (cap < r->len + n)
			cap *= 2;
		if (cap > max)
			cap = max;
		nb = malloc(cap);
		if (nb == NULL)
			return -1;
		if (r->body != NULL) {
			memcpy(nb, r->body, r->len);
			kms_wipe(r->body, r->cap);
			free(r->body);
		}
		r->body = nb;
		r->cap = cap;
	}
	memcpy(r->body + r->len, data, n);
	r->len += n;
	return 0;
}

/* Replaces MHD's URL unescaping: an escape that would decode to a control byte (NUL
 * above all, which would silently cut "a%00b" to "a") is left as it is, so the name
 * rules refuse it instead of acting on a shorter name. */
static size_t unescape_strict(void *cls, struct MHD_Connection *conn, char *s)
{
	char *r = s, *w = s;
	(void)cls;
	(void)conn;

	while (*r) {
		int hi, lo;
		if (r[0] == '%' && (hi = kms_hex_digit(r[1])) >= 0 && (lo = kms_hex_digit(r[2])) >= 0 &&
		    (hi << 4 | lo) >= 0x20 && (hi << 4 | lo) != 0x7f) {
			*w++ = (char)(hi << 4 | lo);
			r += 3;
		} else {
			*w++ = *r++;
		}
	}
	*w = '\0';
	return (size_t)(w - s);
}

static void free_json_str(void *p)
{
	kms_json_free_str(p, 0);
}

static enum MHD_Result send_json(struct MHD_Connection *conn, int status, json_t *body, const char *request_id,
				 unsigned retry_after)
{
	char ra[16];

	struct MHD_Response *resp;
	enum MHD_Result ret;
	size_t len = 0;
	char *s = kms_json_dump(body, &len);

	if (s == NULL)
		return MHD_NO;
	resp = MHD_create_response_from_buffer_with_free_callback(len, s, free_json_str);
	if (resp == NULL) {
		kms_json_free_str(s, len);
		return MHD_NO;
	}
	MHD_add_response_header(resp, "Content-Type", "application/json");
	MHD_add_response_header(resp, "Cache-Control", "no-store");
	MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
	if (request_id != NULL && *request_id)
		MHD_add_response_header(resp, "X-Request-Id", request_id);
	if (retry_after > 0) {
		snprintf(ra, sizeof(ra), "%u", retry_after);
		MHD_add_response_header(resp, "Retry-After", ra);
	}
	ret = MHD_queue_response(conn, (unsigned)status, resp);
	MHD_destroy_response(resp);
	return ret;
}

/* Takes text (malloc'd) in every case. */
static enum MHD_Result send_text(struct MHD_Connection *conn, int status, char *text, const char *request_id)
{
	struct MHD_Response *resp;
	enum MHD_Result ret;

	resp = MHD_create_response_from_buffer_with_free_callback(strlen(text), text, free);
	if (resp == NULL) {
		free(text);
		return MHD_NO;
	}
	MHD_add_response_header(resp, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
	MHD_add_response_header(resp, "Cache-Control", "no-store");
	MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
	if (request_id != NULL && *request_id)
		MHD_add_response_header(resp, "X-Request-Id", request_id);
	ret = MHD_queue_response(conn, (unsigned)status, resp);
	MHD_destroy_response(resp);
	return ret;
}

/* A binary answer read from fd (a backup archive); takes fd in every case. */
static enum MHD_Result send_file(struct MHD_Connection *conn, int status, int fd, uint64_t size,
				 const char *request_id)
{
	struct MHD_Response *resp = MHD_create_response_from_fd64(size, fd);
	enum MHD_Result ret;

	if (resp == NULL) {
		close(fd);
		return MHD_NO;
	}
	MHD_add_response_header(resp, "Content-Type", "application/octet-stream");
	MHD_add_response_header(resp, "Content-Disposition", "attachment; filename=\"kmsd-backup.kmsbak\"");
	MHD_add_response_header(resp, "Cache-Control", "no-store");
	MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
	if (request_id != NULL && *request_id)
		MHD_add_response_header(resp, "X-Request-Id", request_id);
	ret = MHD_queue_response(conn, (unsigned)status, resp);
	MHD_destroy_response(resp);
	return ret;
}

static enum MHD_Result send_error(struct MHD_Connection *conn, int status, const char *msg)
{
	json_t *b = json_pack("{s:[s]}", "errors", msg);
	enum MHD_Result ret;

	if (b == NULL)
		return MHD_NO;
	ret = send_json(conn, status, b, NULL, 0);
	json_decref(b);
	return ret;
}

static void peer_addr(struct MHD_Connection *conn, char *buf, size_t cap)
{
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);

	snprintf(buf, cap, "unknown");
	if (ci == NULL || ci->client_addr == NULL)
		return;
	if (ci->client_addr->sa_family == AF_INET)
		inet_ntop(AF_INET, &((const struct sockaddr_in *)ci->client_addr)->sin_addr, buf, (socklen_t)cap);
	else if (ci->client_addr->sa_family == AF_INET6)
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ci->client_addr)->sin6_addr, buf, (socklen_t)cap);
}

static const char *presented_token(struct MHD_Connection *conn)
{
	const char *t = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Vault-Token");
	const char *a;

	if (t != NULL && *t)
		return t;
	a = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
	if (a != NULL && strncasecmp(a, "Bearer ", 7) == 0)
		return a + 7;
	return NULL;
}

/* Sends a settled result; takes its body, text or file in every case. */
static enum MHD_Result send_result(struct MHD_Connection *conn, struct core_result *res)
{
	enum MHD_Result ret;

	if (res->has_file) {
		ret = send_file(conn, res->status, res->file_fd, res->file_size, res->request_id);
		json_decref(res->body);
		return ret;
	}
	if (res->text != NULL) {
		ret = send_text(conn, res->status, res->text, res->request_id);
		json_decref(res->body);
		return ret;
	}
	if (res->body == NULL)
		return send_error(conn, 500, "internal error");
	ret = send_json(conn, res->status, res->body, res->request_id, res->retry_after);
	json_decref(res->body);
	return ret;
}

/* Held answers. A data-plane answer may leave only once its audit record is durable.
 * Instead of blocking its worker thread through the sync (and with it every other
 * connection that thread serves), the request's connection is suspended with the
 * answer kept in its request state, and the committer thread makes the log durable
 * and resumes every connection whose record the sync covered; libmicrohttpd then calls
 * on_request again, which sends the answer (or, if the log failed first, 503 and
 * nothing of the answer: core_settle). Workers keep serving while syncs are in flight,
 * and one sync covers every record queued meanwhile. */
static bool hold_answer(struct http_server *s, struct MHD_Connection *conn, struct req *r,
			struct core_result *res)
{
	if (!s->committer_running)
		return false; /* the worker waits for the sync itself */
	r->res = *res;
	r->holding = true;
	r->conn = conn;
	/* Suspended before it is listed (the committer may resume it as soon as it is),
	 * and outside hold_mu: suspending is a system call. */
	MHD_suspend_connection(conn);
	pthread_mutex_lock(&s->hold_mu);
	if (s->hold_stopping) {
		/* kmsd is stopping and the committer may be gone: resume at once; the
		 * next on_request settles it in this worker */
		pthread_mutex_unlock(&s->hold_mu);
		MHD_resume_connection(conn);
		return true;
	}
	r->held_next = s->held;
	s->held = r;
	if (res->audit_seq > s->held_max)
		s->held_max = res->audit_seq;
	if (s->committer_idle)
		pthread_cond_signal(&s->hold_cv);
	pthread_mutex_unlock(&s->hold_mu);
	return true;
}

static void *committer_main(void *arg)
{
	struct http_server *s = arg;

	pthread_mutex_lock(&s->hold_mu);
	for (;;) {
		struct req *ready = NULL, **pp;
		uint64_t upto;

		while (s->held == NULL && !s->hold_stopping) {
			s->committer_idle = true;
			pthread_cond_wait(&s->hold_cv, &s->hold_mu);
			s->committer_idle = false;
		}
		if (s->held == NULL)
			break; /* stopping, and nothing held */
		upto = s->held_max;
		pthread_mutex_unlock(&s->hold_mu);
		/* success or not, every request up to upto is settled afterwards (core_settle
		 * says which way for each) */
		if (core_audit_wait(s->core, upto) != KMS_OK)
			kms_debug("http: held answers up to audit seq %llu: the log failed",
				  (unsigned long long)upto);
		pthread_mutex_lock(&s->hold_mu);
		for (pp = &s->held; *pp != NULL;) {
			struct req *r = *pp;

			if (r->res.audit_seq <= upto) {
				*pp = r->held_next;
				r->held_next = ready;
				ready = r;
			} else {
				pp = &r->held_next;
			}
		}
		pthread_mutex_unlock(&s->hold_mu);
		while (ready != NULL) {
			struct req *r = ready;

			ready = r->held_next; /* r may be freed once its connection is resumed */
			MHD_resume_connection(r->conn);
		}
		pthread_mutex_lock(&s->hold_mu);
	}
	pthread_mutex_unlock(&s->hold_mu);
	return NULL;
}

static enum MHD_Result dispatch(struct http_server *s, struct MHD_Connection *conn, const char *url,
				const char *method, struct req *r)
{
	struct route_match m;
	struct core_call call = {0};
	struct core_result res;
	const char *list = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "list");
	char addr[INET6_ADDRSTRLEN + 1];
	struct conn_track one_off; /* when the connection has no tracking entry */
	kms_err err;

	if (s->client_ca_pem != NULL) {
		const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
		struct conn_track *t = ci != NULL ? ci->socket_context : NULL;

		if (t == NULL) {
			t = &one_off;
			one_off.cert = CERT_UNKNOWN;
		}
		if (t->cert == CERT_UNKNOWN)
			client_cert_identify(conn, t);
		if (t->cert == CERT_OK && time(NULL) > t->not_after) {
			kms_info("http: client certificate %s expired on a kept-alive connection: closing it", t->spki);
			t->cert = CERT_BAD;
		}
		/* Only a certificate that stopped being valid after the handshake gets here
		 * (it expired on a long-lived connection): close the connection, so the client
		 * has to shake hands again and is refused there. */
		if (t->cert == CERT_BAD)
			return MHD_NO;
		if (t->cert == CERT_OK) {
			call.cert_spki = t->spki;
			call.cert_subject = t->subject[0] ? t->subject : NULL;
		}
	}
	switch (route_match(method, list != NULL && strcmp(list, "true") == 0, url, &m)) {
	case ROUTE_NOT_FOUND:
		return send_error(conn, 404, "unsupported path");
	case ROUTE_METHOD:
		return send_error(conn, 405, "method not allowed on this path");
	case ROUTE_OK:
		break;
	}
	if (r->len > 0) {
		call.body = kms_json_parse_object(r->body, r->len, &err);
		if (call.body == NULL)
			return send_error(conn, kms_err_http_status(err), kms_err_detail(err));
	}
	peer_addr(conn, addr, sizeof(addr));
	call.op = m.op;
	call.tenant = m.tenant;
	call.key = m.key;
	call.name = m.name;
	call.variant = m.variant;
	call.version = m.version;
	call.token = presented_token(conn);
	call.remote_addr = addr;
	call.request_id = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id");
	call.raw_body = r->body;
	call.raw_len = r->len;
	call.format = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "format");
	call.health_activecode = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "activecode");
	call.health_sealedcode = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "sealedcode");
	call.mfa = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Vault-MFA");
	call.method = method;
	call.path = url;
	call.defer_audit = true;
	core_call(s->core, &call, &res);
	json_decref(call.body);
	if (res.audit_seq != 0 && hold_answer(s, conn, r, &res))
		return MHD_YES; /* sent when its record is durable */
	(void)core_settle(s->core, &res, true);
	return send_result(conn, &res);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
				  const char *method, const char *version, const char *upload_data,
				  size_t *upload_data_size, void **con_cls)
{
	struct http_server *s = cls;
	struct req *r = *con_cls;
	(void)version;

	if (r == NULL) {
		const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
		r = calloc(1, sizeof(*r));
		if (r == NULL)
			return MHD_NO;
		*con_cls = r;
		if (cl != NULL && strtoull(cl, NULL, 10) > s->max_body) {
			const char *expect = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_EXPECT);
			r->too_large = 1;
			/* A client waiting for "100 Continue" has sent no body yet: refuse at once.
			 * Otherwise read and discard a moderately oversize body (keeping none of
			 * it) so the client is still reading when the 413 arrives; past
			 * DRAIN_MAX, answer now and let the connection drop. */
			if ((expect != NULL && strcasecmp(expect, "100-continue") == 0) ||
			    strtoull(cl, NULL, 10) > DRAIN_MAX)
				return send_error(conn, 413, "request body too large");
		}
		return MHD_YES;
	}
	if (*upload_data_size != 0) {
		if (!r->too_large && body_append(r, upload_data, *upload_data_size, s->max_body) != 0)
			r->too_large = 1;
		*upload_data_size = 0;
		return MHD_YES;
	}
	if (r->holding) { /* resumed: the record's sync is over */
		r->holding = false;
		(void)core_settle(s->core, &r->res, true);
		return send_result(conn, &r->res);
	}
	if (r->too_large)
		return send_error(conn, 413, "request body too large");
	/* Complete: no deadline while it is handled (the answer's own send is covered by
	 * the idle timeout); the next request's clock starts in on_completed. */
	track_deadline(s, conn, INT64_MAX);
	return dispatch(s, conn, url, method, r);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
			 enum MHD_RequestTerminationCode toe)
{
	struct http_server *s = cls;

	(void)toe;
	req_free(*con_cls);
	*con_cls = NULL;
	track_deadline(s, conn, mono_now() + s->timeout);
}

static void __attribute__((format(printf, 2, 0))) on_mhd_log(void *cls, const char *fmt, va_list ap)
{
	char line[512];

	(void)cls;
	vsnprintf(line, sizeof(line), fmt, ap);
	line[strcspn(line, "\n")] = '\0';
	kms_debug("http: %s", line);
}

static char *read_pem(const char *path, size_t *len, int secret)
{
	struct stat st;
	char *buf = NULL;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return NULL;
	if (fstat(fd, &st) != 0 || st.st_size <= 0 || st.st_size > (1 << 20))
		goto fail;
	buf = secret ? kms_secret_alloc((size_t)st.st_size + 1) : calloc(1, (size_t)st.st_size + 1);
	if (buf == NULL)
		goto fail;
	if (read(fd, buf, (size_t)st.st_size) != st.st_size)
		goto fail;
	close(fd);
	*len = (size_t)st.st_size;
	return buf;
fail:
	if (secret)
		kms_secret_free(buf);
	else
		free(buf);
	close(fd);
	return NULL;
}

/* The listening socket, made here rather than by libmicrohttpd so that it can be bound
 * before kmsd leaves root. SO_REUSEADDR only (restart past TIME_WAIT); not
 * SO_REUSEPORT, which would let another process of the same account bind the port. */
static kms_err listen_socket(const struct kms_config *cfg, int *fd_out)
{
	struct sockaddr_storage ss = {0};
	socklen_t sl;
	int fd, one = 1;

	if (inet_pton(AF_INET, cfg->listen_address, &((struct sockaddr_in *)&ss)->sin_addr) == 1) {
		ss.ss_family = AF_INET;
		((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)cfg->port);
		sl = sizeof(struct sockaddr_in);
	} else if (inet_pton(AF_INET6, cfg->listen_address, &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1) {
		ss.ss_family = AF_INET6;
		((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)cfg->port);
		sl = sizeof(struct sockaddr_in6);
	} else {
		return kms_errf(KMS_ERR_CONFIG, "listen_address \"%s\" is not an IP address", cfg->listen_address);
	}
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return kms_errf(KMS_ERR_IO, "socket: %s", strerror(errno));
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
	    (ss.ss_family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) != 0) ||
	    bind(fd, (struct sockaddr *)&ss, sl) != 0 || listen(fd, SOMAXCONN) != 0) {
		int e = errno;

		close(fd);
		return kms_errf(KMS_ERR_IO, "cannot listen on %s port %d: %s", cfg->listen_address, cfg->port,
				strerror(e));
	}
	*fd_out = fd;
	return KMS_OK;
}

kms_err http_prepare(const struct kms_config *cfg, struct http_server **out, int *port_out)
{
	struct http_server *s = calloc(1, sizeof(*s));
	struct sockaddr_storage ss = {0};
	socklen_t sl = sizeof(ss);
	kms_err rc;

	if (s == NULL)
		return kms_errf(KMS_ERR_NOMEM, "http");
	s->listen_fd = -1;
	s->ipv6 = strchr(cfg->listen_address, ':') != NULL;
	pthread_mutex_init(&s->track_mu, NULL);
	pthread_cond_init(&s->sweep_cv, NULL);
	pthread_mutex_init(&s->hold_mu, NULL);
	pthread_cond_init(&s->hold_cv, NULL);
	if (cfg->tls) {
		s->cert_pem = read_pem(cfg->tls_cert, &s->cert_len, 0);
		s->key_pem = read_pem(cfg->tls_key, &s->key_len, 1);
		if (s->cert_pem == NULL || s->key_pem == NULL) {
			rc = kms_errf(KMS_ERR_CONFIG, "cannot read tls_cert %s or tls_key %s", cfg->tls_cert, cfg->tls_key);
			goto fail;
		}
	}
	if (cfg->tls && cfg->tls_client_ca[0] != '\0') {
		s->client_ca_pem = read_pem(cfg->tls_client_ca, &s->client_ca_len, 0);
		if (s->client_ca_pem == NULL || strstr(s->client_ca_pem, "-----BEGIN CERTIFICATE-----") == NULL) {
			rc = kms_errf(KMS_ERR_CONFIG, "cannot read tls_client_ca %s (a PEM file of CA certificates)",
				      cfg->tls_client_ca);
			goto fail;
		}
		s->client_required = strcmp(cfg->tls_client_auth, "required") == 0;
	}
	if ((rc = listen_socket(cfg, &s->listen_fd)) != KMS_OK)
		goto fail;
	if (getsockname(s->listen_fd, (struct sockaddr *)&ss, &sl) != 0) {
		rc = kms_errf(KMS_ERR_IO, "getsockname: %s", strerror(errno));
		goto fail;
	}
	*port_out = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
						   : ((struct sockaddr_in *)&ss)->sin_port);
	*out = s;
	return KMS_OK;
fail:
	http_stop(s);
	return rc;
}

kms_err http_start(struct http_server *s, const struct kms_config *cfg, struct core *core)
{
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ERROR_LOG |
			 MHD_ALLOW_SUSPEND_RESUME;
	unsigned workers = kms_config_workers(cfg);

	s->core = core;
	s->max_body = (size_t)cfg->max_body_bytes;
	s->timeout = (unsigned)cfg->connection_timeout;
	if (s->ipv6)
		flags |= MHD_USE_IPv6;
	if (cfg->tls)
		flags |= MHD_USE_TLS;
	if (cfg->tls && cfg->tls_session_tickets && gnutls_session_ticket_key_generate(&s->ticket_key) != GNUTLS_E_SUCCESS)
		return kms_errf(KMS_ERR_INTERNAL, "TLS: cannot make a session-ticket key");
	if (!cfg->tls)
		kms_warn("TLS is OFF: tokens and key material cross the network in the clear. Local debugging only.");
	/* before the workers: they read committer_running unlocked */
	if (pthread_create(&s->committer, NULL, committer_main, s) != 0)
		return kms_errf(KMS_ERR_INTERNAL, "cannot start the audit committer thread");
	s->committer_running = true;
	s->d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, s,
				MHD_OPTION_LISTEN_SOCKET, (MHD_socket)s->listen_fd,
				MHD_OPTION_THREAD_POOL_SIZE, workers,
				MHD_OPTION_CONNECTION_LIMIT, (unsigned)cfg->max_connections,
				MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)cfg->per_ip_connections,
				MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)cfg->connection_timeout,
				MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
				MHD_OPTION_NOTIFY_CONNECTION, on_connection, s,
				MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, s,
				MHD_OPTION_UNESCAPE_CALLBACK, unescape_strict, s,
				cfg->tls ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, s->cert_pem,
				MHD_OPTION_HTTPS_MEM_KEY, s->key_pem,
				MHD_OPTION_HTTPS_PRIORITIES, TLS_PRIORITIES,
				s->client_ca_pem != NULL ? MHD_OPTION_HTTPS_MEM_TRUST : MHD_OPTION_END, s->client_ca_pem,
				MHD_OPTION_END);
	if (s->d == NULL)
		return kms_errf(KMS_ERR_IO, "cannot serve on %s port %d (TLS material invalid?)",
				cfg->listen_address, cfg->port);
	s->listen_fd = -1; /* libmicrohttpd's now: it closes it in MHD_stop_daemon */
	if (s->client_ca_pem != NULL)
		kms_info("http: client certificates %s, checked against %s", s->client_required ? "required" : "optional",
			 cfg->tls_client_ca);
	if (pthread_create(&s->sweeper, NULL, sweeper_main, s) != 0)
		return kms_errf(KMS_ERR_INTERNAL, "cannot start the request-deadline thread");
	s->sweeper_running = true;
	return KMS_OK;
}

void http_stop(struct http_server *s)
{
	if (s == NULL)
		return;
	if (s->sweeper_running) {
		pthread_mutex_lock(&s->track_mu);
		s->stopping = true;
		pthread_cond_signal(&s->sweep_cv);
		pthread_mutex_unlock(&s->track_mu);
		pthread_join(s->sweeper, NULL);
	}
	if (s->committer_running) {
		/* no answer is held from now on; the committer settles and resumes those that
		 * are, then ends: libmicrohttpd must not be stopped with connections suspended */
		pthread_mutex_lock(&s->hold_mu);
		s->hold_stopping = true;
		pthread_cond_signal(&s->hold_cv);
		pthread_mutex_unlock(&s->hold_mu);
		pthread_join(s->committer, NULL);
	}
	if (s->d != NULL)
		MHD_stop_daemon(s->d);
	if (s->listen_fd >= 0)
		(void)close(s->listen_fd);
	if (s->ticket_key.data != NULL) {
		gnutls_memset(s->ticket_key.data, 0, s->ticket_key.size);
		gnutls_free(s->ticket_key.data);
	}
	pthread_cond_destroy(&s->sweep_cv);
	pthread_mutex_destroy(&s->track_mu);
	pthread_cond_destroy(&s->hold_cv);
	pthread_mutex_destroy(&s->hold_mu);
	free(s->cert_pem);
	free(s->client_ca_pem);
	kms_secret_free(s->key_pem);
	free(s);
}
