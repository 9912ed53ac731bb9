/* kmsctl principal cert-add | cert-list | cert-revoke: the client certificates (mTLS)
 * mapped to a principal (docs/KMSCTL.md, docs/API.md "Client certificates"). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms/base/secret.h"
#include "kms/cli/cli.h"

#define CERT_PEM_MAX 16384

/* The mapping named by the options: exactly one of --cert FILE, --spki HEX,
 * --subject DN, as the body's certificate, spki_sha256 or subject. */
static int mapping_body(int argc, char **argv, json_t **out)
{
	static const struct option opts[] = {{"cert", required_argument, NULL, 'c'},
					     {"spki", required_argument, NULL, 's'},
					     {"subject", required_argument, NULL, 'd'},
					     {NULL, 0, NULL, 0}};
	json_t *body = json_object();
	unsigned char *pem = NULL;
	size_t len = 0;
	int c, given = 0, rc = CLI_USAGE;

	if (body == NULL)
		return cli_usage_error("out of memory");
	while ((c = cli_getopt(argc, argv, opts)) != -1) {
		switch (c) {
		case 'c':
			if ((rc = cli_read_input(optarg, CERT_PEM_MAX, &pem, &len)) != CLI_OK)
				goto fail;
			rc = CLI_USAGE;
			if (memchr(pem, '\0', len) != NULL) {
				cli_usage_error("--cert %s: not a PEM file", optarg);
				goto fail;
			}
			json_object_set_new(body, "certificate", json_stringn((const char *)pem, len));
			free(pem);
			pem = NULL;
			break;
		case 's':
			json_object_set_new(body, "spki_sha256", json_string(optarg));
			break;
		case 'd':
			json_object_set_new(body, "subject", json_string(optarg));
			break;
		default:
			goto fail;
		}
		given++;
	}
	if ((rc = cli_positionals(argc, argv, 1, 1)) != CLI_OK)
		goto fail;
	if (given != 1) {
		rc = cli_usage_error("give exactly one of --cert FILE, --spki HEX or --subject DN");
		goto fail;
	}
	*out = body;
	return CLI_OK;
fail:
	free(pem);
	json_decref(body);
	return rc;
}

int cli_principal_cert_add(int argc, char **argv)
{
	json_t *body = NULL;
	int rc = mapping_body(argc, argv, &body);

	if (rc != CLI_OK)
		return rc;
	return cli_simple_call("POST", cli_path("sys", "principals", argv[optind], "certs", NULL), body, NULL);
}

int cli_principal_cert_revoke(int argc, char **argv)
{
	json_t *body = NULL;
	int rc = mapping_body(argc, argv, &body);

	if (rc != CLI_OK)
		return rc;
	return cli_simple_call("POST", cli_path("sys", "principals", argv[optind], "certs", "revoke", NULL), body,
			       NULL);
}

static void print_certs(const json_t *data)
{
	const json_t *certs = json_object_get(data, "certs"), *e;
	size_t i;

	json_array_foreach(certs, i, e)
		printf("%-8s %s\n", json_string_value(json_object_get(e, "kind")),
		       json_string_value(json_object_get(e, "value")));
}

int cli_principal_cert_list(int argc, char **argv)
{
	static const struct option opts[] = {{NULL, 0, NULL, 0}};
	int rc;

	if (cli_getopt(argc, argv, opts) != -1)
		return CLI_USAGE;
	if ((rc = cli_positionals(argc, argv, 1, 1)) != CLI_OK)
		return rc;
	return cli_simple_call("GET", cli_path("sys", "principals", argv[optind], "certs", NULL), NULL, print_certs);
}
