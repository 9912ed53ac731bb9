/* Unit tests for kms/config: defaults, every option, every kind of error with its
 * file:line detail, the cross-option rules, loading from a file, and the shipped
 * kmsd.conf.sample (run from the repository root). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kms/base/err.h"
#include "kms/config.h"

/* The options config.h documents; the sample must set each of them. */
static const char *const all_options[] = {
	"listen_address", "port",	    "port_file",	  "tls",
	"tls_cert",	  "tls_key",	    "pkcs11_module",	  "token_label",
	"pin_file",	  "pin_env",	    "so_pin_file",	  "store_path",
	"audit_path",	  "node_id",	    "workers",		  "max_body_bytes",
	"connection_timeout", "max_connections", "per_ip_connections", "log_level",
	"scheduler_interval", "phi_retention_floor_days", "audit_checkpoint_records",
	"audit_checkpoint_seconds", "policy_file", "max_encryptions_per_version",
	"audit_segment_mb", "audit_segment_seconds", "audit_syslog", "rate_limit_rps",
	"rate_limit_burst", "rate_limit_ops", "auth_fail_rps", "auth_fail_burst", "user",
	"tls_client_ca", "tls_client_auth",
	"metrics_listen", "metrics_port_file",
	"mfa_max_failures", "store_uri",
};

/* Parses text as "t.conf" and expects failure with exactly this detail. */
static void expect_error(const char *text, const char *detail)
{
	struct kms_config cfg;

	kms_err_clear();
	assert_int_equal(kms_config_parse(text, "t.conf", &cfg), KMS_ERR_CONFIG);
	assert_string_equal(kms_err_detail(KMS_ERR_CONFIG), detail);
}

static void valid_base(struct kms_config *cfg)
{
	kms_config_defaults(cfg);
	snprintf(cfg->tls_cert, sizeof(cfg->tls_cert), "cert.pem");
	snprintf(cfg->tls_key, sizeof(cfg->tls_key), "key.pem");
	snprintf(cfg->pin_file, sizeof(cfg->pin_file), "user.pin");
}

static void expect_invalid(const struct kms_config *cfg, const char *needle)
{
	kms_err_clear();
	assert_int_equal(kms_config_validate(cfg), KMS_ERR_CONFIG);
	if (strstr(kms_err_detail(KMS_ERR_CONFIG), needle) == NULL)
		fail_msg("detail \"%s\" lacks \"%s\"", kms_err_detail(KMS_ERR_CONFIG), needle);
}

static void assert_cfg_equal(const struct kms_config *a, const struct kms_config *b)
{
	assert_string_equal(a->listen_address, b->listen_address);
	assert_int_equal(a->port, b->port);
	assert_string_equal(a->port_file, b->port_file);
	assert_int_equal(a->tls, b->tls);
	assert_string_equal(a->tls_cert, b->tls_cert);
	assert_string_equal(a->tls_key, b->tls_key);
	assert_string_equal(a->pkcs11_module, b->pkcs11_module);
	assert_string_equal(a->token_label, b->token_label);
	assert_string_equal(a->pin_file, b->pin_file);
	assert_string_equal(a->pin_env, b->pin_env);
	assert_string_equal(a->so_pin_file, b->so_pin_file);
	assert_string_equal(a->store_path, b->store_path);
	assert_string_equal(a->store_uri, b->store_uri);
	assert_string_equal(a->audit_path, b->audit_path);
	assert_string_equal(a->node_id, b->node_id);
	assert_int_equal(a->workers, b->workers);
	assert_int_equal(a->max_body_bytes, b->max_body_bytes);
	assert_int_equal(a->connection_timeout, b->connection_timeout);
	assert_int_equal(a->max_connections, b->max_connections);
	assert_int_equal(a->per_ip_connections, b->per_ip_connections);
	assert_string_equal(a->log_level, b->log_level);
	assert_string_equal(a->user, b->user);
}

static void test_defaults(void **state)
{
	struct kms_config cfg;

	(void)state;
	memset(&cfg, 0x5a, sizeof(cfg));
	kms_config_defaults(&cfg);
	assert_string_equal(cfg.listen_address, "127.0.0.1");
	assert_int_equal(cfg.port, 8200);
	assert_int_equal(cfg.mfa_max_failures, 5);
	assert_string_equal(cfg.port_file, "");
	assert_true(cfg.tls);
	assert_string_equal(cfg.tls_cert, "");
	assert_string_equal(cfg.tls_key, "");
	assert_string_equal(cfg.pkcs11_module, "/usr/lib/softhsm/libsofthsm2.so");
	assert_string_equal(cfg.token_label, "kmsd");
	assert_string_equal(cfg.pin_file, "");
	assert_string_equal(cfg.pin_env, "");
	assert_string_equal(cfg.so_pin_file, "");
	assert_string_equal(cfg.store_path, "./var/kmsd.db");
	assert_string_equal(cfg.audit_path, "./var/audit.log");
	assert_string_equal(cfg.node_id, "kmsd-1");
	assert_int_equal(cfg.workers, 0);
	assert_int_equal(cfg.max_body_bytes, 65536);
	assert_int_equal(cfg.connection_timeout, 30);
	assert_int_equal(cfg.max_connections, 1024);
	assert_int_equal(cfg.per_ip_connections, 256);
	assert_string_equal(cfg.log_level, "info");
	assert_string_equal(cfg.user, "");

	/* an empty file means all defaults */
	memset(&cfg, 0, sizeof(cfg));
	assert_int_equal(kms_config_parse("", "t.conf", &cfg), KMS_OK);
	assert_int_equal(cfg.port, 8200);
	assert_string_equal(cfg.node_id, "kmsd-1");
}

static void test_every_option(void **state)
{
	static const char text[] = "listen_address = ::1\n"
				   "port = 0\n"
				   "port_file = /run/kmsd/port\n"
				   "tls = false\n"
				   "tls_cert = /etc/kmsd/cert.pem\n"
				   "tls_key = /etc/kmsd/key.pem\n"
				   "pkcs11_module = /opt/hsm/lib/libcs_pkcs11.so\n"
				   "token_label = prod-hsm-01\n"
				   "pin_file = /etc/kmsd/user.pin\n"
				   "pin_env = KMSD_PIN\n"
				   "so_pin_file = /etc/kmsd/so.pin\n"
				   "store_path = /var/lib/kmsd/kmsd.db\n"
				   "audit_path = /var/log/kmsd/audit.log\n"
				   "node_id = node_2.east-1\n"
				   "workers = 256\n"
				   "max_body_bytes = 16777216\n"
				   "connection_timeout = 3600\n"
				   "max_connections = 65536\n"
				   "per_ip_connections = 0\n"
				   "log_level = debug\n"
				   "user = kmsd\n";
	struct kms_config cfg;

	(void)state;
	assert_int_equal(kms_config_parse(text, "t.conf", &cfg), KMS_OK);
	assert_string_equal(cfg.listen_address, "::1");
	assert_int_equal(cfg.port, 0);
	assert_string_equal(cfg.port_file, "/run/kmsd/port");
	assert_false(cfg.tls);
	assert_string_equal(cfg.tls_cert, "/etc/kmsd/cert.pem");
	assert_string_equal(cfg.tls_key, "/etc/kmsd/key.pem");
	assert_string_equal(cfg.pkcs11_module, "/opt/hsm/lib/libcs_pkcs11.so");
	assert_string_equal(cfg.token_label, "prod-hsm-01");
	assert_string_equal(cfg.pin_file, "/etc/kmsd/user.pin");
	assert_string_equal(cfg.pin_env, "KMSD_PIN");
	assert_string_equal(cfg.so_pin_file, "/etc/kmsd/so.pin");
	assert_string_equal(cfg.store_path, "/var/lib/kmsd/kmsd.db");
	assert_string_equal(cfg.audit_path, "/var/log/kmsd/audit.log");
	assert_string_equal(cfg.node_id, "node_2.east-1");
	assert_int_equal(cfg.workers, 256);
	assert_int_equal(cfg.max_body_bytes, 16777216);
	assert_int_equal(cfg.connection_timeout, 3600);
	assert_int_equal(cfg.max_connections, 65536);
	assert_int_equal(cfg.per_ip_connections, 0);
	assert_string_equal(cfg.log_level, "debug");
	assert_string_equal(cfg.user, "kmsd");
}

static void test_syntax(void **state)
{
	struct kms_config cfg;

	(void)state;
	/* comments, blank lines, CRLF, surrounding blanks, quotes, yes/no */
	assert_int_equal(kms_config_parse("# comment\r\n"
					  "\r\n"
					  "   \t# indented comment\n"
					  "\tport\t=\t9000  \r\n"
					  "token_label = \"  spaced label \"\n"
					  "port_file = \"\"\n"
					  "tls = no\n"
					  "so_pin_file = ./a#b\n"
					  "pin_env=PIN_1\n"
					  "log_level = warn", /* no final newline */
					  "t.conf", &cfg),
			 KMS_OK);
	assert_int_equal(cfg.port, 9000);
	assert_string_equal(cfg.token_label, "  spaced label ");
	assert_string_equal(cfg.port_file, "");
	assert_false(cfg.tls);
	assert_string_equal(cfg.so_pin_file, "./a#b");
	assert_string_equal(cfg.pin_env, "PIN_1");
	assert_string_equal(cfg.log_level, "warn");
	assert_int_equal(kms_config_parse("tls = yes\nnode_id = \"n=1\"", "t.conf", &cfg),
			 KMS_ERR_CONFIG); /* '=' is not allowed in node_id */
	assert_int_equal(kms_config_parse("tls = yes\nport_file = a=b\n", "t.conf", &cfg), KMS_OK);
	assert_true(cfg.tls);
	assert_string_equal(cfg.port_file, "a=b");
	/* 32 bytes is the PKCS#11 label limit */
	assert_int_equal(kms_config_parse("token_label = 0123456789abcdef0123456789abcdef\n",
					  "t.conf", &cfg),
			 KMS_OK);
	assert_int_equal(strlen(cfg.token_label), 32);
}

static void test_errors(void **state)
{
	(void)state;
	expect_error("port = 8200\n\nbogus = 1\n", "t.conf:3: unknown option \"bogus\"");
	expect_error("\nport = 1\n# x\nport = 2\n", "t.conf:4: port: already set on line 2");
	expect_error("port = 80x\n", "t.conf:1: port: must be an integer");
	expect_error("port = \n", "t.conf:1: port: must be an integer");
	expect_error("port = +80\n", "t.conf:1: port: must be an integer");
	expect_error("port = 0x50\n", "t.conf:1: port: must be an integer");
	expect_error("port = 8 0\n", "t.conf:1: port: must be an integer");
	expect_error("port = -\n", "t.conf:1: port: must be an integer");
	expect_error("port = 65536\n", "t.conf:1: port: must be between 0 and 65535");
	expect_error("port = -1\n", "t.conf:1: port: must be between 0 and 65535");
	/* NIST SP 800-63B: a lockout after at most 100 failed attempts */
	expect_error("mfa_max_failures = 0\n", "t.conf:1: mfa_max_failures: must be between 1 and 100");
	expect_error("mfa_max_failures = 101\n", "t.conf:1: mfa_max_failures: must be between 1 and 100");
	expect_error("port = 99999999999999999999999\n",
		     "t.conf:1: port: must be between 0 and 65535");
	expect_error("workers = 257\n", "t.conf:1: workers: must be between 0 and 256");
	expect_error("max_body_bytes = 1023\n",
		     "t.conf:1: max_body_bytes: must be between 1024 and 16777216");
	expect_error("connection_timeout = 0\n",
		     "t.conf:1: connection_timeout: must be between 1 and 3600");
	expect_error("max_connections = 0\n",
		     "t.conf:1: max_connections: must be between 1 and 65536");
	expect_error("per_ip_connections = 65537\n",
		     "t.conf:1: per_ip_connections: must be between 0 and 65536");
	expect_error("tls = maybe\n", "t.conf:1: tls: must be true or false");
	expect_error("tls = TRUE\n", "t.conf:1: tls: must be true or false");
	expect_error("tls_cert = \"/etc/cert.pem\n", "t.conf:1: tls_cert: unterminated quote");
	expect_error("tls_cert = \"a\" b\n",
		     "t.conf:1: tls_cert: unexpected text after closing quote");
	expect_error("port 8200\n", "t.conf:1: expected 'name = value' (missing '=')");
	expect_error("# ok\n= 5\n", "t.conf:2: missing option name before '='");
	expect_error("po rt = 5\n", "t.conf:1: invalid option name");
	expect_error("port = 1\x1b[2J\n", "t.conf:1: control character in line");
	expect_error("token_label = 0123456789abcdef0123456789abcdefX\n",
		     "t.conf:1: token_label: longer than 32 bytes");
	expect_error("listen_address = localhost\n",
		     "t.conf:1: listen_address: must be an IPv4 or IPv6 address "
		     "(no brackets, no host names)");
	expect_error("listen_address = [::1]\n",
		     "t.conf:1: listen_address: must be an IPv4 or IPv6 address "
		     "(no brackets, no host names)");
	expect_error("log_level = verbose\n",
		     "t.conf:1: log_level: must be one of debug, info, warn, error");
	expect_error("node_id = a/b\n",
		     "t.conf:1: node_id: must be 1 to 64 characters from A-Z a-z 0-9 . _ -");
	expect_error("node_id = \"\"\n", "t.conf:1: node_id: must not be empty");
	expect_error("pin_env = 1PIN\n",
		     "t.conf:1: pin_env: must be an environment variable name "
		     "([A-Za-z_][A-Za-z0-9_]*)");
	expect_error("store_path =\n", "t.conf:1: store_path: must not be empty");
	expect_error("store_uri = /var/lib/kmsd.db\n", "t.conf:1: store_uri: must start with postgresql:// or postgres://");
	expect_error("store_uri = mysql://x\n", "t.conf:1: store_uri: must start with postgresql:// or postgres://");
	expect_error("audit_path = \"\"\n", "t.conf:1: audit_path: must not be empty");
	expect_error("pkcs11_module = \"\"\n", "t.conf:1: pkcs11_module: must not be empty");
	/* user: a login name, never a number or something getpwnam could misread */
	expect_error("user = 0\n", "t.conf:1: user: must be a login name: 1 to 32 characters from "
				  "A-Z a-z 0-9 . _ -, not starting with a digit or '-'");
	expect_error("user = -kmsd\n", "t.conf:1: user: must be a login name: 1 to 32 characters from "
				      "A-Z a-z 0-9 . _ -, not starting with a digit or '-'");
	expect_error("user = k m\n", "t.conf:1: user: must be a login name: 1 to 32 characters from "
				     "A-Z a-z 0-9 . _ -, not starting with a digit or '-'");
	expect_error("user = kmsd/x\n", "t.conf:1: user: must be a login name: 1 to 32 characters "
				       "from A-Z a-z 0-9 . _ -, not starting with a digit or '-'");
	expect_error("user = 0123456789abcdef0123456789abcdefX\n", "t.conf:1: user: longer than 32 bytes");
}

static void test_error_keeps_cfg(void **state)
{
	struct kms_config cfg;
	char big[KMS_CONFIG_PATH_MAX + 64];

	(void)state;
	assert_int_equal(kms_config_parse("port = 1234\n", "t.conf", &cfg), KMS_OK);
	assert_int_equal(cfg.port, 1234);
	/* a failed parse leaves the caller's struct as it was, even after good lines */
	assert_int_equal(kms_config_parse("port = 4321\nbogus = 1\n", "t.conf", &cfg),
			 KMS_ERR_CONFIG);
	assert_int_equal(cfg.port, 1234);

	/* the longest path that fits, one byte more, and far more */
	snprintf(big, sizeof(big), "store_path = %0*d\n", KMS_CONFIG_PATH_MAX - 1, 7);
	assert_int_equal(kms_config_parse(big, "t.conf", &cfg), KMS_OK);
	assert_int_equal(strlen(cfg.store_path), KMS_CONFIG_PATH_MAX - 1);
	snprintf(big, sizeof(big), "store_path = %0*d\n", KMS_CONFIG_PATH_MAX, 7);
	assert_int_equal(kms_config_parse(big, "t.conf", &cfg), KMS_ERR_CONFIG);
	assert_string_equal(kms_err_detail(KMS_ERR_CONFIG),
			    "t.conf:1: store_path: longer than 1023 bytes");
	snprintf(big, sizeof(big), "store_path = %0*d\n", KMS_CONFIG_PATH_MAX + 40, 7);
	assert_int_equal(kms_config_parse(big, "t.conf", &cfg), KMS_ERR_CONFIG);
	assert_string_equal(kms_err_detail(KMS_ERR_CONFIG),
			    "t.conf:1: store_path: longer than 1023 bytes");
	snprintf(big, sizeof(big), "port = %0*d\n", KMS_CONFIG_PATH_MAX + 40, 7);
	assert_int_equal(kms_config_parse(big, "t.conf", &cfg), KMS_ERR_CONFIG);
	assert_string_equal(kms_err_detail(KMS_ERR_CONFIG), "t.conf:1: port: longer than 1024 bytes");
	assert_int_equal(kms_config_parse(NULL, "t.conf", &cfg), KMS_ERR_CONFIG);
}

static void test_validate(void **state)
{
	struct kms_config cfg;

	(void)state;
	valid_base(&cfg);
	assert_int_equal(kms_config_validate(&cfg), KMS_OK);
	assert_int_equal(kms_config_validate(NULL), KMS_ERR_CONFIG);

	kms_config_defaults(&cfg);
	snprintf(cfg.pin_file, sizeof(cfg.pin_file), "user.pin");
	expect_invalid(&cfg, "tls_cert: required when tls is true");
	snprintf(cfg.tls_cert, sizeof(cfg.tls_cert), "cert.pem");
	expect_invalid(&cfg, "tls_key: required when tls is true");
	cfg.tls = false; /* no TLS: cert and key not needed */
	cfg.tls_cert[0] = '\0';
	assert_int_equal(kms_config_validate(&cfg), KMS_OK);

	valid_base(&cfg);
	cfg.pin_file[0] = '\0';
	expect_invalid(&cfg, "set exactly one");
	snprintf(cfg.pin_env, sizeof(cfg.pin_env), "KMSD_PIN");
	assert_int_equal(kms_config_validate(&cfg), KMS_OK);
	snprintf(cfg.pin_file, sizeof(cfg.pin_file), "user.pin");
	expect_invalid(&cfg, "set exactly one");

	/* per-option rules apply to a struct filled by code, too */
	valid_base(&cfg);
	snprintf(cfg.listen_address, sizeof(cfg.listen_address), "not-an-ip");
	expect_invalid(&cfg, "listen_address: must be an IPv4 or IPv6 address");
	snprintf(cfg.listen_address, sizeof(cfg.listen_address), "::");
	assert_int_equal(kms_config_validate(&cfg), KMS_OK);
	snprintf(cfg.listen_address, sizeof(cfg.listen_address), "0.0.0.0");
	assert_int_equal(kms_config_validate(&cfg), KMS_OK);

	valid_base(&cfg);
	snprintf(cfg.log_level, sizeof(cfg.log_level), "trace");
	expect_invalid(&cfg, "log_level: must be one of");
	valid_base(&cfg);
	cfg.port = 70000;
	expect_invalid(&cfg, "port: must be between 0 and 65535");
	valid_base(&cfg);
	cfg.workers = -1;
	expect_invalid(&cfg, "workers: must be between 0 and 256");
	valid_base(&cfg);
	cfg.store_path[0] = '\0';
	expect_invalid(&cfg, "store_path: must not be empty");
	valid_base(&cfg);
	memset(cfg.token_label, 'x', sizeof(cfg.token_label)); /* not terminated */
	expect_invalid(&cfg, "token_label: is not terminated");

	/* client certificates (mTLS) */
	valid_base(&cfg);
	assert_string_equal(cfg.tls_client_ca, "");
	assert_string_equal(cfg.tls_client_auth, "optional");
	snprintf(cfg.tls_client_ca, sizeof(cfg.tls_client_ca), "clients.pem");
	assert_int_equal(kms_config_validate(&cfg), KMS_OK);
	snprintf(cfg.tls_client_auth, sizeof(cfg.tls_client_auth), "required");
	assert_int_equal(kms_config_validate(&cfg), KMS_OK);
	snprintf(cfg.tls_client_auth, sizeof(cfg.tls_client_auth), "sometimes");
	expect_invalid(&cfg, "tls_client_auth: must be optional or required");
	snprintf(cfg.tls_client_auth, sizeof(cfg.tls_client_auth), "optional");
	cfg.tls = false;
	expect_invalid(&cfg, "tls_client_ca: client certificates need tls = true");
	valid_base(&cfg);
	snprintf(cfg.tls_client_auth, sizeof(cfg.tls_client_auth), "required");
	expect_invalid(&cfg, "tls_client_auth: required needs tls_client_ca");
}

static void write_file(const char *path, const void *data, size_t len)
{
	FILE *fp = fopen(path, "wb");

	assert_non_null(fp);
	assert_int_equal(fwrite(data, 1, len, fp), len);
	assert_int_equal(fclose(fp), 0);
}

static void test_load(void **state)
{
	char dir[] = "/tmp/kmsd-test-config-XXXXXX";
	char path[128];
	struct kms_config cfg;
	char *big;

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/kmsd.conf", dir);

	assert_int_equal(kms_config_load(path, &cfg), KMS_ERR_CONFIG);
	assert_non_null(strstr(kms_err_detail(KMS_ERR_CONFIG), "cannot open"));

	write_file(path, "port = 9100\nworkers = 4\n", 24);
	assert_int_equal(kms_config_load(path, &cfg), KMS_OK);
	assert_int_equal(cfg.port, 9100);
	assert_int_equal(cfg.workers, 4);

	/* the detail names the file as given and the line */
	write_file(path, "port = 9100\nworkers = many\n", 27);
	assert_int_equal(kms_config_load(path, &cfg), KMS_ERR_CONFIG);
	{
		char want[256];

		snprintf(want, sizeof(want), "%s:2: workers: must be an integer", path);
		assert_string_equal(kms_err_detail(KMS_ERR_CONFIG), want);
	}

	/* a NUL would otherwise hide the rest of the file from the parser */
	write_file(path, "port = 9100\n\0bogus = 1\n", 23);
	assert_int_equal(kms_config_load(path, &cfg), KMS_ERR_CONFIG);
	assert_non_null(strstr(kms_err_detail(KMS_ERR_CONFIG), "NUL"));

	big = malloc(2 * 1024 * 1024);
	assert_non_null(big);
	memset(big, '#', 2 * 1024 * 1024);
	write_file(path, big, 2 * 1024 * 1024);
	free(big);
	assert_int_equal(kms_config_load(path, &cfg), KMS_ERR_CONFIG);
	assert_non_null(strstr(kms_err_detail(KMS_ERR_CONFIG), "larger than"));

	assert_int_equal(kms_config_load(dir, &cfg), KMS_ERR_CONFIG);
	assert_non_null(strstr(kms_err_detail(KMS_ERR_CONFIG), "not a regular file"));
	assert_int_equal(kms_config_load(NULL, &cfg), KMS_ERR_CONFIG);

	assert_int_equal(unlink(path), 0);
	assert_int_equal(rmdir(dir), 0);
}

/* The shipped sample parses, validates, sets every option on its own line, and shows
 * the real defaults for everything the dev setup does not override. */
static void test_sample(void **state)
{
	struct kms_config cfg, want;
	char line[512];
	size_t i, seen[sizeof(all_options) / sizeof(all_options[0])] = {0};
	FILE *fp;

	(void)state;
	assert_int_equal(kms_config_load("kmsd.conf.sample", &cfg), KMS_OK);
	assert_int_equal(kms_config_validate(&cfg), KMS_OK);

	kms_config_defaults(&want);
	snprintf(want.tls_cert, sizeof(want.tls_cert), "./var/dev/server.pem");
	snprintf(want.tls_key, sizeof(want.tls_key), "./var/dev/server.key");
	snprintf(want.pin_file, sizeof(want.pin_file), "./var/dev/user.pin");
	snprintf(want.so_pin_file, sizeof(want.so_pin_file), "./var/dev/so.pin");
	assert_cfg_equal(&cfg, &want);

	fp = fopen("kmsd.conf.sample", "r");
	assert_non_null(fp);
	while (fgets(line, sizeof(line), fp) != NULL) {
		for (i = 0; i < sizeof(all_options) / sizeof(all_options[0]); i++) {
			size_t n = strlen(all_options[i]);

			if (strncmp(line, all_options[i], n) == 0 && line[n] == ' ' &&
			    line[n + 1] == '=')
				seen[i]++;
		}
	}
	fclose(fp);
	for (i = 0; i < sizeof(all_options) / sizeof(all_options[0]); i++)
		if (seen[i] != 1)
			fail_msg("kmsd.conf.sample sets %s %zu times", all_options[i], seen[i]);
}

static void test_metrics_listen(void **state)
{
	static const char *const bad[] = {"127.0.0.1", "localhost:9102", "::1:9102", "127.0.0.1:70000",
					  "[::1]9102", "127.0.0.1:-1", "127.0.0.1:", ":9102", "[::1]:",
					  "[127.0.0.1:1", "1.2.3.4:12x", "1.2.3.4: 1", "[]:1"};
	struct kms_config cfg;
	char host[64];
	int port = -1;

	(void)state;
	assert_int_equal(kms_config_parse_listen("127.0.0.1:9102", host, sizeof(host), &port), 0);
	assert_string_equal(host, "127.0.0.1");
	assert_int_equal(port, 9102);
	assert_int_equal(kms_config_parse_listen("[::1]:0", host, sizeof(host), &port), 0);
	assert_string_equal(host, "::1");
	assert_int_equal(port, 0);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(kms_config_parse_listen(bad[i], host, sizeof(host), &port), -1);
	assert_int_equal(kms_config_parse_listen("1.2.3.4:1", host, 4, &port), -1); /* no room */
	assert_int_equal(kms_config_parse("metrics_listen = [::1]:9102\n", "t.conf", &cfg), KMS_OK);
	assert_string_equal(cfg.metrics_listen, "[::1]:9102");
	assert_int_equal(kms_config_parse("metrics_listen =\n", "t.conf", &cfg), KMS_OK);
	assert_string_equal(cfg.metrics_listen, "");
	kms_err_clear();
	assert_int_equal(kms_config_parse("metrics_listen = localhost:9102\n", "t.conf", &cfg), KMS_ERR_CONFIG);
	assert_non_null(strstr(kms_err_detail(KMS_ERR_CONFIG), "metrics_listen"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_defaults),      cmocka_unit_test(test_every_option),
		cmocka_unit_test(test_syntax),	      cmocka_unit_test(test_errors),
		cmocka_unit_test(test_error_keeps_cfg), cmocka_unit_test(test_validate),
		cmocka_unit_test(test_load),	      cmocka_unit_test(test_sample),
		cmocka_unit_test(test_metrics_listen),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
