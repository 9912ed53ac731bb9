/* kmsctl: one entry point per top-level command. Each takes its own argv (argv[0] is
 * the command's name), prints its own --help and returns the process exit status:
 * 0 ok, 1 the server said no (4xx) or a check found a fault, 2 usage error, 3 the
 * server could not be reached (connection, TLS, timeout), 4 the server failed (5xx). */
#ifndef KMS_CLI_CLI_H
#define KMS_CLI_CLI_H

#include <getopt.h>
#include <jansson.h>
#include <stddef.h>
#include <stdio.h>

#include <curl/curl.h>

#define CLI_OK 0
#define CLI_FAIL 1
#define CLI_USAGE 2
#define CLI_UNREACHABLE 3
#define CLI_SERVER 4
/* kmsctl rewrap --in/--sealed: the run went through, but some items failed (each one
 * reported with its line number or file name). */
#define CLI_PARTIAL 5

struct cli_command {
	const char *name;
	const char *summary;
	int (*run)(int argc, char **argv);
	void (*usage)(FILE *f);
};

/* kmsctl audit ... (cli_audit.c): offline, needs no server and no token. */
int cli_audit(int argc, char **argv);
void cli_audit_usage(FILE *f);

/* ---- groups and leaves (cli_cmd.c) ----------------------------------------------- */

struct cli_group;

/* A leaf command: `kmsctl GROUP NAME SYNOPSIS`. run gets argv[0] = NAME and parses
 * its own options (getopt_long, reset by the dispatcher); --help is handled before. */
struct cli_leaf {
	const char *name;
	const char *summary;  /* one line, in the group's list */
	const char *synopsis; /* arguments and options after the command's name */
	const char *help;     /* description, options and examples */
	int (*run)(int argc, char **argv);
	const struct cli_group *sub; /* a nested group instead of run (key version) */
};

struct cli_group {
	const char *path; /* "key", "key version" */
	const char *help; /* what the group is for, and examples */
	const struct cli_leaf *leaves;
	size_t n;
};

/* The full name of the running command, "key version disable", for messages. */
extern const char *cli_cmd;

/* Dispatches argv (argv[0] = the group's last word) to a leaf. */
int cli_group_run(const struct cli_group *g, int argc, char **argv);
void cli_group_usage(const struct cli_group *g, FILE *f);

/* A top-level leaf (datakey, encrypt, status ...): --help, then run. */
int cli_leaf_run(const struct cli_leaf *l, const char *path, int argc, char **argv);
void cli_leaf_usage(const struct cli_leaf *l, const char *path, FILE *f);

/* Prints "kmsctl CMD: message" and a pointer to --help; returns CLI_USAGE. */
int cli_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* getopt_long with messages of our own: returns the option, -1 at the end, or -2
 * after printing a usage error (the caller returns CLI_USAGE). */
int cli_getopt(int argc, char **argv, const struct option *opts);

/* Checks that argc - optind positional arguments lie in [min, max]. */
int cli_positionals(int argc, char **argv, int min, int max);

/* Parsers for option values; each prints a usage error and returns -1 on bad input. */
int cli_parse_uint(const char *opt, const char *s, long long max, long long *out);
int cli_parse_bool(const char *opt, const char *s, int *out);
int cli_parse_duration(const char *opt, const char *s, long long *out);

/* ---- the HTTP client (cli_http.c) ------------------------------------------------ */

/* Global options from the command line (main); NULL when not given. */
struct cli_opts {
	const char *addr;
	const char *ca_cert;
	const char *token_file;
	const char *config;
	const char *format;
	const char *timeout;
	int mfa_prompt; /* --mfa: ask for a TOTP code on the terminal before the first call */
	const char *client_cert; /* PEM client certificate (mTLS) */
	const char *client_key;	 /* its PEM private key (mode 0600) */
};
extern struct cli_opts cli_opts;

/* Set once stdin has been read for the token (--token-file -): data must come from
 * elsewhere. */
extern int cli_stdin_taken;

struct cli_client {
	char *addr;    /* https://host:port, no trailing slash */
	char *ca_cert; /* PEM file, or NULL for the system store */
	char *token;   /* secret memory, or NULL */
	size_t token_len;
	long timeout;
	int json; /* --format json */
	/* X-Vault-MFA value ("totp:123456" or "recovery:..."), secret memory, or NULL:
	 * from KMS_MFA, --mfa's prompt, or a prompt after a 401 "MFA required" */
	char *mfa;
	size_t mfa_len;
	char *client_cert, *client_key; /* PEM files for mTLS, or NULL */
	/* A POST without a JSON body sends these bytes as they are (the caller owns them;
	 * NULL = none): kmsctl policy write, so that the server's line and column of an
	 * error point into the file the admin wrote. */
	const char *raw_body;
	size_t raw_len;
};

/* Resolves address, CA, client certificate, format, timeout and (when need_token) the
 * token from flags, environment and config file. With a client certificate and no
 * token configured, no token is asked for: the certificate authenticates. Returns CLI_OK or an exit status after a message. */
int cli_connect(struct cli_client *c, int need_token);
/* Wipes the token and frees everything. */
void cli_disconnect(struct cli_client *c);
/* The output format alone (flag, then config file), for commands that need no server:
 * *json = 1 for json. Returns CLI_OK or CLI_USAGE after a message. */
int cli_output_json(int *json);

/* One HTTPS request's curl handle with kmsctl's settings (https only, peer and host
 * verified, TLS >= 1.2, the CA and client certificate, timeouts, user agent) and its
 * headers: accept, JSON content type, and the token and MFA code in wiped memory.
 * For calls that stream their answer (backup); cli_call uses it too. */
struct cli_req {
	CURL *h;
	struct curl_slist *hdrs, *head, tok_node, mfa_node;
	char *tok_hdr, *mfa_hdr;
	char errbuf[CURL_ERROR_SIZE];
};
/* CLI_OK, or CLI_SERVER after a message (out of memory; r is closed then). */
int cli_req_open(struct cli_client *c, struct cli_req *r, const char *url, const char *accept);
/* Wipes the secret headers and frees everything; accepts a closed or zeroed r. */
void cli_req_close(struct cli_req *r);
/* Prints why a transfer failed ("cannot reach", "TLS with ... failed", "no answer
 * within") and returns CLI_UNREACHABLE. */
int cli_req_failed(const struct cli_client *c, const struct cli_req *r, CURLcode cc);

/* "/v1/<seg>/<seg>..." with each segment percent-escaped; the list ends with NULL.
 * Returns malloc'd memory or NULL. */
char *cli_path(const char *first, ...) __attribute__((sentinel));

/* One request. method is GET, POST or LIST (sent as GET ?list=true); body may be NULL.
 * *out receives the answer's JSON object whenever there is one (also on errors; the
 * caller frees it). On a non-2xx answer prints "kmsctl: <status> <message>" and returns
 * CLI_FAIL (4xx) or CLI_SERVER (5xx); CLI_UNREACHABLE when no answer came. */
int cli_call(struct cli_client *c, const char *method, const char *path, const json_t *body,
	     json_t **out);
/* Prints "kmsctl: <status> <message>" from an answer's errors list. */
void cli_print_http_error(long status, const json_t *answer);
/* As cli_call, also returning the HTTP status (0 when no answer came). */
int cli_call_status(struct cli_client *c, const char *method, const char *path,
		    const json_t *body, json_t **out, long *status);

/* Asks on the terminal (echo off) for a TOTP code; "totp:" is added unless the answer
 * starts with "totp:" or "recovery:". Returns CLI_OK, or CLI_USAGE after a message (no
 * terminal, empty or malformed answer). Replaces c->mfa. */
int cli_mfa_prompt(struct cli_client *c);

/* Reads a whole file ("-" = stdin) into malloc'd memory that the caller wipes and
 * frees; refuses more than max bytes. Returns CLI_OK or CLI_USAGE after a message. */
int cli_read_input(const char *path, size_t max, unsigned char **out, size_t *len);

/* ---- mfa (cli_mfa.c) ------------------------------------------------------------ */
int cli_mfa(int argc, char **argv);
void cli_mfa_usage(FILE *f);

/* ---- output (cli_out.c) ---------------------------------------------------------- */

/* Prints v as indented JSON and a newline. */
void cli_print_json(const json_t *v);
/* Prints an object's members as aligned "name  value" lines; members named in skip
 * (NULL-terminated, may be NULL) are left out. */
void cli_print_kv(const json_t *obj, const char *const *skip);
/* As cli_print_kv, the members named in first (NULL-terminated) coming first. */
void cli_print_kv_ordered(const json_t *obj, const char *const *first, const char *const *skip);
/* Prints data.keys one per line. */
void cli_print_list(const json_t *data);
/* Prints data in the client's format: JSON, or table() (cli_print_kv when NULL). */
void cli_print(const struct cli_client *c, const json_t *data, void (*table)(const json_t *));
/* Writes one value as a table cell (times named created/time as UTC dates). */
void cli_put_value(const char *name, const json_t *v);
/* Connects with a token, makes one call, prints the answer's data with table (or
 * cli_print_kv); takes ownership of path and body. Returns the exit status. */
int cli_simple_call(const char *method, char *path, json_t *body, void (*table)(const json_t *));
/* The answer's "data" member (never NULL: an empty object stands in). */
const json_t *cli_data(const json_t *answer);

/* ---- commands -------------------------------------------------------------------- */

int cli_status(int argc, char **argv);
void cli_status_usage(FILE *f);
int cli_tenant(int argc, char **argv);
void cli_tenant_usage(FILE *f);
int cli_principal(int argc, char **argv);
void cli_principal_usage(FILE *f);
/* principal cert-add / cert-list / cert-revoke (cli_certs.c) */
int cli_principal_cert_add(int argc, char **argv);
int cli_principal_cert_list(int argc, char **argv);
int cli_principal_cert_revoke(int argc, char **argv);
int cli_token(int argc, char **argv);
void cli_token_usage(FILE *f);
int cli_key(int argc, char **argv);
void cli_key_usage(FILE *f);
int cli_datakey(int argc, char **argv);
void cli_datakey_usage(FILE *f);
int cli_encrypt(int argc, char **argv);
void cli_encrypt_usage(FILE *f);
int cli_decrypt(int argc, char **argv);
void cli_decrypt_usage(FILE *f);
int cli_rewrap(int argc, char **argv);
void cli_rewrap_usage(FILE *f);
/* kmsctl rewrap --tenant T --key K (--in FILE | --sealed FILE...): bulk rewrap
 * (cli_rewrap.c). is_bulk says whether argv asks for it (--tenant, --in, --sealed or
 * --state before any "--"). */
int cli_rewrap_is_bulk(int argc, char **argv);
int cli_rewrap_bulk(int argc, char **argv);
/* seal / open (cli_seal.c): envelope encryption of files. */
int cli_seal(int argc, char **argv);
void cli_seal_usage(FILE *f);
int cli_open(int argc, char **argv);
void cli_open_usage(FILE *f);

/* approval / break-glass (cli_approval.c): quorum requests and emergency grants. */
int cli_approval(int argc, char **argv);
void cli_approval_usage(FILE *f);
int cli_break_glass(int argc, char **argv);
void cli_break_glass_usage(FILE *f);
/* report compliance (cli_report.c). */
int cli_report(int argc, char **argv);
void cli_report_usage(FILE *f);
/* backup (cli_backup.c): an encrypted archive from POST /v1/sys/backup. */
int cli_backup(int argc, char **argv);
void cli_backup_usage(FILE *f);

/* policy read / write / default (cli_policy.c). */
int cli_policy(int argc, char **argv);
void cli_policy_usage(FILE *f);
/* The global options' help, shared by every level's --help. */
void cli_global_help(FILE *f);

#endif
