/* kmsd configuration: one table of options (config.c), one file format:
 *   # comment
 *   name = value
 * Blank lines and comments are ignored; surrounding whitespace is trimmed; a value may
 * be wrapped in double quotes. Unknown names, repeated names, bad values and missing
 * required values are errors naming the file and line. A documented sample of every
 * option is kmsd.conf.sample at the top of the tree.
 *
 * Options (name, type, default, rule):
 *   listen_address      string  127.0.0.1    IPv4 or IPv6 literal
 *   port                int     8200         1..65535 (0 = any free port, tests use it)
 *   port_file           path    ""           if set, the bound port is written there once listening
 *   tls                 bool    true         false only for local debugging; logged loudly
 *   tls_cert            path    ""           PEM certificate chain; required when tls is true
 *   tls_key             path    ""           PEM private key; required when tls is true
 *   tls_client_ca       path    ""           PEM CA certificate(s) for client certificates (mTLS); "" = none asked
 *   tls_client_auth     string  optional     optional|required: whether a client certificate must be presented
 *   pkcs11_module       path    /usr/lib/softhsm/libsofthsm2.so
 *   token_label         string  kmsd         label of the token to use
 *   pin_file            path    ""           user PIN file (mode 0600); either this or pin_env
 *   pin_env             string  ""           name of the environment variable with the user PIN
 *   so_pin_file         path    ""           SO PIN file, read only by `kmsd init` and `kmsd master-key rotate`
 *   store_path          path    ./var/kmsd.db
 *   store_uri           string  ""           postgresql:// or postgres:// libpq URI of a shared PostgreSQL
 *                                            store (several nodes, docs/OPERATIONS.md "PostgreSQL store");
 *                                            when set it is used instead of store_path
 *   audit_path          path    ./var/audit.log
 *   node_id             string  kmsd-1       1..64 chars [A-Za-z0-9._-]; unique per node of a cluster
 *   cluster_sync_ms     int     1000         several nodes on PostgreSQL: longest time before a change made on
 *                                            another node is in force here, 50..60000 (docs/SCALE-OUT.md)
 *   workers             int     0            worker threads, 0 = 8 per core (1..256); see kms_config_workers
 *   max_body_bytes      int     65536        1024..16777216
 *   connection_timeout  int     30           idle seconds before a connection is closed, 1..3600
 *   max_connections     int     1024         1..65536
 *   per_ip_connections  int     256          0..65536 (0 = no per-IP limit)
 *   log_level           string  info         debug|info|warn|error
 *   policy_file         path    ""           policy document (docs/POLICY.md); "" = stored or built-in
 *   max_encryptions_per_version int 1073741824  GCM encryptions per key version before it is rotated, 1..2^31-1
 *   scheduler_interval  int     60           seconds between scheduler passes (destructions), 1..86400
 *   phi_retention_floor_days int 2190        shortest retention a PHI tenant may set, 1..36500
 *   audit_checkpoint_records int 1000        records between signed audit checkpoints, 1..1000000
 *   audit_checkpoint_seconds int 60          seconds between signed audit checkpoints, 1..86400
 *   audit_segment_mb    int     256          rotate the audit log at this size in MiB, 0..1048576 (0 = not by size)
 *   audit_segment_seconds int   86400        ...or this long after its segment began, 0..31622400 (0 = not by time)
 *   audit_syslog        string  ""           also forward records (RFC 5424) to udp:HOST:PORT or unix:PATH; "" = no
 *   rate_limit_rps      int     0            calls a second per principal, 0..1000000 (0 = no limit)
 *   rate_limit_burst    int     0            bucket size per principal, 0..10000000 (0 = 2 x rate)
 *   rate_limit_ops      string  ""           per principal and operation: "op=rate[:burst],..."
 *   auth_fail_rps       int     5            failed authentications a second per source address, 0..100000 (0 = no limit)
 *   auth_fail_burst     int     50           ...bucket size, 0..1000000 (0 = 2 x rate)
 *   audit_hmac_cache    int     4096         audit HMACs of context values kept, 0..1000000 (0 = off)
 *   tls_session_tickets bool    true         TLS session resumption by tickets (RFC 5077 / 8446)
 *   mfa_max_failures    int     5            consecutive failed TOTP checks before a principal is locked, 1..100
 *   approval_ttl        int     86400        seconds a quorum request waits for approvals, 60..2592000
 *   break_glass_max_ttl int     3600         longest break-glass grant in seconds, 60..86400
 *   break_glass_reviews int     2            admin reviews a break-glass grant needs, 1..16
 *   metrics_listen      string  ""           ADDRESS:PORT of the tokenless Prometheus listener (GET /metrics
 *                                            only, plain HTTP; docs/API.md "Metrics listener"); "" = off
 *   metrics_port_file   path    ""           if set, the metrics listener's bound port is written there
 *   user                string  ""           account to run as when started as root (kms/proc.h); "" = refuse
 *                                            to run as root; "root" = stay root (logged as a warning)
 */
#ifndef KMS_CONFIG_H
#define KMS_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "kms/base/err.h"

#define KMS_CONFIG_PATH_MAX 1024

struct kms_config {
	char listen_address[64];
	int port;
	char port_file[KMS_CONFIG_PATH_MAX];
	bool tls;
	char tls_cert[KMS_CONFIG_PATH_MAX];
	char tls_key[KMS_CONFIG_PATH_MAX];
	char tls_client_ca[KMS_CONFIG_PATH_MAX];
	char tls_client_auth[16];
	char pkcs11_module[KMS_CONFIG_PATH_MAX];
	char token_label[33]; /* PKCS#11 labels are 32 bytes */
	char pin_file[KMS_CONFIG_PATH_MAX];
	char pin_env[128];
	char so_pin_file[KMS_CONFIG_PATH_MAX];
	char store_path[KMS_CONFIG_PATH_MAX];
	char store_uri[KMS_CONFIG_PATH_MAX]; /* "" or postgres[ql]://...; used instead of store_path */
	char audit_path[KMS_CONFIG_PATH_MAX];
	char node_id[65];
	int cluster_sync_ms;
	int workers;
	int max_body_bytes;
	int connection_timeout;
	int max_connections;
	int per_ip_connections;
	char log_level[8];
	char policy_file[KMS_CONFIG_PATH_MAX];
	int max_encryptions_per_version;
	int scheduler_interval;
	int phi_retention_floor_days;
	int audit_checkpoint_records;
	int audit_checkpoint_seconds;
	int audit_segment_mb;
	int audit_segment_seconds;
	char audit_syslog[256];
	int rate_limit_rps;
	int rate_limit_burst;
	char rate_limit_ops[1024];
	int auth_fail_rps;
	int auth_fail_burst;
	int audit_hmac_cache;
	bool tls_session_tickets;
	int approval_ttl;
	int break_glass_max_ttl;
	int break_glass_reviews;
	char user[33]; /* a login name, 1..32 chars */
	int mfa_max_failures;
	char metrics_listen[72]; /* "" or ADDRESS:PORT */
	char metrics_port_file[KMS_CONFIG_PATH_MAX];
};

/* Fills cfg with every default. */
void kms_config_defaults(struct kms_config *cfg);

/* Defaults, then the file. On error the detail names the file, the line and the
 * problem ("kmsd.conf:7: port: must be between 0 and 65535"); KMS_ERR_CONFIG. */
KMS_WUR kms_err kms_config_load(const char *path, struct kms_config *cfg);

/* Parses a whole file's text (for tests and fuzzing); name is used in messages. */
KMS_WUR kms_err kms_config_parse(const char *text, const char *name, struct kms_config *cfg);

/* The worker thread count to use: cfg->workers, or 8 per online core when 0. A
 * worker blocks while its request's audit record is fsync'd, so group commit can only
 * batch as many records as there are workers; measured with 64 connections on 2 cores:
 * 2 workers 2.2k datakeys/s, 16 workers 5-6k, 64 workers 4.1k (contention). */
unsigned kms_config_workers(const struct kms_config *cfg);

/* The store to open: store_uri when set, else store_path. */
const char *kms_config_store(const struct kms_config *cfg);

/* Cross-option checks after loading (tls needs cert and key, a PIN source is set). */
KMS_WUR kms_err kms_config_validate(const struct kms_config *cfg);

/* Splits "IPv4:PORT" or "[IPv6]:PORT" (the form of metrics_listen) into an address
 * literal (host, cap bytes) and a port 0..65535. 0 when valid, -1 otherwise. */
int kms_config_parse_listen(const char *v, char *host, size_t cap, int *port);

#endif
