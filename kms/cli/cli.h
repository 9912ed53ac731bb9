/* kmsctl: one entry point per top-level command. Each takes its own argv (argv[0] is
 * the command's name), prints its own --help and returns the process exit status:
 * 0 ok, 1 the operation failed (or, for checks, found a fault), 2 usage error. */
#ifndef KMS_CLI_CLI_H
#define KMS_CLI_CLI_H

#include <stdio.h>

#define CLI_OK 0
#define CLI_FAIL 1
#define CLI_USAGE 2

struct cli_command {
	const char *name;
	const char *summary;
	int (*run)(int argc, char **argv);
	void (*usage)(FILE *f);
};

/* kmsctl audit ... (cli_audit.c): offline, needs no server and no token. */
int cli_audit(int argc, char **argv);
void cli_audit_usage(FILE *f);

#endif
