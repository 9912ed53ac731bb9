/* kms_config_parse on arbitrary file text (up to the first NUL: kms_config_load
 * refuses files with one).
 *
 * Properties:
 *   - failure: KMS_ERR_CONFIG, the detail names the file ("fuzz.conf:") and cfg is
 *     left as it was;
 *   - success: every string field is NUL-terminated inside its array, every integer is
 *     inside its documented range, and writing the result back out as a config file
 *     (quoted strings) and parsing that gives the same configuration. */
#include <string.h>

#include "kms/config.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	return 0;
}

/* Every option of struct kms_config (kms/config.h). A new option belongs here too: the
 * whole-struct comparison after the round trip fails for one that is left out. */
#define STRINGS(X)                                                                         \
	X(listen_address) X(port_file) X(tls_cert) X(tls_key) X(pkcs11_module) X(token_label) \
	X(pin_file) X(pin_env) X(so_pin_file) X(store_path) X(audit_path) X(node_id) X(log_level) \
	X(policy_file) X(audit_syslog) X(rate_limit_ops) X(user) X(metrics_listen) X(metrics_port_file) \
	X(tls_client_ca) X(tls_client_auth) X(store_uri)
#define INTS(X)                                                                             \
	X(port, 0, 65535) X(workers, 0, 256) X(max_body_bytes, 1024, 16777216)              \
	X(connection_timeout, 1, 3600) X(max_connections, 1, 65536) X(per_ip_connections, 0, 65536) \
	X(scheduler_interval, 1, 86400) X(phi_retention_floor_days, 1, 36500)              \
	X(audit_checkpoint_records, 1, 1000000) X(audit_checkpoint_seconds, 1, 86400)      \
	X(audit_segment_mb, 0, 1048576) X(audit_segment_seconds, 0, 31622400)              \
	X(max_encryptions_per_version, 1, 2147483647) X(rate_limit_rps, 0, 1000000)           \
	X(rate_limit_burst, 0, 10000000) X(auth_fail_rps, 0, 100000) X(auth_fail_burst, 0, 1000000) \
	X(audit_hmac_cache, 0, 1000000) X(approval_ttl, 60, 2592000) X(break_glass_max_ttl, 60, 86400) \
	X(break_glass_reviews, 1, 16) X(mfa_max_failures, 1, 100)

static void check_ranges(const struct kms_config *c)
{
#define S(f) CHECK(memchr(c->f, '\0', sizeof(c->f)) != NULL);
#define I(f, lo, hi) CHECK(c->f >= (lo) && c->f <= (hi));
	STRINGS(S)
	INTS(I)
#undef S
#undef I
}

static int same(const struct kms_config *a, const struct kms_config *b)
{
#define S(f) if (strcmp(a->f, b->f) != 0) return 0;
#define I(f, lo, hi) if (a->f != b->f) return 0;
	STRINGS(S)
	INTS(I)
#undef S
#undef I
	return a->tls == b->tls && a->tls_session_tickets == b->tls_session_tickets;
}

/* A stored value never holds a '"' unless it was written unquoted, and then it has no
 * leading or trailing blank: either form reads back the same. */
static size_t put_str(char *out, size_t o, const char *name, const char *v)
{
	if (strchr(v, '"') != NULL)
		o += (size_t)sprintf(out + o, "%s = %s\n", name, v);
	else
		o += (size_t)sprintf(out + o, "%s = \"%s\"\n", name, v);
	return o;
}

static void check_roundtrip(const struct kms_config *c)
{
	struct kms_config back;
	char *text = malloc(32 * 1024);
	size_t o = 0;

	CHECK(text != NULL);
#define S(f) o = put_str(text, o, #f, c->f);
#define I(f, lo, hi) o += (size_t)sprintf(text + o, "%s = %d\n", #f, c->f);
	STRINGS(S)
	INTS(I)
#undef S
#undef I
	o += (size_t)sprintf(text + o, "tls = %s\n", c->tls ? "true" : "false");
	o += (size_t)sprintf(text + o, "tls_session_tickets = %s\n", c->tls_session_tickets ? "true" : "false");
	if (kms_config_parse(text, "roundtrip.conf", &back) != KMS_OK) {
		fprintf(stderr, "%s\n%s\n", kms_err_detail(KMS_ERR_CONFIG), text);
		CHECK(!"re-parse of a written config failed");
	}
	CHECK(same(c, &back));
	/* Both structs come whole from the parser's zeroed copy, padding included: equal
	 * bytes, unless an option is missing from the lists above. */
	CHECK(memcmp(c, &back, sizeof(back)) == 0);
	free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct kms_config cfg, before;
	char *text;
	kms_err rc;

	if (size > 65536)
		return 0;
	text = fuzz_dup(data, size, 1);
	memset(&cfg, 0x5a, sizeof(cfg));
	memcpy(&before, &cfg, sizeof(cfg));
	rc = kms_config_parse(text, "fuzz.conf", &cfg);
	if (rc != KMS_OK) {
		CHECK(rc == KMS_ERR_CONFIG);
		CHECK(strncmp(kms_err_detail(rc), "fuzz.conf:", 10) == 0);
		CHECK(memcmp(&cfg, &before, sizeof(cfg)) == 0);
	} else {
		check_ranges(&cfg);
		check_roundtrip(&cfg);
	}
	free(text);
	return 0;
}
