/* kmsctl mfa: TOTP enrolment (with a QR code on the terminal, libqrencode), confirmation,
 * status, verification, and an admin's unlock / reset of another principal. Codes never
 * come from argv: KMS_MFA, --mfa (asked on the terminal), a prompt, or stdin. */
#include <getopt.h>
#include <qrencode.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kms/base/secret.h"
#include "kms/cli/cli.h"

static const struct option no_opts[] = {{NULL, 0, NULL, 0}};

static int plain_args(int argc, char **argv, int min, int max)
{
	while (cli_getopt(argc, argv, no_opts) != -1)
		return CLI_USAGE;
	return cli_positionals(argc, argv, min, max);
}

/* Two module rows per text line with the upper half block: foreground = upper module,
 * background = lower module, in explicit black and white so that the code reads on
 * dark and light terminals alike. A 4-module quiet zone all round. */
static void print_qr(const char *text)
{
	QRcode *q = QRcode_encodeString(text, 0, QR_ECLEVEL_M, QR_MODE_8, 1);
	int w, quiet = 4;

	if (q == NULL) {
		fprintf(stderr, "kmsctl: cannot make a QR code of the URI; type the secret instead\n");
		return;
	}
	w = q->width;
	for (int y = -quiet; y < w + quiet; y += 2) {
		for (int x = -quiet; x < w + quiet; x++) {
			int top = y >= 0 && y < w && x >= 0 && x < w && (q->data[y * w + x] & 1);
			int bot = y + 1 >= 0 && y + 1 < w && x >= 0 && x < w && (q->data[(y + 1) * w + x] & 1);

			printf("\033[%d;%dm\xe2\x96\x80", top ? 30 : 97, bot ? 40 : 107);
		}
		printf("\033[0m\n");
	}
	QRcode_free(q);
}

static void enroll_table(const json_t *d)
{
	const json_t *codes = json_object_get(d, "recovery_codes"), *v;
	size_t i;

	if (isatty(STDOUT_FILENO) && json_string_value(json_object_get(d, "otpauth_uri")) != NULL)
		print_qr(json_string_value(json_object_get(d, "otpauth_uri")));
	printf("principal      %s\n", json_string_value(json_object_get(d, "principal")));
	printf("state          %s%s\n", json_string_value(json_object_get(d, "state")),
	       json_is_true(json_object_get(d, "replaces_active")) ? " (the active enrolment stays until this is confirmed)"
								    : "");
	printf("otpauth_uri    %s\n", json_string_value(json_object_get(d, "otpauth_uri")));
	printf("secret         %s\n", json_string_value(json_object_get(d, "secret")));
	printf("recovery codes (each works once; shown only now, keep them offline):\n");
	json_array_foreach(codes, i, v)
		printf("  %s\n", json_string_value(v));
	printf("Scan the QR code (or type the secret) into an authenticator app, then run\n"
	       "`kmsctl mfa confirm` with the code it shows.\n");
}

static int mfa_enroll(int argc, char **argv)
{
	struct cli_client c;
	json_t *ans = NULL;
	char *path;
	int rc;

	if ((rc = plain_args(argc, argv, 0, 0)) != CLI_OK)
		return rc;
	path = cli_path("sys", "mfa", "enroll", NULL);
	if (path == NULL)
		return CLI_SERVER;
	rc = cli_connect(&c, 1);
	if (rc == CLI_OK) {
		rc = cli_call(&c, "POST", path, NULL, &ans);
		if (rc == CLI_OK)
			cli_print(&c, json_object_get(ans, "data"), enroll_table);
		cli_disconnect(&c);
	}
	json_decref(ans); /* jansson's allocator wipes (kms_json_init) */
	free(path);
	return rc;
}

/* The first code of a new seed: KMS_MFA / --mfa, else the terminal, else stdin's first
 * line (`oathtool --totp -b SECRET | kmsctl mfa confirm`). */
static int confirm_code(struct cli_client *c, char *out, size_t cap)
{
	const char *v;
	unsigned char *in = NULL;
	size_t n = 0;
	int rc;

	if (c->mfa == NULL && isatty(STDIN_FILENO) && (rc = cli_mfa_prompt(c)) != CLI_OK)
		return rc;
	if (c->mfa != NULL) {
		v = strncmp(c->mfa, "totp:", 5) == 0 ? c->mfa + 5 : c->mfa;
		if (strlen(v) >= cap)
			return cli_usage_error("the code is too long");
		snprintf(out, cap, "%s", v);
		return CLI_OK;
	}
	if (cli_stdin_taken)
		return cli_usage_error("no code: stdin gave the token; set KMS_MFA or run on a terminal");
	rc = cli_read_input("-", 64, &in, &n);
	if (rc != CLI_OK)
		return rc;
	while (n > 0 && (in[n - 1] == '\n' || in[n - 1] == '\r' || in[n - 1] == ' '))
		n--;
	if (n == 0 || n >= cap) {
		kms_wipe(in, n);
		free(in);
		return cli_usage_error("no code on stdin");
	}
	memcpy(out, in, n);
	out[n] = '\0';
	kms_wipe(in, n);
	free(in);
	return CLI_OK;
}

static int mfa_confirm(int argc, char **argv)
{
	struct cli_client c;
	json_t *ans = NULL, *body = NULL;
	char code[32] = "", *path, *hdr;
	size_t hdr_len;
	int rc;

	if ((rc = plain_args(argc, argv, 0, 0)) != CLI_OK)
		return rc;
	path = cli_path("sys", "mfa", "confirm", NULL);
	if (path == NULL)
		return CLI_SERVER;
	rc = cli_connect(&c, 1);
	if (rc != CLI_OK)
		goto out_nc;
	rc = confirm_code(&c, code, sizeof(code));
	if (rc != CLI_OK)
		goto out;
	body = json_pack("{s:s}", "code", code);
	if (body == NULL) {
		rc = CLI_SERVER;
		goto out;
	}
	/* the code goes in the body, not as a step-up header as well */
	hdr = c.mfa;
	hdr_len = c.mfa_len;
	c.mfa = NULL;
	rc = cli_call(&c, "POST", path, body, &ans);
	c.mfa = hdr;
	c.mfa_len = hdr_len;
	if (rc == CLI_OK)
		cli_print(&c, json_object_get(ans, "data"), NULL);
out:
	cli_disconnect(&c);
out_nc:
	kms_wipe(code, sizeof(code));
	json_decref(body);
	json_decref(ans);
	free(path);
	return rc;
}

static int mfa_status(int argc, char **argv)
{
	int rc = plain_args(argc, argv, 0, 1);

	if (rc != CLI_OK)
		return rc;
	return cli_simple_call("GET",
			       optind < argc ? cli_path("sys", "mfa", "status", argv[optind], NULL)
					     : cli_path("sys", "mfa", "status", NULL),
			       NULL, NULL);
}

static int mfa_verify(int argc, char **argv)
{
	int rc = plain_args(argc, argv, 0, 0);

	if (rc != CLI_OK)
		return rc;
	return cli_simple_call("POST", cli_path("sys", "mfa", "verify", NULL), NULL, NULL);
}

static int mfa_unlock(int argc, char **argv)
{
	int rc = plain_args(argc, argv, 1, 1);

	if (rc != CLI_OK)
		return rc;
	return cli_simple_call("POST", cli_path("sys", "mfa", "unlock", argv[optind], NULL), NULL, NULL);
}

static int mfa_reset(int argc, char **argv)
{
	int rc = plain_args(argc, argv, 1, 1);

	if (rc != CLI_OK)
		return rc;
	return cli_simple_call("POST", cli_path("sys", "mfa", "reset", argv[optind], NULL), NULL, NULL);
}

static const struct cli_leaf mfa_leaves[] = {
	{"enroll", "enrol yourself: QR code, secret and recovery codes, shown once", "",
	 "Asks POST /v1/sys/mfa/enroll for a new TOTP seed for the token's principal. On a\n"
	 "terminal the otpauth:// URI is shown as a QR code to scan with an authenticator\n"
	 "app; the URI, the base32 secret and 10 one-time recovery codes follow. They are\n"
	 "shown only now. The enrolment is pending until `kmsctl mfa confirm`.\n"
	 "Re-enrolling while an enrolment is active needs a current code of it (KMS_MFA,\n"
	 "--mfa, or the prompt); the old seed stays in force until the new one is confirmed.\n"
	 "\n"
	 "example:\n"
	 "  kmsctl --token-file admin.token mfa enroll\n",
	 mfa_enroll, NULL},
	{"confirm", "activate the enrolment with the first code", "",
	 "Sends the authenticator's current code (POST /v1/sys/mfa/confirm). The code comes\n"
	 "from KMS_MFA, --mfa or a prompt on the terminal, else from stdin's first line.\n"
	 "\n"
	 "examples:\n"
	 "  kmsctl mfa confirm                       (asks for the code)\n"
	 "  oathtool --totp -b \"$SECRET\" | kmsctl --token-file admin.token mfa confirm\n",
	 mfa_confirm, NULL},
	{"status", "your MFA state, or another principal's (admin)", "[NAME]",
	 "Shows enrolled, state (pending/active), locked, failures, max_failures,\n"
	 "recovery_codes_left and last_verified (unix time of the last good code).\n"
	 "\n"
	 "examples:\n"
	 "  kmsctl mfa status\n"
	 "  kmsctl mfa status ops-bob\n",
	 mfa_status, NULL},
	{"verify", "check a code now (refreshes mfa_max_age conditions)", "",
	 "Sends a code with POST /v1/sys/mfa/verify and does nothing else: a policy rule\n"
	 "with an mfa_max_age condition then holds for that many seconds.\n"
	 "\n"
	 "example:\n"
	 "  KMS_MFA=$(oathtool --totp -b \"$SECRET\") kmsctl mfa verify\n",
	 mfa_verify, NULL},
	{"unlock", "clear another principal's lockout (admin, with your own code)", "NAME",
	 "After mfa_max_failures wrong codes a principal is locked; another admin clears it\n"
	 "(never the principal itself). Needs your own step-up code.\n"
	 "\n"
	 "example:\n"
	 "  kmsctl --mfa mfa unlock ops-alice\n",
	 mfa_unlock, NULL},
	{"reset", "delete another principal's enrolment (lost device; admin)", "NAME",
	 "Deletes NAME's TOTP enrolment (seed and recovery codes) so that it can enrol again\n"
	 "(docs/RUNBOOKS.md, lost authenticator). Never your own. Needs your own code.\n"
	 "\n"
	 "example:\n"
	 "  kmsctl --mfa mfa reset ops-alice\n",
	 mfa_reset, NULL},
};

static const struct cli_group mfa_group = {
	"mfa",
	"TOTP step-up (RFC 6238). With the built-in policy every admin change needs a code in\n"
	"X-Vault-MFA: kmsctl sends KMS_MFA, asks with --mfa, or asks on the terminal when the\n"
	"server says a code is needed. A code is good once.\n"
	"\n"
	"examples:\n"
	"  kmsctl mfa enroll && kmsctl mfa confirm\n"
	"  KMS_MFA=$(oathtool --totp -b \"$SECRET\") kmsctl tenant create cardiology\n",
	mfa_leaves, sizeof(mfa_leaves) / sizeof(mfa_leaves[0]),
};

int cli_mfa(int argc, char **argv)
{
	return cli_group_run(&mfa_group, argc, argv);
}

void cli_mfa_usage(FILE *f)
{
	cli_group_usage(&mfa_group, f);
}
