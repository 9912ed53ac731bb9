/* kmsctl key ...: keys of a tenant, their versions and lifecycle (/v1/TENANT/keys/...). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms/cli/cli.h"

/* The key as the server answers it: settings, then one line per version. */
static void key_table(const json_t *k)
{
	static const char *const skip[] = {"keys", "versions", NULL};
	static const char *const first[] = {"tenant", "name", "type", "latest_version",
					    "min_decryption_version", "min_encryption_version",
					    "revoked", "legal_hold", "deletion_allowed",
					    "auto_rotate_period", NULL};
	const json_t *vers = json_object_get(k, "versions"), *v;
	const char *num;

	cli_print_kv_ordered(k, first, skip);
	if (!json_is_object(vers) || json_object_size(vers) == 0)
		return;
	printf("\n%-8s %-20s %s\n", "VERSION", "STATE", "CREATED");
	json_object_foreach((json_t *)vers, num, v) {
		printf("%-8s %-20s ", num, json_string_value(json_object_get(v, "state")) ?: "-");
		cli_put_value("created", json_object_get(v, "created") ?: json_null());
		fputc('\n', stdout);
	}
}

static void history_table(const json_t *h)
{
	const json_t *events = json_object_get(h, "events"), *e, *ver;
	size_t i;

	printf("%-20s  %-18s %-7s %-20s %s\n", "TIME", "EVENT", "VERSION", "PRINCIPAL", "REASON");
	json_array_foreach(events, i, e) {
		cli_put_value("time", json_object_get(e, "time") ?: json_null());
		printf("  %-18s ", json_string_value(json_object_get(e, "event")) ?: "-");
		ver = json_object_get(e, "version");
		if (json_is_integer(ver))
			printf("%-7lld ", (long long)json_integer_value(ver));
		else
			printf("%-7s ", "-");
		printf("%-20s ", json_string_value(json_object_get(e, "principal")) ?: "-");
		cli_put_value(NULL, json_object_get(e, "reason") ?: json_null());
		fputc('\n', stdout);
	}
}

static int key_create(int argc, char **argv)
{
	static const struct option opts[] = {{"type", required_argument, NULL, 't'},
					     {NULL, 0, NULL, 0}};
	json_t *body = json_object();
	int c, rc = CLI_USAGE;

	while ((c = cli_getopt(argc, argv, opts)) != -1) {
		if (c != 't')
			goto fail;
		json_object_set_new(body, "type", json_string(optarg));
	}
	if ((rc = cli_positionals(argc, argv, 2, 2)) != CLI_OK)
		goto fail;
	return cli_simple_call("POST", cli_path(argv[optind], "keys", argv[optind + 1], NULL), body,
			       key_table);
fail:
	json_decref(body);
	return rc;
}

static const struct option no_opts[] = {{NULL, 0, NULL, 0}};

static int plain_args(int argc, char **argv, int n)
{
	while (cli_getopt(argc, argv, no_opts) != -1)
		return CLI_USAGE;
	return cli_positionals(argc, argv, n, n);
}

static int key_read(int argc, char **argv)
{
	int rc = plain_args(argc, argv, 2);

	if (rc != CLI_OK)
		return rc;
	return cli_simple_call("GET", cli_path(argv[optind], "keys", argv[optind + 1], NULL), NULL,
			       key_table);
}

static int key_list(int argc, char **argv)
{
	int rc = plain_args(argc, argv, 1);

	if (rc != CLI_OK)
		return rc;
	return cli_simple_call("LIST", cli_path(argv[optind], "keys", NULL), NULL, cli_print_list);
}

static int key_rotate(int argc, char **argv)
{
	int rc = plain_args(argc, argv, 2);

	if (rc != CLI_OK)
		return rc;
	return cli_simple_call("POST", cli_path(argv[optind], "keys", argv[optind + 1], "rotate", NULL),
			       NULL, key_table);
}

static int key_history(int argc, char **argv)
{
	int rc = plain_args(argc, argv, 2);

	if (rc != CLI_OK)
		return rc;
	return cli_simple_call("GET", cli_path(argv[optind], "keys", argv[optind + 1], "history", NULL),
			       NULL, history_table);
}

static int key_config(int argc, char **argv)
{
	static const struct option opts[] = {
		{"min-decryption-version", required_argument, NULL, 'd'},
		{"min-encryption-version", required_argument, NULL, 'e'},
		{"deletion-allowed", required_argument, NULL, 'x'},
		{"auto-rotate-period", required_argument, NULL, 'a'},
		{"reason", required_argument, NULL, 'r'},
		{NULL, 0, NULL, 0},
	};
	json_t *body = json_object();
	long long v;
	int c, b, rc = CLI_USAGE;

	while ((c = cli_getopt(argc, argv, opts)) != -1) {
		switch (c) {
		case 'd':
			if (cli_parse_uint("--min-decryption-version", optarg, 4294967295LL, &v) != 0)
				goto fail;
			json_object_set_new(body, "min_decryption_version", json_integer(v));
			break;
		case 'e':
			if (cli_parse_uint("--min-encryption-version", optarg, 4294967295LL, &v) != 0)
				goto fail;
			json_object_set_new(body, "min_encryption_version", json_integer(v));
			break;
		case 'x':
			if (cli_parse_bool("--deletion-allowed", optarg, &b) != 0)
				goto fail;
			json_object_set_new(body, "deletion_allowed", json_boolean(b));
			break;
		case 'a':
			if (cli_parse_duration("--auto-rotate-period", optarg, &v) != 0)
				goto fail;
			json_object_set_new(body, "auto_rotate_period", json_integer(v));
			break;
		case 'r':
			json_object_set_new(body, "reason", json_string(optarg));
			break;
		default:
			goto fail;
		}
	}
	if ((rc = cli_positionals(argc, argv, 2, 2)) != CLI_OK)
		goto fail;
	return cli_simple_call("POST", cli_path(argv[optind], "keys", argv[optind + 1], "config", NULL),
			       body, key_table);
fail:
	json_decref(body);
	return rc;
}

/* revoke, restore and the version calls: TENANT KEY [VERSION] --reason TEXT [--days N] */
static int key_action(int argc, char **argv, const char *action, int versioned, int days)
{
	static const struct option opts[] = {{"reason", required_argument, NULL, 'r'},
					     {"days", required_argument, NULL, 'd'},
					     {NULL, 0, NULL, 0}};
	json_t *body = json_object();
	char *path;
	long long v;
	int c, rc = CLI_USAGE, n = versioned ? 3 : 2;

	while ((c = cli_getopt(argc, argv, opts)) != -1) {
		if (c == 'r') {
			json_object_set_new(body, "reason", json_string(optarg));
		} else if (c == 'd' && days) {
			if (cli_parse_uint("--days", optarg, 100000, &v) != 0)
				goto fail;
			json_object_set_new(body, "days", json_integer(v));
		} else {
			if (c == 'd')
				cli_usage_error("unknown option --days");
			goto fail;
		}
	}
	if ((rc = cli_positionals(argc, argv, n, n)) != CLI_OK)
		goto fail;
	rc = CLI_USAGE;
	/* a version is a whole number from 1: anything else is a usage error, not a call */
	if (versioned) {
		if (cli_parse_uint("VERSION", argv[optind + 2], 4294967295LL, &v) != 0)
			goto fail;
		if (v < 1) {
			cli_usage_error("VERSION: versions start at 1");
			goto fail;
		}
	}
	if (versioned)
		path = cli_path(argv[optind], "keys", argv[optind + 1], "versions", argv[optind + 2],
				action, NULL);
	else
		path = cli_path(argv[optind], "keys", argv[optind + 1], action, NULL);
	return cli_simple_call("POST", path, body, key_table);
fail:
	json_decref(body);
	return rc;
}

static int key_revoke(int argc, char **argv)
{
	return key_action(argc, argv, "revoke", 0, 0);
}

static int key_restore(int argc, char **argv)
{
	return key_action(argc, argv, "restore", 0, 0);
}

static int key_legal_hold(int argc, char **argv)
{
	static const struct option opts[] = {{"reason", required_argument, NULL, 'r'},
					     {NULL, 0, NULL, 0}};
	json_t *body = json_object();
	int c, hold, rc = CLI_USAGE;

	while ((c = cli_getopt(argc, argv, opts)) != -1) {
		if (c != 'r')
			goto fail;
		json_object_set_new(body, "reason", json_string(optarg));
	}
	if ((rc = cli_positionals(argc, argv, 3, 3)) != CLI_OK)
		goto fail;
	rc = CLI_USAGE;
	if (cli_parse_bool("HOLD", argv[optind + 2], &hold) != 0)
		goto fail;
	json_object_set_new(body, "hold", json_boolean(hold));
	return cli_simple_call("POST", cli_path(argv[optind], "keys", argv[optind + 1], "legal-hold", NULL),
			       body, NULL);
fail:
	json_decref(body);
	return rc;
}

/* TENANT KEY --min-available-version N --reason TEXT [--days N] */
static int key_trim(int argc, char **argv)
{
	static const struct option opts[] = {{"min-available-version", required_argument, NULL, 'm'},
					     {"reason", required_argument, NULL, 'r'},
					     {"days", required_argument, NULL, 'd'},
					     {NULL, 0, NULL, 0}};
	json_t *body = json_object();
	long long v;
	int c, rc = CLI_USAGE;

	while ((c = cli_getopt(argc, argv, opts)) != -1) {
		if (c == 'r') {
			json_object_set_new(body, "reason", json_string(optarg));
		} else if (c == 'm' || c == 'd') {
			if (cli_parse_uint(c == 'm' ? "--min-available-version" : "--days", optarg,
					   c == 'm' ? 4294967295LL : 100000, &v) != 0)
				goto fail;
			json_object_set_new(body, c == 'm' ? "min_available_version" : "days", json_integer(v));
		} else {
			goto fail;
		}
	}
	if ((rc = cli_positionals(argc, argv, 2, 2)) != CLI_OK)
		goto fail;
	rc = CLI_USAGE;
	if (json_object_get(body, "min_available_version") == NULL) {
		cli_usage_error("--min-available-version is required");
		goto fail;
	}
	return cli_simple_call("POST", cli_path(argv[optind], "keys", argv[optind + 1], "trim", NULL), body,
			       key_table);
fail:
	json_decref(body);
	return rc;
}

static int version_disable(int argc, char **argv)
{
	return key_action(argc, argv, "disable", 1, 0);
}

static int version_enable(int argc, char **argv)
{
	return key_action(argc, argv, "enable", 1, 0);
}

static int version_schedule_destroy(int argc, char **argv)
{
	return key_action(argc, argv, "schedule-destroy", 1, 1);
}

static int version_cancel_destroy(int argc, char **argv)
{
	return key_action(argc, argv, "cancel-destroy", 1, 0);
}

static const struct cli_leaf version_leaves[] = {
	{"disable", "refuse a version for every use (reason required)",
	 "TENANT KEY VERSION --reason TEXT",
	 "Disables VERSION of KEY: no encryption under it and no decryption of its\n"
	 "ciphertexts (409 `key version N is disabled`) until enabled again.\n"
	 "\n"
	 "  --reason TEXT   why (required; kept in the key's history)\n"
	 "\n"
	 "example:\n"
	 "  kmsctl key version disable cardiology patient-records 1 --reason \"INC-4411\"\n",
	 version_disable, NULL},
	{"enable", "enable a disabled version again", "TENANT KEY VERSION [--reason TEXT]",
	 "Enables a disabled VERSION of KEY again.\n"
	 "\n"
	 "  --reason TEXT   why (optional; kept in the key's history)\n"
	 "\n"
	 "example:\n"
	 "  kmsctl key version enable cardiology patient-records 1 --reason \"INC-4411 closed\"\n",
	 version_enable, NULL},
	{"schedule-destroy", "schedule a superseded version's destruction (7-30 days)",
	 "TENANT KEY VERSION --reason TEXT [--days N]",
	 "Schedules the destruction of VERSION (not the active one) after N days. Needs\n"
	 "`key config --deletion-allowed true`, no legal hold, and for PHI tenants the\n"
	 "retention period over by then. Cancel with cancel-destroy while waiting.\n"
	 "\n"
	 "  --days N        the wait, 7..30 (default 30; at least the tenant's minimum)\n"
	 "  --reason TEXT   why (required)\n"
	 "\n"
	 "example:\n"
	 "  kmsctl key version schedule-destroy research study-key 1 --days 7 --reason \"GDPR erasure #88\"\n",
	 version_schedule_destroy, NULL},
	{"cancel-destroy", "call off a scheduled destruction (back to disabled)",
	 "TENANT KEY VERSION --reason TEXT",
	 "Cancels a scheduled destruction of VERSION; the version is then disabled (use\n"
	 "`key version enable` to use it again).\n"
	 "\n"
	 "example:\n"
	 "  kmsctl key version cancel-destroy research study-key 1 --reason \"erasure withdrawn\"\n",
	 version_cancel_destroy, NULL},
};

static const struct cli_group version_group = {
	"key version",
	"States of one key version (docs/KEY-LIFECYCLE.md). Admin token.\n"
	"\n"
	"examples:\n"
	"  kmsctl key version disable cardiology patient-records 1 --reason \"INC-4411\"\n"
	"  kmsctl key version enable cardiology patient-records 1\n",
	version_leaves, sizeof(version_leaves) / sizeof(version_leaves[0]),
};

static const struct cli_leaf key_leaves[] = {
	{"create", "create a key (admin)", "TENANT KEY [--type aes256-gcm96]",
	 "Creates KEY in TENANT with its first version. The key material never leaves the\n"
	 "token; the answer describes the key.\n"
	 "\n"
	 "  --type TYPE   aes256-gcm96 (the default and only type)\n"
	 "\n"
	 "example:\n"
	 "  kmsctl key create cardiology patient-records\n",
	 key_create, NULL},
	{"read", "show a key and the state of each version", "TENANT KEY",
	 "Shows KEY: latest and minimum versions, flags, and one line per version with\n"
	 "its state (active, decrypt-only, disabled, pending-destruction, destroyed, ...).\n"
	 "\n"
	 "example:\n"
	 "  kmsctl key read cardiology patient-records\n",
	 key_read, NULL},
	{"list", "list a tenant's keys", "TENANT",
	 "Lists TENANT's keys, one name a line. A tenant without keys answers 404 (as\n"
	 "Vault does), so does an unknown one: exit status 1.\n"
	 "\n"
	 "example:\n"
	 "  kmsctl key list cardiology\n",
	 key_list, NULL},
	{"rotate", "add a new version; the previous becomes decrypt-only (admin)", "TENANT KEY",
	 "Adds a version to KEY. New encryptions use it; older versions only decrypt.\n"
	 "Move old ciphertexts forward with `kmsctl rewrap`.\n"
	 "\n"
	 "example:\n"
	 "  kmsctl key rotate cardiology patient-records\n",
	 key_rotate, NULL},
	{"config", "set minimum versions, deletion switch, rotation period (admin)",
	 "TENANT KEY [--min-decryption-version N] [--min-encryption-version N]\n"
	 "       [--deletion-allowed true|false] [--auto-rotate-period DURATION] [--reason TEXT]",
	 "Changes KEY's configuration; the answer is the key.\n"
	 "\n"
	 "  --min-decryption-version N   refuse ciphertexts of older versions (1..latest)\n"
	 "  --min-encryption-version N   0, or min_decryption_version..latest\n"
	 "  --deletion-allowed BOOL      the switch schedule-destroy needs\n"
	 "  --auto-rotate-period DUR     0, or 1h and more (s, m, h, d suffixes)\n"
	 "  --reason TEXT                kept in the key's history\n"
	 "\n"
	 "example:\n"
	 "  kmsctl key config research study-key --deletion-allowed true --reason \"study closed\"\n",
	 key_config, NULL},
	{"revoke", "refuse every version at once, e.g. on compromise (admin)",
	 "TENANT KEY --reason TEXT",
	 "Revokes KEY: every version is refused (409) until `key restore`.\n"
	 "\n"
	 "example:\n"
	 "  kmsctl key revoke cardiology patient-records --reason \"suspected compromise INC-5\"\n",
	 key_revoke, NULL},
	{"restore", "undo a revoke (admin)", "TENANT KEY --reason TEXT",
	 "Restores a revoked KEY: each version is back to what its own state allows.\n"
	 "\n"
	 "example:\n"
	 "  kmsctl key restore cardiology patient-records --reason \"INC-5 closed\"\n",
	 key_restore, NULL},
	{"history", "the key's lifecycle events (admin)", "TENANT KEY",
	 "Shows KEY's history: creation, rotations, disables, revokes, destructions, with\n"
	 "principal, reason and time.\n"
	 "\n"
	 "example:\n"
	 "  kmsctl key history cardiology patient-records\n",
	 key_history, NULL},
	{"legal-hold", "set or lift a legal hold on the key (admin)",
	 "TENANT KEY on|off --reason TEXT",
	 "Sets (on) or lifts (off) a legal hold on KEY: while held, no version of it can\n"
	 "be destroyed.\n"
	 "\n"
	 "example:\n"
	 "  kmsctl key legal-hold cardiology patient-records on --reason \"litigation 2025-17\"\n",
	 key_legal_hold, NULL},
	{"trim", "schedule destruction of every version below a floor (admin)",
	 "TENANT KEY --min-available-version N --reason TEXT [--days 7..30]",
	 "Vault's trim under kmsd's destruction rules: every version below N that is not\n"
	 "already pending destruction or destroyed is scheduled for destruction, as\n"
	 "`key version schedule-destroy` would (cancel each with cancel-destroy). N may not\n"
	 "be above min_decryption_version or min_encryption_version. Needs deletion_allowed;\n"
	 "a legal hold or PHI retention refusing any one version refuses the whole trim.\n"
	 "\n"
	 "example:\n"
	 "  kmsctl key trim research study-key --min-available-version 3 --days 7 --reason \"GDPR erasure #91\"\n",
	 key_trim, NULL},
	{"version", "disable, enable, schedule-destroy, cancel-destroy a version", "SUBCOMMAND ...",
	 "", NULL, &version_group},
};

static const struct cli_group key_group = {
	"key",
	"Keys of a tenant (a Vault Transit key each). Create, rotate and lifecycle calls\n"
	"need an admin token; read and list also work with a service token of the tenant.\n"
	"\n"
	"examples:\n"
	"  kmsctl key create cardiology patient-records\n"
	"  kmsctl key rotate cardiology patient-records\n"
	"  kmsctl key version disable cardiology patient-records 1 --reason \"INC-4411\"\n",
	key_leaves, sizeof(key_leaves) / sizeof(key_leaves[0]),
};

int cli_key(int argc, char **argv)
{
	return cli_group_run(&key_group, argc, argv);
}

void cli_key_usage(FILE *f)
{
	cli_group_usage(&key_group, f);
}
