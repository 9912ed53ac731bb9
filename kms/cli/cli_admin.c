/* kmsctl status, tenant, principal, token: the /v1/sys and /v1/auth calls. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms/cli/cli.h"

static const struct option no_opts[] = {{NULL, 0, NULL, 0}};

/* Parses a leaf that takes no options and exactly n positionals. */
static int plain_args(int argc, char **argv, int n)
{
	int c;

	while ((c = cli_getopt(argc, argv, no_opts)) != -1)
		return CLI_USAGE; /* every option is unknown here */
	return cli_positionals(argc, argv, n, n);
}

/* ---- status ---------------------------------------------------------------------- */

static void health_table(const json_t *h)
{
	static const char *const skip[] = {"checks", NULL};
	const json_t *checks = json_object_get(h, "checks"), *v;
	const char *name;

	cli_print_kv(h, skip);
	json_object_foreach((json_t *)checks, name, v) {
		printf("check %-10s ", name);
		cli_put_value(NULL, v);
		fputc('\n', stdout);
	}
}

static int status_run(int argc, char **argv)
{
	struct cli_client c;
	json_t *ans = NULL;
	long status;
	char *path;
	int rc;

	if ((rc = plain_args(argc, argv, 0)) != CLI_OK)
		return rc;
	rc = cli_connect(&c, 0);
	if (rc != CLI_OK)
		return rc;
	path = cli_path("sys", "health", NULL);
	if (path == NULL) {
		rc = CLI_SERVER;
		goto out;
	}
	rc = cli_call_status(&c, "GET", path, NULL, &ans, &status);
	if (status == 200 || (status == 503 && ans != NULL && json_object_get(ans, "checks") != NULL)) {
		/* The health answer is the top-level object, as Vault's. */
		cli_print(&c, ans, health_table);
		if (status == 503) {
			const json_t *checks = json_object_get(ans, "checks"), *v;
			const char *name;
			int n = 0;

			fprintf(stderr, "kmsctl: 503 the server is unhealthy");
			json_object_foreach((json_t *)checks, name, v) {
				const char *s = json_string_value(v);

				if (s != NULL && strcmp(s, "failed") == 0)
					fprintf(stderr, "%s%s", n++ ? ", " : ": failed check ", name);
			}
			fputc('\n', stderr);
		}
	} else if (status != 0) {
		cli_print_http_error(status, ans);
	}
out:
	free(path);
	json_decref(ans);
	cli_disconnect(&c);
	return rc;
}

static const struct cli_leaf status_leaf = {
	"status", "the server's health (needs no token)", "",
	"Asks GET /v1/sys/health: whether the server runs, and each of its checks: the\n"
	"audit log accepts records, the token answers with the user logged in, the store\n"
	"takes a write, the clock is sane. Exit status 0 when healthy, 4 when the server\n"
	"answers 503 (a check failed: named on stderr), 3 when it cannot be reached.\n"
	"\n"
	"examples:\n"
	"  kmsctl status --addr https://kms.example:8200 --ca-cert ca.pem\n"
	"  kmsctl status --format json\n",
	status_run, NULL,
};

int cli_status(int argc, char **argv)
{
	return cli_leaf_run(&status_leaf, "status", argc, argv);
}

void cli_status_usage(FILE *f)
{
	cli_leaf_usage(&status_leaf, "status", f);
}

/* ---- tenant ---------------------------------------------------------------------- */

static int tenant_create(int argc, char **argv)
{
	static const struct option opts[] = {{"retention", required_argument, NULL, 'r'},
					     {NULL, 0, NULL, 0}};
	const char *retention = NULL;
	json_t *body;
	int c, rc;

	while ((c = cli_getopt(argc, argv, opts)) != -1) {
		if (c == 'r')
			retention = optarg;
		else
			return CLI_USAGE;
	}
	if ((rc = cli_positionals(argc, argv, 1, 1)) != CLI_OK)
		return rc;
	body = json_object();
	if (retention != NULL)
		json_object_set_new(body, "retention", json_string(retention));
	return cli_simple_call("POST", cli_path("sys", "tenants", argv[optind], NULL), body, NULL);
}

static int tenant_read(int argc, char **argv)
{
	int rc = plain_args(argc, argv, 1);

	if (rc != CLI_OK)
		return rc;
	return cli_simple_call("GET", cli_path("sys", "tenants", argv[optind], NULL), NULL, NULL);
}

static int tenant_list(int argc, char **argv)
{
	int rc = plain_args(argc, argv, 0);

	if (rc != CLI_OK)
		return rc;
	return cli_simple_call("LIST", cli_path("sys", "tenants", NULL), NULL, cli_print_list);
}

static int tenant_config(int argc, char **argv)
{
	static const struct option opts[] = {
		{"retention-days", required_argument, NULL, 'r'},
		{"min-destroy-wait-days", required_argument, NULL, 'w'},
		{"legal-hold", required_argument, NULL, 'l'},
		{NULL, 0, NULL, 0},
	};
	json_t *body = json_object();
	long long v;
	int c, b, rc = CLI_USAGE;

	while ((c = cli_getopt(argc, argv, opts)) != -1) {
		switch (c) {
		case 'r':
			if (cli_parse_uint("--retention-days", optarg, 1000000, &v) != 0)
				goto fail;
			json_object_set_new(body, "retention_days", json_integer(v));
			break;
		case 'w':
			if (cli_parse_uint("--min-destroy-wait-days", optarg, 1000000, &v) != 0)
				goto fail;
			json_object_set_new(body, "min_destroy_wait_days", json_integer(v));
			break;
		case 'l':
			if (cli_parse_bool("--legal-hold", optarg, &b) != 0)
				goto fail;
			json_object_set_new(body, "legal_hold", json_boolean(b));
			break;
		default:
			goto fail;
		}
	}
	if ((rc = cli_positionals(argc, argv, 1, 1)) != CLI_OK)
		goto fail;
	return cli_simple_call("POST", cli_path("sys", "tenants", argv[optind], "config", NULL), body,
			       NULL);
fail:
	json_decref(body);
	return rc;
}

static const struct cli_leaf tenant_leaves[] = {
	{"create", "create a tenant (admin)", "TENANT [--retention phi|non-phi]",
	 "Creates TENANT (POST /v1/sys/tenants/TENANT). The retention class is fixed for\n"
	 "life: phi (the default) keeps superseded key versions for the retention period;\n"
	 "non-phi allows crypto-shredding once the destroy wait has passed.\n"
	 "\n"
	 "  --retention phi|non-phi   retention class (default phi)\n"
	 "\n"
	 "examples:\n"
	 "  kmsctl tenant create cardiology\n"
	 "  kmsctl tenant create research --retention non-phi\n",
	 tenant_create, NULL},
	{"read", "show a tenant's settings (admin)", "TENANT",
	 "Shows TENANT: retention class, retention_days, min_destroy_wait_days, legal_hold.\n"
	 "\n"
	 "example:\n"
	 "  kmsctl tenant read cardiology --format json\n",
	 tenant_read, NULL},
	{"list", "list tenants (admin)", "",
	 "Lists every tenant, one name a line.\n"
	 "\n"
	 "example:\n"
	 "  kmsctl tenant list\n",
	 tenant_list, NULL},
	{"config", "change a tenant's retention settings or legal hold (admin)",
	 "TENANT [--retention-days N] [--min-destroy-wait-days N] [--legal-hold true|false]",
	 "Changes TENANT's settings (POST /v1/sys/tenants/TENANT/config); without options it\n"
	 "shows them. A PHI tenant's retention cannot go below the server's floor; a legal\n"
	 "hold blocks every key destruction in the tenant.\n"
	 "\n"
	 "  --retention-days N          keep superseded versions N days (PHI tenants)\n"
	 "  --min-destroy-wait-days N   shortest schedule-destroy wait (7 or more)\n"
	 "  --legal-hold true|false     set or lift the tenant's legal hold\n"
	 "\n"
	 "examples:\n"
	 "  kmsctl tenant config cardiology --legal-hold true\n"
	 "  kmsctl tenant config research --min-destroy-wait-days 14\n",
	 tenant_config, NULL},
};

static const struct cli_group tenant_group = {
	"tenant",
	"Tenants (a tenant plays the part of a Vault mount: /v1/TENANT/...). Admin token.\n"
	"\n"
	"examples:\n"
	"  kmsctl tenant create cardiology\n"
	"  kmsctl tenant list --format json\n",
	tenant_leaves, sizeof(tenant_leaves) / sizeof(tenant_leaves[0]),
};

int cli_tenant(int argc, char **argv)
{
	return cli_group_run(&tenant_group, argc, argv);
}

void cli_tenant_usage(FILE *f)
{
	cli_group_usage(&tenant_group, f);
}

/* ---- principal ------------------------------------------------------------------- */

static int principal_create(int argc, char **argv)
{
	static const struct option opts[] = {{"role", required_argument, NULL, 'r'},
					     {"tenant", required_argument, NULL, 't'},
					     {NULL, 0, NULL, 0}};
	json_t *body = json_object(), *tenants = json_array();
	int c, rc = CLI_USAGE;

	json_object_set_new(body, "tenants", tenants);
	while ((c = cli_getopt(argc, argv, opts)) != -1) {
		switch (c) {
		case 'r':
			json_object_set_new(body, "role", json_string(optarg));
			break;
		case 't':
			json_array_append_new(tenants, json_string(optarg));
			break;
		default:
			goto fail;
		}
	}
	if ((rc = cli_positionals(argc, argv, 1, 1)) != CLI_OK)
		goto fail;
	if (json_object_get(body, "role") == NULL) {
		rc = cli_usage_error("--role admin|service|auditor is required");
		goto fail;
	}
	return cli_simple_call("POST", cli_path("sys", "principals", argv[optind], NULL), body, NULL);
fail:
	json_decref(body);
	return rc;
}

static int principal_read(int argc, char **argv)
{
	int rc = plain_args(argc, argv, 1);

	if (rc != CLI_OK)
		return rc;
	return cli_simple_call("GET", cli_path("sys", "principals", argv[optind], NULL), NULL, NULL);
}

static int principal_list(int argc, char **argv)
{
	int rc = plain_args(argc, argv, 0);

	if (rc != CLI_OK)
		return rc;
	return cli_simple_call("LIST", cli_path("sys", "principals", NULL), NULL, cli_print_list);
}

static const struct cli_leaf principal_leaves[] = {
	{"create", "create a principal (admin)", "NAME --role admin|service|auditor [--tenant TENANT]...",
	 "Creates the principal NAME. A service principal uses the data plane (datakey,\n"
	 "encrypt, decrypt, rewrap) of the tenants named with --tenant, which must exist;\n"
	 "an admin manages tenants, keys, principals and tokens and never gets key material;\n"
	 "an auditor reads key and tenant metadata, histories, erasure receipts, metrics,\n"
	 "the policy and audit hashes on every tenant, and changes nothing.\n"
	 "Give it a token with `kmsctl token create NAME`.\n"
	 "\n"
	 "  --role admin|service|auditor   the principal's role (required)\n"
	 "  --tenant TENANT        a tenant it may use (repeat for more)\n"
	 "\n"
	 "examples:\n"
	 "  kmsctl principal create ehr-backend --role service --tenant cardiology\n"
	 "  kmsctl principal create ops-alice --role admin\n"
	 "  kmsctl principal create audit-carol --role auditor\n",
	 principal_create, NULL},
	{"read", "show a principal (admin)", "NAME",
	 "Shows the principal NAME: role, tenants, creation time.\n"
	 "\n"
	 "example:\n"
	 "  kmsctl principal read ehr-backend\n",
	 principal_read, NULL},
	{"list", "list principals (admin)", "",
	 "Lists every principal, one name a line.\n"
	 "\n"
	 "example:\n"
	 "  kmsctl principal list\n",
	 principal_list, NULL},
	{"cert-add", "map a client certificate to a principal (admin)",
	 "NAME (--cert FILE | --spki HEX | --subject DN)",
	 "Maps a client certificate (mTLS, kmsd's tls_client_ca) to the principal NAME: a\n"
	 "certificate that passes the TLS handshake and matches then authenticates as NAME,\n"
	 "without a token. A value maps to one principal at most.\n"
	 "\n"
	 "  --cert FILE      a PEM certificate: maps its SPKI fingerprint (survives renewal\n"
	 "                   with the same key)\n"
	 "  --spki HEX       the SHA-256 of the SubjectPublicKeyInfo, 64 hex digits\n"
	 "  --subject DN     the subject DN exactly as RFC 4514 writes it, e.g.\n"
	 "                   \"CN=ehr-backend,O=St. Example\" (any certificate of the CA\n"
	 "                   with that subject; openssl x509 -noout -subject -nameopt RFC2253)\n"
	 "\n"
	 "examples:\n"
	 "  kmsctl principal cert-add ehr-backend --cert ehr-backend.pem\n"
	 "  kmsctl principal cert-add lab-pipeline --subject \"CN=lab-pipeline,O=St. Example\"\n",
	 cli_principal_cert_add, NULL},
	{"cert-list", "list a principal's client certificates (admin)", "NAME",
	 "Lists the client certificate mappings of NAME: kind (spki or subject) and value.\n"
	 "\n"
	 "example:\n"
	 "  kmsctl principal cert-list ehr-backend\n",
	 cli_principal_cert_list, NULL},
	{"cert-revoke", "remove a client certificate mapping (admin)",
	 "NAME (--cert FILE | --spki HEX | --subject DN)",
	 "Removes a mapping made by cert-add: the certificate no longer authenticates, from\n"
	 "the next request on (kept-alive connections included).\n"
	 "\n"
	 "example:\n"
	 "  kmsctl principal cert-revoke ehr-backend --cert ehr-backend.pem\n",
	 cli_principal_cert_revoke, NULL},
};

static const struct cli_group principal_group = {
	"principal",
	"Principals: who may call kmsd (role admin, service or auditor). Admin token.\n"
	"\n"
	"examples:\n"
	"  kmsctl principal create ehr-backend --role service --tenant cardiology\n"
	"  kmsctl token create ehr-backend --ttl 30d\n",
	principal_leaves, sizeof(principal_leaves) / sizeof(principal_leaves[0]),
};

int cli_principal(int argc, char **argv)
{
	return cli_group_run(&principal_group, argc, argv);
}

void cli_principal_usage(FILE *f)
{
	cli_group_usage(&principal_group, f);
}

/* ---- token ----------------------------------------------------------------------- */

/* The one place a token is printed: the answer to token create. */
static void token_created_table(const json_t *ans)
{
	const json_t *auth = json_object_get(ans, "auth"), *data = cli_data(ans), *v;
	const char *name;

	printf("%-10s ", "token");
	cli_put_value(NULL, json_object_get(auth, "client_token"));
	printf("\n%-10s ", "accessor");
	cli_put_value(NULL, json_object_get(data, "accessor"));
	fputc('\n', stdout);
	json_object_foreach((json_t *)data, name, v) {
		if (strcmp(name, "accessor") == 0)
			continue;
		printf("%-10s ", name);
		cli_put_value(name, v);
		fputc('\n', stdout);
	}
}

static int token_create(int argc, char **argv)
{
	static const struct option opts[] = {{"ttl", required_argument, NULL, 't'},
					     {NULL, 0, NULL, 0}};
	struct cli_client cl;
	json_t *body = json_object(), *ans = NULL;
	char *path = NULL;
	long long ttl;
	int c, rc = CLI_USAGE;

	while ((c = cli_getopt(argc, argv, opts)) != -1) {
		if (c != 't' || cli_parse_duration("--ttl", optarg, &ttl) != 0)
			goto out_nc;
		json_object_set_new(body, "ttl", json_integer(ttl));
	}
	if ((rc = cli_positionals(argc, argv, 1, 1)) != CLI_OK)
		goto out_nc;
	rc = cli_connect(&cl, 1);
	if (rc != CLI_OK)
		goto out_nc;
	path = cli_path("sys", "principals", argv[optind], "tokens", NULL);
	if (path == NULL) {
		rc = CLI_SERVER;
		goto out;
	}
	rc = cli_call(&cl, "POST", path, body, &ans);
	if (rc == CLI_OK) {
		if (json_object_get(json_object_get(ans, "auth"), "client_token") == NULL) {
			fprintf(stderr, "kmsctl: the answer carries no token\n");
			rc = CLI_SERVER;
			goto out;
		}
		/* json: the whole answer (the token is under auth); table: token and accessor */
		cli_print(&cl, ans, token_created_table);
		fprintf(stderr, "kmsctl: the token is shown only this once: store it now\n");
	}
out:
	cli_disconnect(&cl);
out_nc:
	free(path);
	json_decref(ans);
	json_decref(body);
	return rc;
}

static int token_revoke(int argc, char **argv)
{
	int rc = plain_args(argc, argv, 1);

	if (rc != CLI_OK)
		return rc;
	return cli_simple_call("POST", cli_path("sys", "tokens", "revoke", NULL),
			       json_pack("{s:s}", "accessor", argv[optind]), NULL);
}

static int token_lookup(int argc, char **argv)
{
	int c, rc;

	while ((c = cli_getopt(argc, argv, no_opts)) != -1)
		return CLI_USAGE;
	rc = cli_positionals(argc, argv, 0, 1);
	if (rc != CLI_OK)
		return rc;
	if (optind < argc)
		return cli_simple_call("POST", cli_path("auth", "token", "lookup-accessor", NULL),
				       json_pack("{s:s}", "accessor", argv[optind]), NULL);
	return cli_simple_call("GET", cli_path("auth", "token", "lookup-self", NULL), NULL, NULL);
}

static const struct cli_leaf token_leaves[] = {
	{"create", "issue a token for a principal (admin); shown once", "PRINCIPAL [--ttl DURATION]",
	 "Issues a new API token for PRINCIPAL. The token is printed this once and never\n"
	 "again (the server keeps only its hash): table format prints `token` and\n"
	 "`accessor` lines, json the server's whole answer (the token under auth).\n"
	 "The accessor names the token later (revoke) without being a secret.\n"
	 "\n"
	 "  --ttl DURATION   lifetime: seconds, or a number with s, m, h or d (default:\n"
	 "                   no expiry)\n"
	 "\n"
	 "examples:\n"
	 "  kmsctl token create ehr-backend --ttl 30d\n"
	 "  kmsctl token create ehr-backend --format json > ehr.json   # keep it mode 600\n"
	 "  (umask 077; kmsctl token create ehr-backend | awk '$1==\"token\"{print $2}' > ehr.token)\n",
	 token_create, NULL},
	{"revoke", "revoke a token by its accessor (admin)", "ACCESSOR",
	 "Revokes the token whose accessor is ACCESSOR; it is refused from then on.\n"
	 "\n"
	 "example:\n"
	 "  kmsctl token revoke 4b7c0e1d2a9f...\n",
	 token_revoke, NULL},
	{"lookup", "show a token: principal, role, expiry, last use", "[ACCESSOR]",
	 "Without ACCESSOR, shows the token kmsctl is using (GET\n"
	 "/v1/auth/token/lookup-self); with one, any token (POST\n"
	 "/v1/auth/token/lookup-accessor, admin): principal, role, creation, expiry,\n"
	 "last use (to the minute) and whether it is revoked. Never the token itself.\n"
	 "\n"
	 "examples:\n"
	 "  KMS_TOKEN=$(cat service.token) kmsctl token lookup\n"
	 "  kmsctl token lookup 4b7c0e1d2a9f...\n",
	 token_lookup, NULL},
};

static const struct cli_group token_group = {
	"token",
	"API tokens. A token is shown once, by `token create`; afterwards its accessor\n"
	"names it.\n"
	"\n"
	"examples:\n"
	"  kmsctl token create ehr-backend --ttl 30d\n"
	"  kmsctl token lookup\n",
	token_leaves, sizeof(token_leaves) / sizeof(token_leaves[0]),
};

int cli_token(int argc, char **argv)
{
	return cli_group_run(&token_group, argc, argv);
}

void cli_token_usage(FILE *f)
{
	cli_group_usage(&token_group, f);
}
