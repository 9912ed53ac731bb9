/* kmsctl policy: read the document in force (GET /v1/sys/policy), install a new one
 * (POST /v1/sys/policy), check a document offline, print the built-in one
 * (docs/POLICY.md, docs/KMSCTL.md). A document is sent exactly as the file holds it, so
 * that the server's "line L column C at PATH: reason" points into that file. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms/base/secret.h"
#include "kms/cli/cli.h"
#include "policy/policy_doc.h"

static const struct option no_opts[] = {{NULL, 0, NULL, 0}};

static int plain_args(int argc, char **argv, int min, int max)
{
	while (cli_getopt(argc, argv, no_opts) != -1)
		return CLI_USAGE;
	return cli_positionals(argc, argv, min, max);
}

/* A JSON array of strings as "a, b, c" (or "-" when absent). */
static void put_list(const char *label, const json_t *a)
{
	size_t i;
	const json_t *v;

	if (a == NULL)
		return;
	printf("    %-11s", label);
	if (!json_is_array(a)) {
		printf("%s\n", json_is_true(a) ? "true" : json_string_value(a) ? json_string_value(a) : "(set)");
		return;
	}
	json_array_foreach(a, i, v)
		printf("%s%s", i ? ", " : "", json_string_value(v) ? json_string_value(v) : "?");
	printf("\n");
}

static void read_table(const json_t *d)
{
	const json_t *doc = json_object_get(d, "document"), *rules = json_object_get(doc, "rules"), *r;
	const char *desc = json_string_value(json_object_get(doc, "description"));
	size_t i;

	printf("version      %lld\n", (long long)json_integer_value(json_object_get(d, "version")));
	if (desc != NULL)
		printf("description  %s\n", desc);
	printf("rules        %zu\n", json_array_size(rules));
	json_array_foreach(rules, i, r) {
		const char *name = json_string_value(json_object_get(r, "name"));
		const char *effect = json_string_value(json_object_get(r, "effect"));
		const char *k;
		json_t *v;

		printf("  [%zu] %s %s\n", i, effect ? effect : "?", name ? name : "(unnamed)");
		put_list("principals", json_object_get(r, "principals"));
		put_list("operations", json_object_get(r, "operations"));
		put_list("tenants", json_object_get(r, "tenants"));
		put_list("keys", json_object_get(r, "keys"));
		/* conditions and the rest, as compact JSON */
		json_object_foreach((json_t *)r, k, v) {
			char *s;

			if (strcmp(k, "name") == 0 || strcmp(k, "effect") == 0 || strcmp(k, "principals") == 0 ||
			    strcmp(k, "operations") == 0 || strcmp(k, "tenants") == 0 || strcmp(k, "keys") == 0 ||
			    strcmp(k, "description") == 0)
				continue;
			s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
			printf("    %-11s%s\n", k, s ? s : "?");
			free(s);
		}
	}
}

static int policy_read(int argc, char **argv)
{
	int rc;

	if ((rc = plain_args(argc, argv, 0, 0)) != CLI_OK)
		return rc;
	return cli_simple_call("GET", cli_path("sys", "policy", NULL), NULL, read_table);
}

/* The document of FILE (or stdin), refused here when it is empty or too large; the
 * server checks everything else. */
static int read_document(const char *path, unsigned char **text, size_t *len)
{
	int rc = cli_read_input(path, POLICY_DOC_MAX_BYTES, text, len);

	if (rc != CLI_OK)
		return rc;
	if (*len == 0) {
		free(*text);
		*text = NULL;
		return cli_usage_error("%s: the policy document is empty", path);
	}
	return CLI_OK;
}

static void write_table(const json_t *d)
{
	printf("installed policy version %lld (was %lld)\n",
	       (long long)json_integer_value(json_object_get(d, "version")),
	       (long long)json_integer_value(json_object_get(d, "previous_version")));
}

static int policy_write(int argc, char **argv)
{
	struct cli_client c;
	unsigned char *text = NULL;
	size_t len = 0;
	json_t *ans = NULL;
	char *path = NULL;
	int rc;

	if ((rc = plain_args(argc, argv, 1, 1)) != CLI_OK)
		return rc;
	if ((rc = read_document(argv[optind], &text, &len)) != CLI_OK)
		return rc;
	path = cli_path("sys", "policy", NULL);
	if (path == NULL) {
		rc = CLI_SERVER;
		goto out;
	}
	rc = cli_connect(&c, 1);
	if (rc == CLI_OK) {
		c.raw_body = (const char *)text;
		c.raw_len = len;
		rc = cli_call(&c, "POST", path, NULL, &ans);
		if (rc == CLI_OK)
			cli_print(&c, cli_data(ans), write_table);
		cli_disconnect(&c);
	}
out:
	json_decref(ans);
	free(path);
	free(text);
	return rc;
}

/* Offline: compiles the document with kmsd's own parser. */
static int policy_check(int argc, char **argv)
{
	struct policy_doc_error e = {0};
	struct policy_doc *doc = NULL;
	unsigned char *text = NULL;
	size_t len = 0;
	kms_err err;
	int rc;

	if ((rc = plain_args(argc, argv, 1, 1)) != CLI_OK)
		return rc;
	if ((rc = read_document(argv[optind], &text, &len)) != CLI_OK)
		return rc;
	err = policy_doc_parse((const char *)text, len, &doc, &e);
	free(text);
	if (err == KMS_ERR_NOMEM) {
		fprintf(stderr, "kmsctl: out of memory\n");
		return CLI_SERVER;
	}
	if (err != KMS_OK) {
		if (e.line > 0)
			fprintf(stderr, "kmsctl: %s: policy line %u column %u at %s: %s\n", argv[optind], e.line,
				e.column, e.path, e.reason);
		else
			fprintf(stderr, "kmsctl: %s: policy at %s: %s\n", argv[optind], e.path, e.reason);
		return CLI_FAIL;
	}
	printf("%s: policy version %lld, %zu rules: valid\n", argv[optind], (long long)policy_doc_version(doc),
	       policy_doc_rule_count(doc));
	policy_doc_free(doc);
	return CLI_OK;
}

static int policy_default(int argc, char **argv)
{
	int rc;

	if ((rc = plain_args(argc, argv, 0, 0)) != CLI_OK)
		return rc;
	fputs(policy_doc_default_json, stdout);
	return fflush(stdout) == 0 ? CLI_OK : CLI_FAIL;
}

static const struct cli_leaf policy_leaves[] = {
	{"read", "the document in force and its version (admin, auditor)", "",
	 "GET /v1/sys/policy. The table shows the version and each rule (index, effect,\n"
	 "name, principals, operations, tenants, keys, conditions); --format json prints\n"
	 "{\"version\",\"document\"} as the server sent it, so that\n"
	 "`kmsctl --format json policy read | jq .document` is a document to edit.\n"
	 "\n"
	 "examples:\n"
	 "  kmsctl policy read\n"
	 "  kmsctl --format json policy read | jq .document > policy.json\n",
	 policy_read, NULL},
	{"write", "install a new document (admin, with a TOTP code)", "FILE|-",
	 "POST /v1/sys/policy with the file's bytes as they are. Its \"version\" must be\n"
	 "greater than the one in force (409 otherwise). A document that does not compile\n"
	 "is refused with 400 and the place of the fault, printed as the server gives it:\n"
	 "  kmsctl: 400 policy line 7 column 14 at rules[2].effect: ...\n"
	 "Exit status 0 installed, 1 refused (400, 401 MFA required, 403, 409), 2 usage\n"
	 "(no such file, empty, larger than 1 MiB), 3 unreachable, 4 server failure.\n"
	 "\n"
	 "examples:\n"
	 "  kmsctl policy check policy.json && KMS_MFA=123456 kmsctl policy write policy.json\n"
	 "  kmsctl --mfa policy write - < policy.json\n",
	 policy_write, NULL},
	{"check", "compile a document offline, as kmsd would (no server)", "FILE|-",
	 "Runs kmsd's own policy compiler on the file: exit 0 and the version and rule\n"
	 "count when valid, exit 1 and \"line L column C at PATH: reason\" when not. It\n"
	 "does not compare the version with the server's (write does).\n"
	 "\n"
	 "example:\n"
	 "  kmsctl policy check policy.json\n",
	 policy_check, NULL},
	{"default", "print the built-in document (no server)", "",
	 "Prints the document kmsd uses when no policy was ever written and no\n"
	 "policy_file is configured (the same as `kmsd default-policy`): a starting point.\n"
	 "\n"
	 "example:\n"
	 "  kmsctl policy default > policy.json\n",
	 policy_default, NULL},
};

static const struct cli_group policy_group = {
	"policy",
	"The policy document that decides who may do what (docs/POLICY.md). Writing one is\n"
	"an admin change: with the built-in policy it needs a TOTP code (KMS_MFA, --mfa, or\n"
	"the terminal prompt).\n"
	"\n"
	"examples:\n"
	"  kmsctl --format json policy read | jq .document > policy.json\n"
	"  $EDITOR policy.json   # raise \"version\"\n"
	"  kmsctl policy check policy.json && kmsctl --mfa policy write policy.json\n",
	policy_leaves, sizeof(policy_leaves) / sizeof(policy_leaves[0]),
};

int cli_policy(int argc, char **argv)
{
	return cli_group_run(&policy_group, argc, argv);
}

void cli_policy_usage(FILE *f)
{
	cli_group_usage(&policy_group, f);
}
