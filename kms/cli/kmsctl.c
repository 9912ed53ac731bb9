/* kmsctl: the kmsd command-line client. `kmsctl COMMAND [SUBCOMMAND] [OPTIONS]`; every
 * level answers --help. Commands are listed in one table: a new command (tenant, key,
 * datakey, ...) is a cli_<name>.c with its entry point added here. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "kms/base/json.h"
#include "kms/cli/cli.h"
#include "kms/core/core.h" /* KMS_VERSION */

static const struct cli_command commands[] = {
	{"audit", "offline audit log tools: verify the hash chain and checkpoint signatures",
	 cli_audit, cli_audit_usage},
};

#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

static void usage(FILE *f)
{
	size_t i;

	fprintf(f, "usage: kmsctl [--help] [--version] COMMAND [ARGS...]\n"
		   "\n"
		   "commands:\n");
	for (i = 0; i < N_COMMANDS; i++)
		fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
	fprintf(f, "\n"
		   "`kmsctl COMMAND --help` describes a command.\n"
		   "Exit status: 0 ok, 1 failure (or a check found a fault), 2 usage error.\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},
		{NULL, 0, NULL, 0},
	};
	size_t i;
	int c;

	kms_json_init();
	/* '+': stop at the command name, whose options are its own. */
	while ((c = getopt_long(argc, argv, "+hV", opts, NULL)) != -1) {
		switch (c) {
		case 'h':
			usage(stdout);
			return CLI_OK;
		case 'V':
			printf("kmsctl %s\n", KMS_VERSION);
			return CLI_OK;
		default:
			usage(stderr);
			return CLI_USAGE;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return CLI_USAGE;
	}
	for (i = 0; i < N_COMMANDS; i++) {
		if (strcmp(argv[optind], commands[i].name) == 0) {
			char **sub = argv + optind;
			int n = argc - optind;

			optind = 0; /* glibc: re-initialise getopt for the command's own parsing */
			return commands[i].run(n, sub);
		}
	}
	fprintf(stderr, "kmsctl: unknown command \"%s\"\n\n", argv[optind]);
	usage(stderr);
	return CLI_USAGE;
}
