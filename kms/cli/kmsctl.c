/* kmsctl: the kmsd command-line client. `kmsctl COMMAND [SUBCOMMAND] [OPTIONS]`; every
 * level answers --help. Commands are listed in one table: a new command is a
 * cli_<name>.c with its entry point added here.
 *
 * Global options may appear anywhere on the line (before a "--"); main takes them out
 * of argv before the command parses the rest. */
#include <curl/curl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "kms/base/json.h"
#include "kms/base/secret.h"
#include "kms/cli/cli.h"
#include "kms/core/core.h" /* KMS_VERSION */

static const struct cli_command commands[] = {
	{"status", "the server's health (no token needed)", cli_status, cli_status_usage},
	{"tenant", "create, read, list, configure tenants (admin)", cli_tenant, cli_tenant_usage},
	{"principal", "create, read, list principals (admin)", cli_principal, cli_principal_usage},
	{"token", "create (shown once), revoke, look up tokens", cli_token, cli_token_usage},
	{"key", "keys: create, read, list, rotate, config, revoke, restore, history,\n"
		"             legal-hold, version disable|enable|schedule-destroy|cancel-destroy",
	 cli_key, cli_key_usage},
	{"datakey", "a new data key, plaintext and wrapped (service)", cli_datakey, cli_datakey_usage},
	{"encrypt", "encrypt a file's bytes or stdin (service)", cli_encrypt, cli_encrypt_usage},
	{"decrypt", "decrypt a ciphertext, or a batch of them (service)", cli_decrypt, cli_decrypt_usage},
	{"rewrap", "move ciphertexts to the latest key version (service)", cli_rewrap, cli_rewrap_usage},
	{"seal", "envelope-encrypt a file of any size (service)", cli_seal, cli_seal_usage},
	{"open", "decrypt a sealed file (service)", cli_open, cli_open_usage},
	{"mfa", "TOTP step-up: enroll (QR code), confirm, status, verify, unlock,\n"
		"             reset", cli_mfa, cli_mfa_usage},
	{"audit", "offline audit log tools: verify the chain and signatures, search,\n"
		  "             access and exposure reports",
	 cli_audit, cli_audit_usage},
	{"approval", "quorum approval requests: list, show, approve, deny (admin)", cli_approval,
	 cli_approval_usage},
	{"break-glass", "emergency decrypt grants: activate, list, review", cli_break_glass,
	 cli_break_glass_usage},
	{"report", "compliance report: md, json or a self-contained HTML page (admin)", cli_report,
	 cli_report_usage},
	{"policy", "the policy document: read, write (admin), default", cli_policy, cli_policy_usage},
	{"backup", "an encrypted backup archive of the store and audit log (admin)", cli_backup,
	 cli_backup_usage},
};

#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

static void usage(FILE *f)
{
	size_t i;

	fprintf(f, "usage: kmsctl [GLOBAL OPTIONS] COMMAND [SUBCOMMAND] [ARGS...]\n"
		   "\n"
		   "The kmsd command-line client. Every command and subcommand answers --help.\n"
		   "\n"
		   "commands:\n");
	for (i = 0; i < N_COMMANDS; i++)
		fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
	fprintf(f,
		"\n"
		"global options (anywhere on the line):\n"
		"  --addr URL             server address (https:// only)\n"
		"  --ca-cert FILE         PEM CA certificates that sign the server's certificate\n"
		"                         (default: the system's trust store)\n"
		"  --token-file FILE|-    the API token: first line of FILE (which must not be\n"
		"                         readable by group or others), or of stdin\n"
		"  --config FILE          config file (default ~/.config/kmsctl.conf)\n"
		"  --format table|json    table: readable columns (default); json: the server's\n"
		"                         data as it came\n"
		"  --timeout SECONDS      give up on a call after this long (default 30)\n"
		"  --mfa                  ask on the terminal for a TOTP code and send it as\n"
		"                         X-Vault-MFA (admin changes need one; without --mfa\n"
		"                         kmsctl asks when the server says a code is needed)\n"
		"  --client-cert FILE     PEM client certificate for mTLS (kmsd's tls_client_ca);\n"
		"                         mapped to a principal, it authenticates without a token\n"
		"  --client-key FILE      its PEM private key, mode 600 (default: in --client-cert)\n"
		"  --help, --version\n"
		"\n"
		"There is no --token VALUE: a token on the command line is visible to every\n"
		"user (ps, /proc) and stays in shell history. The token comes from, in order:\n"
		"--token-file, KMS_TOKEN, VAULT_TOKEN, the config file (token_file, or token if\n"
		"the file is mode 600), or a prompt on the terminal.\n"
		"\n"
		"environment:\n"
		"  KMS_ADDR, VAULT_ADDR       address (after --addr)\n"
		"  KMS_TOKEN, VAULT_TOKEN     token (after --token-file)\n"
		"  KMS_CACERT, VAULT_CACERT   CA file (after --ca-cert)\n"
		"  KMS_MFA                    TOTP code for X-Vault-MFA (\"123456\", \"totp:123456\"\n"
		"                             or \"recovery:CODE\"); a code is good once\n"
		"  KMS_CLIENT_CERT, VAULT_CLIENT_CERT  client certificate (after --client-cert)\n"
		"  KMS_CLIENT_KEY, VAULT_CLIENT_KEY    client key (after --client-key)\n"
		"  XDG_CONFIG_HOME            where kmsctl.conf is looked for\n"
		"\n"
		"config file (`name = value` lines, # comments): addr, ca_cert, token_file,\n"
		"token, format, timeout, client_cert, client_key. Flags and environment\n"
		"override it. With a client certificate and no token, no token is asked for.\n"
		"\n"
		"exit status:\n"
		"  0  ok\n"
		"  1  the server said no (4xx: bad input, no such tenant or key, permission\n"
		"     denied, state conflict), or `audit verify` found a fault\n"
		"  2  usage error (unknown command or option, missing argument, --token,\n"
		"     unreadable file, no token)\n"
		"  3  the server could not be reached: connection refused, DNS, TLS\n"
		"     verification failed, timeout\n"
		"  4  the server failed (5xx, e.g. 503 token or audit log unavailable) or\n"
		"     answered something that is not kmsd's JSON\n"
		"  5  rewrap --in/--sealed: the run went through, but some items failed\n"
		"     (each named on stderr with its line number or file)\n"
		"Errors print `kmsctl: <HTTP status> <the server's message>` on stderr.\n"
		"\n"
		"examples:\n"
		"  export KMS_ADDR=https://127.0.0.1:8200 KMS_CACERT=var/dev/ca.pem\n"
		"  kmsctl status\n"
		"  kmsctl --token-file var/dev/admin.token key create demo patient-records\n"
		"  kmsctl --token-file var/dev/service.token datakey demo patient-records \\\n"
		"      --context purpose=treatment\n"
		"  kmsctl --token-file var/dev/service.token encrypt demo patient-records --in note.txt\n"
		"\n"
		"`kmsctl COMMAND --help` describes a command. docs/KMSCTL.md has the whole manual;\n"
		"scripts/kmsctl-completion.bash completes commands and options in bash.\n");
}

static const struct {
	const char *name;
	const char **slot;
} globals[] = {
	{"--addr", &cli_opts.addr},
	{"--ca-cert", &cli_opts.ca_cert},
	{"--token-file", &cli_opts.token_file},
	{"--config", &cli_opts.config},
	{"--format", &cli_opts.format},
	{"--timeout", &cli_opts.timeout},
	{"--client-cert", &cli_opts.client_cert},
	{"--client-key", &cli_opts.client_key},
};

/* Takes the global options out of argv (up to "--"); returns the new argc, or -1 after a
 * usage error. */
static int take_globals(int argc, char **argv)
{
	int i, o = 1, rest = 0;

	for (i = 1; i < argc; i++) {
		const char *a = argv[i];
		size_t g, n;
		int matched = 0;

		if (rest || strcmp(a, "--") == 0) {
			rest = 1;
			argv[o++] = argv[i];
			continue;
		}
		if (strcmp(a, "--mfa") == 0) {
			cli_opts.mfa_prompt = 1;
			continue;
		}
		if (strncmp(a, "--mfa=", 6) == 0) {
			kms_wipe(argv[i] + 6, strlen(argv[i] + 6));
			fprintf(stderr, "kmsctl: --mfa takes no value (a code on the command line is visible to "
					"other users): give --mfa alone to be asked, or set KMS_MFA\n");
			return -1;
		}
		if (strcmp(a, "--token") == 0 || strncmp(a, "--token=", 8) == 0) {
			/* Wipe what we can of the value: /proc/PID/cmdline shows argv's memory. */
			if (a[7] == '=')
				kms_wipe(argv[i] + 8, strlen(argv[i] + 8));
			else if (i + 1 < argc)
				kms_wipe(argv[i + 1], strlen(argv[i + 1]));
			fprintf(stderr,
				"kmsctl: --token is refused: a token on the command line is visible to "
				"other users (ps, /proc) and stays in shell history. Use --token-file "
				"FILE (or - for stdin), KMS_TOKEN / VAULT_TOKEN, or the config file.\n");
			return -1;
		}
		for (g = 0; g < sizeof(globals) / sizeof(globals[0]); g++) {
			n = strlen(globals[g].name);
			if (strncmp(a, globals[g].name, n) != 0)
				continue;
			if (a[n] == '=') {
				*globals[g].slot = a + n + 1;
				matched = 1;
			} else if (a[n] == '\0') {
				if (i + 1 >= argc) {
					fprintf(stderr, "kmsctl: option %s needs a value\n", a);
					return -1;
				}
				*globals[g].slot = argv[++i];
				matched = 1;
			}
			break;
		}
		if (!matched)
			argv[o++] = argv[i];
	}
	argv[o] = NULL;
	return o;
}

int main(int argc, char **argv)
{
	const char *cmd;
	size_t i;
	int rc = CLI_USAGE;

	kms_json_init();
	argc = take_globals(argc, argv);
	if (argc < 0)
		return CLI_USAGE;
	/* `report` takes formats of its own (md, json, html) and checks them itself */
	if (cli_opts.format != NULL && strcmp(cli_opts.format, "table") != 0 &&
	    strcmp(cli_opts.format, "json") != 0 && !(argc >= 2 && strcmp(argv[1], "report") == 0)) {
		fprintf(stderr, "kmsctl: --format %s: use table or json\n", cli_opts.format);
		return CLI_USAGE;
	}
	if (argc < 2) {
		fprintf(stderr, "kmsctl: no command given (see `kmsctl --help`)\n");
		return CLI_USAGE;
	}
	cmd = argv[1];
	if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
		usage(stdout);
		return CLI_OK;
	}
	if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "-V") == 0) {
		printf("kmsctl %s\n", KMS_VERSION);
		return CLI_OK;
	}
	for (i = 0; i < N_COMMANDS; i++) {
		if (strcmp(cmd, commands[i].name) == 0) {
			if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
				fprintf(stderr, "kmsctl: cannot initialise libcurl\n");
				return CLI_SERVER;
			}
			optind = 0; /* glibc: re-initialise getopt for the command's own parsing */
			rc = commands[i].run(argc - 1, argv + 1);
			fflush(stdout);
			curl_global_cleanup();
			return rc;
		}
	}
	fprintf(stderr, "kmsctl: unknown %s \"%s\" (see `kmsctl --help`)\n",
		cmd[0] == '-' ? "option" : "command", cmd);
	return CLI_USAGE;
}
