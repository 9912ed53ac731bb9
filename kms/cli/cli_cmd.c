/* kmsctl: command groups, leaves, --help at every level, option and argument checks. */
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms/cli/cli.h"

const char *cli_cmd = "";
static char cmd_path[160];

static int is_help(const char *a)
{
	return strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0;
}

/* --help anywhere among a leaf's arguments (up to a "--"). */
static int wants_help(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--") == 0)
			return 0;
		if (is_help(argv[i]))
			return 1;
	}
	return 0;
}

static void set_cmd(const char *path)
{
	snprintf(cmd_path, sizeof(cmd_path), "%s", path);
	cli_cmd = cmd_path;
}

void cli_global_help(FILE *f)
{
	fprintf(f, "Global options (anywhere on the line; see `kmsctl --help`): --addr URL,\n"
		   "--ca-cert FILE, --token-file FILE|-, --config FILE, --format table|json,\n"
		   "--timeout SECONDS.\n");
}

void cli_leaf_usage(const struct cli_leaf *l, const char *path, FILE *f)
{
	fprintf(f, "usage: kmsctl %s %s\n\n%s\n", path, l->synopsis, l->help);
	cli_global_help(f);
}

void cli_group_usage(const struct cli_group *g, FILE *f)
{
	fprintf(f, "usage: kmsctl %s SUBCOMMAND [ARGS...]\n\n%s\nsubcommands:\n", g->path, g->help);
	for (size_t i = 0; i < g->n; i++)
		fprintf(f, "  %-16s %s\n", g->leaves[i].name, g->leaves[i].summary);
	fprintf(f, "\n`kmsctl %s SUBCOMMAND --help` describes a subcommand.\n", g->path);
	cli_global_help(f);
}

int cli_leaf_run(const struct cli_leaf *l, const char *path, int argc, char **argv)
{
	set_cmd(path);
	if (wants_help(argc, argv)) {
		cli_leaf_usage(l, path, stdout);
		return CLI_OK;
	}
	optind = 0; /* glibc: re-initialise getopt for the leaf's own parsing */
	opterr = 0;
	return l->run(argc, argv);
}

int cli_group_run(const struct cli_group *g, int argc, char **argv)
{
	char path[160];

	set_cmd(g->path);
	if (argc < 2) {
		fprintf(stderr, "kmsctl %s: no subcommand given\n\n", g->path);
		cli_group_usage(g, stderr);
		return CLI_USAGE;
	}
	if (is_help(argv[1]) || strcmp(argv[1], "help") == 0) {
		cli_group_usage(g, stdout);
		return CLI_OK;
	}
	for (size_t i = 0; i < g->n; i++) {
		const struct cli_leaf *l = &g->leaves[i];

		if (strcmp(argv[1], l->name) != 0)
			continue;
		snprintf(path, sizeof(path), "%s %s", g->path, l->name);
		if (l->sub != NULL)
			return cli_group_run(l->sub, argc - 1, argv + 1);
		return cli_leaf_run(l, path, argc - 1, argv + 1);
	}
	fprintf(stderr, "kmsctl %s: unknown subcommand \"%s\"\n\n", g->path, argv[1]);
	cli_group_usage(g, stderr);
	return CLI_USAGE;
}

int cli_usage_error(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "kmsctl %s: ", cli_cmd);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n(see `kmsctl %s --help`)\n", cli_cmd);
	return CLI_USAGE;
}

int cli_getopt(int argc, char **argv, const struct option *opts)
{
	int c = getopt_long(argc, argv, ":", opts, NULL);

	if (c == '?') {
		if (optopt != 0)
			cli_usage_error("unknown option -%c", optopt);
		else
			cli_usage_error("unknown option %s", argv[optind - 1]);
		return -2;
	}
	if (c == ':') {
		cli_usage_error("option %s needs a value", argv[optind - 1]);
		return -2;
	}
	return c;
}

int cli_positionals(int argc, char **argv, int min, int max)
{
	int n = argc - optind;

	if (n < min)
		return cli_usage_error("missing argument%s", min - n > 1 ? "s" : "");
	if (n > max)
		return cli_usage_error("unexpected argument \"%s\"", argv[optind + max]);
	return CLI_OK;
}

int cli_parse_uint(const char *opt, const char *s, long long max, long long *out)
{
	unsigned long long v;
	char *end;

	if (s[0] < '0' || s[0] > '9')
		goto bad;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0 || *end != '\0' || v > (unsigned long long)max)
		goto bad;
	*out = (long long)v;
	return 0;
bad:
	cli_usage_error("%s: \"%s\" is not a whole number from 0 to %lld", opt, s, max);
	return -1;
}

int cli_parse_bool(const char *opt, const char *s, int *out)
{
	static const char *const yes[] = {"true", "on", "yes", "1"}, *const no[] = {"false", "off", "no", "0"};

	for (size_t i = 0; i < 4; i++) {
		if (strcmp(s, yes[i]) == 0) {
			*out = 1;
			return 0;
		}
		if (strcmp(s, no[i]) == 0) {
			*out = 0;
			return 0;
		}
	}
	cli_usage_error("%s: \"%s\" is not true|false (or on|off)", opt, s);
	return -1;
}

/* 3600, 3600s, 60m, 1h, 30d */
int cli_parse_duration(const char *opt, const char *s, long long *out)
{
	const long long max = 100LL * 365 * 86400;
	unsigned long long v, mul = 1;
	char *end;

	if (s[0] < '0' || s[0] > '9')
		goto bad;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0)
		goto bad;
	if (*end != '\0') {
		if (end[1] != '\0')
			goto bad;
		switch (*end) {
		case 's':
			mul = 1;
			break;
		case 'm':
			mul = 60;
			break;
		case 'h':
			mul = 3600;
			break;
		case 'd':
			mul = 86400;
			break;
		default:
			goto bad;
		}
	}
	if (v > (unsigned long long)max / mul)
		goto bad;
	*out = (long long)(v * mul);
	return 0;
bad:
	cli_usage_error("%s: \"%s\" is not a duration (seconds, or a number with s, m, h or d)", opt, s);
	return -1;
}
