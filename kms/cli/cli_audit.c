/* kmsctl audit: offline tools over audit log files. Needs no server and no token. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kms/audit/verify.h"
#include "kms/cli/cli.h"

void cli_audit_usage(FILE *f)
{
	fprintf(f, "usage: kmsctl audit SUBCOMMAND [ARGS...]\n"
		   "\n"
		   "subcommands:\n"
		   "  verify     check order, hash chain and checkpoint signatures of a log\n"
		   "\n"
		   "`kmsctl audit SUBCOMMAND --help` describes a subcommand.\n");
}

static void verify_usage(FILE *f)
{
	fprintf(f,
		"usage: kmsctl audit verify [--pubkey FILE] SEGMENT...\n"
		"\n"
		"Verifies the audit log made of the SEGMENT files, read in the order given\n"
		"(the first must start at seq 1), without a server or token: every record's\n"
		"hash, seq order and prev link, and every checkpoint's ECDSA P-256 signature.\n"
		"\n"
		"  --pubkey FILE  the PEM public key kmsd exported (default: the first\n"
		"                 SEGMENT.pub.pem that exists; kmsd writes audit.log.pub.pem,\n"
		"                 so `kmsctl audit verify var/audit*.log` finds it)\n"
		"\n"
		"Prints `ok: N records, M checkpoints, last signed seq S` (and the size of the\n"
		"unsigned tail: records after the last checkpoint, which are not an error),\n"
		"or the first bad record:\n"
		"  FAIL: record seq S (line L of FILE): edited|deleted|inserted|reordered|\n"
		"        chain broken|truncated|bad checkpoint|bad signature: details\n"
		"Exit status: 0 ok, 1 FAIL, 2 usage error or unreadable input.\n");
}

static int audit_verify_cmd(int argc, char **argv)
{
	static const struct option opts[] = {
		{"pubkey", required_argument, NULL, 'k'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct audit_verify_result res;
	const char *pubkey = NULL;
	char *dflt = NULL, line[1024];
	kms_err err;
	int c, rc;

	while ((c = getopt_long(argc, argv, "k:h", opts, NULL)) != -1) {
		switch (c) {
		case 'k':
			pubkey = optarg;
			break;
		case 'h':
			verify_usage(stdout);
			return CLI_OK;
		default:
			verify_usage(stderr);
			return CLI_USAGE;
		}
	}
	if (optind >= argc) {
		fprintf(stderr, "kmsctl audit verify: no SEGMENT given\n\n");
		verify_usage(stderr);
		return CLI_USAGE;
	}
	for (c = optind; pubkey == NULL && c < argc; c++) {
		free(dflt);
		if (asprintf(&dflt, "%s.pub.pem", argv[c]) < 0) {
			fprintf(stderr, "kmsctl: out of memory\n");
			return CLI_FAIL;
		}
		if (access(dflt, R_OK) == 0)
			pubkey = dflt;
	}
	if (pubkey == NULL) {
		fprintf(stderr,
			"kmsctl audit verify: no --pubkey given and no SEGMENT.pub.pem is readable "
			"(tried %s.pub.pem ... %s)\n",
			argv[optind], dflt);
		free(dflt);
		return CLI_USAGE;
	}
	err = audit_verify((const char *const *)(argv + optind), (size_t)(argc - optind), pubkey,
			   &res);
	if (err != KMS_OK) {
		fprintf(stderr, "kmsctl audit verify: %s\n", kms_err_detail(err));
		rc = CLI_USAGE;
	} else {
		audit_verify_summary(&res, line, sizeof(line));
		printf("%s\n", line);
		rc = res.verdict == AUDIT_V_OK ? CLI_OK : CLI_FAIL;
	}
	free(dflt);
	return rc;
}

static const struct cli_command subcommands[] = {
	{"verify", "check a log offline", audit_verify_cmd, verify_usage},
};

int cli_audit(int argc, char **argv)
{
	size_t i;

	if (argc < 2) {
		cli_audit_usage(stderr);
		return CLI_USAGE;
	}
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
	    strcmp(argv[1], "help") == 0) {
		cli_audit_usage(stdout);
		return CLI_OK;
	}
	for (i = 0; i < sizeof(subcommands) / sizeof(subcommands[0]); i++) {
		if (strcmp(argv[1], subcommands[i].name) == 0) {
			optind = 0;
			return subcommands[i].run(argc - 1, argv + 1);
		}
	}
	fprintf(stderr, "kmsctl audit: unknown subcommand \"%s\"\n\n", argv[1]);
	cli_audit_usage(stderr);
	return CLI_USAGE;
}
