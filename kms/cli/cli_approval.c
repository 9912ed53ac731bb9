/* kmsctl approval (quorum requests) and kmsctl break-glass: the /v1/sys/approvals and
 * /v1/sys/break-glass calls (docs/KMSCTL.md, docs/API.md). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms/cli/cli.h"

static const struct option no_opts[] = {{NULL, 0, NULL, 0}};

static int plain_args(int argc, char **argv, int n)
{
	int c;

	while ((c = cli_getopt(argc, argv, no_opts)) != -1)
		return CLI_USAGE;
	return cli_positionals(argc, argv, n, n);
}

/* ---- approval -------------------------------------------------------------------- */

static void approvals_table(const json_t *data)
{
	const json_t *reqs = json_object_get(data, "requests"), *r;
	size_t i;

	if (json_array_size(reqs) == 0) {
		printf("no approval requests\n");
		return;
	}
	printf("%-32s  %-17s  %-28s  %-9s  %s\n", "ID", "STATE", "OPERATION", "APPROVALS", "REQUESTER");
	json_array_foreach(reqs, i, r) {
		printf("%-32s  %-17s  %-28s  %3lld of %-2lld  %s\n", json_string_value(json_object_get(r, "id")),
		       json_string_value(json_object_get(r, "state")), json_string_value(json_object_get(r, "operation")),
		       (long long)json_integer_value(json_object_get(r, "approvals")),
		       (long long)json_integer_value(json_object_get(r, "required_approvals")),
		       json_string_value(json_object_get(r, "requester")));
	}
}

static void approval_table(const json_t *d)
{
	static const char *const first[] = {"id", "state", "operation", "tenant", "key", "version", "requester",
					    "required_approvals", "approvals", "created", "expires", "finished",
					    NULL};
	static const char *const skip[] = {"approved_by", "denied_by", "request", "result", NULL};
	const json_t *list, *e, *res;
	size_t i;

	cli_print_kv_ordered(d, first, skip);
	list = json_object_get(d, "approved_by");
	json_array_foreach(list, i, e) printf("approved_by         %s\n", json_string_value(json_object_get(e, "principal")));
	list = json_object_get(d, "denied_by");
	json_array_foreach(list, i, e) printf("denied_by           %s\n", json_string_value(json_object_get(e, "principal")));
	e = json_object_get(d, "request");
	if (e != NULL)
		printf("request             %s %s\n", json_string_value(json_object_get(e, "method")),
		       json_string_value(json_object_get(e, "path")));
	res = json_object_get(d, "result");
	if (res != NULL) {
		printf("result status       %lld\n", (long long)json_integer_value(json_object_get(res, "status")));
		printf("result\n");
		cli_print_json(json_object_get(res, "body"));
	}
}

static int approval_list(int argc, char **argv)
{
	int rc = plain_args(argc, argv, 0);

	if (rc != CLI_OK)
		return rc;
	return cli_simple_call("GET", cli_path("sys", "approvals", NULL), NULL, approvals_table);
}

static int approval_show(int argc, char **argv)
{
	int rc = plain_args(argc, argv, 1);

	if (rc != CLI_OK)
		return rc;
	return cli_simple_call("GET", cli_path("sys", "approvals", argv[optind], NULL), NULL, approval_table);
}

static int approval_vote(int argc, char **argv, const char *verdict)
{
	static const struct option opts[] = {{"note", required_argument, NULL, 'n'}, {NULL, 0, NULL, 0}};
	const char *note = NULL;
	json_t *body;
	int c, rc;

	while ((c = cli_getopt(argc, argv, opts)) != -1) {
		if (c == 'n')
			note = optarg;
		else
			return CLI_USAGE;
	}
	if ((rc = cli_positionals(argc, argv, 1, 1)) != CLI_OK)
		return rc;
	body = json_object();
	if (note != NULL)
		json_object_set_new(body, "note", json_string(note));
	return cli_simple_call("POST", cli_path("sys", "approvals", argv[optind], verdict, NULL), body, approval_table);
}

static int approval_approve(int argc, char **argv)
{
	return approval_vote(argc, argv, "approve");
}

static int approval_deny(int argc, char **argv)
{
	return approval_vote(argc, argv, "deny");
}

static const struct cli_leaf approval_leaves[] = {
	{"list", "list approval requests, newest first", "",
	 "Lists approval requests (GET /v1/sys/approvals): id, state, operation, approvals\n"
	 "so far of those required, requester. Pending requests past their expiry show as\n"
	 "expired.\n"
	 "\n"
	 "example:\n"
	 "  kmsctl approval list\n",
	 approval_list, NULL},
	{"show", "show one request: what it will run, who voted, its result", "ID",
	 "Shows approval request ID (GET /v1/sys/approvals/ID): the request it holds\n"
	 "(method, path, body), the approvers and deniers, and once it ran, the answer of\n"
	 "the operation (the requester fetches its result this way).\n"
	 "\n"
	 "example:\n"
	 "  kmsctl approval show 3f0c...e1 --format json\n",
	 approval_show, NULL},
	{"approve", "approve a request (not your own); the last approval runs it", "ID [--note TEXT]",
	 "Approves request ID (POST /v1/sys/approvals/ID/approve). The requester cannot\n"
	 "approve its own request and nobody votes twice. The approval that completes the\n"
	 "quorum runs the operation, once, as its requester, and prints its result.\n"
	 "\n"
	 "  --note TEXT   a remark kept in the audit log with the call\n"
	 "\n"
	 "example:\n"
	 "  kmsctl approval approve 3f0c...e1\n",
	 approval_approve, NULL},
	{"deny", "deny a request: it will never run", "ID [--note TEXT]",
	 "Denies request ID (POST /v1/sys/approvals/ID/deny): one deny ends it. The\n"
	 "requester may deny (withdraw) its own request.\n"
	 "\n"
	 "example:\n"
	 "  kmsctl approval deny 3f0c...e1 --note \"no change ticket\"\n",
	 approval_deny, NULL},
};

static const struct cli_group approval_group = {
	"approval",
	"Quorum approvals: when the policy requires M approvals for an operation, the call\n"
	"answers 202 with an approval id instead of running; other admins approve or deny.\n"
	"\n"
	"examples:\n"
	"  kmsctl key rotate hosp phi-notes          # prints approval_id, state pending\n"
	"  kmsctl approval list\n"
	"  kmsctl approval approve 3f0c...e1         # as a second admin\n",
	approval_leaves, sizeof(approval_leaves) / sizeof(approval_leaves[0]),
};

int cli_approval(int argc, char **argv)
{
	return cli_group_run(&approval_group, argc, argv);
}

void cli_approval_usage(FILE *f)
{
	cli_group_usage(&approval_group, f);
}

/* ---- break-glass ----------------------------------------------------------------- */

static void grants_table(const json_t *data)
{
	const json_t *gs = json_object_get(data, "grants"), *g;
	size_t i;

	if (json_array_size(gs) == 0) {
		printf("no break-glass grants\n");
		return;
	}
	printf("%-32s  %-20s  %-20s  %-6s  %-8s  %s\n", "ID", "PRINCIPAL", "TENANT/KEY", "ACTIVE", "REVIEWS",
	       "REASON");
	json_array_foreach(gs, i, g) {
		char scope[280];

		snprintf(scope, sizeof(scope), "%s/%s", json_string_value(json_object_get(g, "tenant")),
			 json_string_value(json_object_get(g, "key")));
		printf("%-32s  %-20s  %-20s  %-6s  %zu of %-3lld  %s\n", json_string_value(json_object_get(g, "id")),
		       json_string_value(json_object_get(g, "principal")), scope,
		       json_is_true(json_object_get(g, "active")) ? "yes" : "no",
		       json_array_size(json_object_get(g, "reviews")),
		       (long long)json_integer_value(json_object_get(g, "reviews_required")),
		       json_string_value(json_object_get(g, "reason")));
	}
}

static void grant_table(const json_t *g)
{
	static const char *const first[] = {"id", "principal", "tenant", "key", "reason", "granted", "expires",
					    "active", "reviews_required", "reviewed", NULL};
	static const char *const skip[] = {"reviews", NULL};
	const json_t *r;
	size_t i;

	cli_print_kv_ordered(g, first, skip);
	json_array_foreach(json_object_get(g, "reviews"), i, r)
		printf("review              %s: %s (%s)\n", json_string_value(json_object_get(r, "principal")),
		       json_string_value(json_object_get(r, "verdict")), json_string_value(json_object_get(r, "note")));
}

static int bg_activate(int argc, char **argv)
{
	static const struct option opts[] = {{"reason", required_argument, NULL, 'r'},
					     {"key", required_argument, NULL, 'k'},
					     {"ttl", required_argument, NULL, 't'},
					     {NULL, 0, NULL, 0}};
	const char *reason = NULL, *key = NULL;
	long long ttl = 0;
	json_t *body;
	int c, rc;

	while ((c = cli_getopt(argc, argv, opts)) != -1) {
		if (c == 'r')
			reason = optarg;
		else if (c == 'k')
			key = optarg;
		else if (c == 't') {
			if (cli_parse_duration("--ttl", optarg, &ttl) != 0)
				return CLI_USAGE;
		} else
			return CLI_USAGE;
	}
	if ((rc = cli_positionals(argc, argv, 1, 1)) != CLI_OK)
		return rc;
	if (reason == NULL || *reason == '\0')
		return cli_usage_error("--reason is required: every break-glass grant is reviewed afterwards");
	body = json_pack("{s:s,s:s}", "tenant", argv[optind], "reason", reason);
	if (body != NULL && key != NULL)
		json_object_set_new(body, "key", json_string(key));
	if (body != NULL && ttl > 0)
		json_object_set_new(body, "ttl", json_integer(ttl));
	return cli_simple_call("POST", cli_path("sys", "break-glass", NULL), body, grant_table);
}

static int bg_list(int argc, char **argv)
{
	int rc = plain_args(argc, argv, 0);

	if (rc != CLI_OK)
		return rc;
	return cli_simple_call("GET", cli_path("sys", "break-glass", NULL), NULL, grants_table);
}

static int bg_review(int argc, char **argv)
{
	static const struct option opts[] = {{"verdict", required_argument, NULL, 'v'},
					     {"note", required_argument, NULL, 'n'},
					     {NULL, 0, NULL, 0}};
	const char *verdict = NULL, *note = NULL;
	int c, rc;

	while ((c = cli_getopt(argc, argv, opts)) != -1) {
		if (c == 'v')
			verdict = optarg;
		else if (c == 'n')
			note = optarg;
		else
			return CLI_USAGE;
	}
	if ((rc = cli_positionals(argc, argv, 1, 1)) != CLI_OK)
		return rc;
	if (verdict == NULL || (strcmp(verdict, "justified") != 0 && strcmp(verdict, "unjustified") != 0))
		return cli_usage_error("--verdict justified|unjustified is required");
	if (note == NULL || *note == '\0')
		return cli_usage_error("--note is required");
	return cli_simple_call("POST", cli_path("sys", "break-glass", argv[optind], "review", NULL),
			       json_pack("{s:s,s:s}", "verdict", verdict, "note", note), grant_table);
}

static const struct cli_leaf bg_leaves[] = {
	{"activate", "take a time-limited grant to decrypt outside your rules", "TENANT --reason TEXT [--key GLOB] [--ttl D]",
	 "Activates a break-glass grant (POST /v1/sys/break-glass) for TENANT, if the\n"
	 "policy allows you breakglass.activate there. While it lasts, decrypt and rewrap\n"
	 "calls your rules refuse are allowed in its scope, each audited with the grant's\n"
	 "id. The grant is an alert in the audit log and needs review by admins.\n"
	 "\n"
	 "  --reason TEXT   why (required; reviewed afterwards)\n"
	 "  --key GLOB      keys covered (default *)\n"
	 "  --ttl D         how long, e.g. 30m (default and maximum: break_glass_max_ttl)\n"
	 "\n"
	 "example:\n"
	 "  kmsctl break-glass activate hosp-main --key 'phi-*' --ttl 30m --reason \"EHR down, ER patient\"\n",
	 bg_activate, NULL},
	{"list", "list grants with their reviews", "",
	 "Lists break-glass grants (GET /v1/sys/break-glass), newest first: who, scope,\n"
	 "whether still active, reviews so far of those required, reason.\n"
	 "\n"
	 "example:\n"
	 "  kmsctl break-glass list\n",
	 bg_list, NULL},
	{"review", "record your review of a grant (admin, not the grantee)",
	 "ID --verdict justified|unjustified --note TEXT",
	 "Records an after-the-fact review of grant ID (POST /v1/sys/break-glass/ID/review).\n"
	 "The grantee cannot review its own grant; each admin reviews once.\n"
	 "\n"
	 "example:\n"
	 "  kmsctl break-glass review 9a1f...c3 --verdict justified --note \"incident INC-4411\"\n",
	 bg_review, NULL},
};

static const struct cli_group bg_group = {
	"break-glass",
	"Break-glass: emergency decryption outside one's normal rules, time-limited,\n"
	"with a reason, audited as an alert and reviewed afterwards by admins.\n"
	"\n"
	"examples:\n"
	"  kmsctl break-glass activate hosp-main --reason \"EHR down\" --ttl 30m\n"
	"  kmsctl break-glass list\n"
	"  kmsctl break-glass review 9a1f...c3 --verdict justified --note \"INC-4411\"\n",
	bg_leaves, sizeof(bg_leaves) / sizeof(bg_leaves[0]),
};

int cli_break_glass(int argc, char **argv)
{
	return cli_group_run(&bg_group, argc, argv);
}

void cli_break_glass_usage(FILE *f)
{
	cli_group_usage(&bg_group, f);
}
