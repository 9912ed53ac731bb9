/* kmsctl output: --format json prints the server's data as it came; --format table
 * prints aligned "name  value" lines, lists one name a line, times as UTC dates. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kms/base/json.h"
#include "kms/cli/cli.h"

void cli_print_json(const json_t *v)
{
	json_dumpf(v, stdout, JSON_INDENT(2) | JSON_ENCODE_ANY);
	fputc('\n', stdout);
}

static int is_time_field(const char *name)
{
	static const char *const names[] = {"created", "server_time_utc", "time", NULL};

	for (size_t i = 0; names[i] != NULL; i++)
		if (strcmp(name, names[i]) == 0)
			return 1;
	return 0;
}

/* Writes s with control bytes replaced, so that a value cannot drive the terminal. */
static void put_clean(const char *s)
{
	for (; *s; s++)
		fputc((unsigned char)*s < 0x20 || *s == 0x7f ? '?' : *s, stdout);
}

static void put_time(json_int_t t)
{
	time_t tt = (time_t)t;
	struct tm tm;
	char buf[32];

	if (t > 0 && gmtime_r(&tt, &tm) != NULL && strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm) > 0)
		fputs(buf, stdout);
	else
		printf("%lld", (long long)t);
}

void cli_put_value(const char *name, const json_t *v)
{
	size_t i, len;
	const json_t *e;
	char *s;

	switch (json_typeof(v)) {
	case JSON_STRING:
		put_clean(json_string_value(v));
		break;
	case JSON_INTEGER:
		if (name != NULL && is_time_field(name))
			put_time(json_integer_value(v));
		else
			printf("%lld", (long long)json_integer_value(v));
		break;
	case JSON_REAL:
		printf("%g", json_real_value(v));
		break;
	case JSON_TRUE:
		fputs("true", stdout);
		break;
	case JSON_FALSE:
		fputs("false", stdout);
		break;
	case JSON_NULL:
		fputs(name != NULL && strncmp(name, "expire", 6) == 0 ? "never" : "-", stdout);
		break;
	case JSON_ARRAY:
		if (json_array_size(v) == 0)
			fputs("-", stdout);
		json_array_foreach(v, i, e) {
			if (i > 0)
				fputs(", ", stdout);
			if (json_is_object(e) || json_is_array(e)) {
				s = kms_json_dump(e, &len);
				if (s != NULL)
					put_clean(s);
				kms_json_free_str(s, len);
			} else {
				cli_put_value(NULL, e);
			}
		}
		break;
	case JSON_OBJECT:
		s = kms_json_dump(v, &len);
		if (s != NULL)
			put_clean(s);
		kms_json_free_str(s, len);
		break;
	}
}

static int skipped(const char *name, const char *const *skip)
{
	for (size_t i = 0; skip != NULL && skip[i] != NULL; i++)
		if (strcmp(name, skip[i]) == 0)
			return 1;
	return 0;
}

void cli_print_kv_ordered(const json_t *obj, const char *const *first, const char *const *skip)
{
	const char *name;
	const json_t *v;
	int width = 0;

	json_object_foreach((json_t *)obj, name, v)
		if (!skipped(name, skip) && (int)strlen(name) > width)
			width = (int)strlen(name);
	for (size_t i = 0; first != NULL && first[i] != NULL; i++) {
		v = json_object_get(obj, first[i]);
		if (v == NULL || skipped(first[i], skip))
			continue;
		printf("%-*s  ", width, first[i]);
		cli_put_value(first[i], v);
		fputc('\n', stdout);
	}
	json_object_foreach((json_t *)obj, name, v) {
		if (skipped(name, skip) || skipped(name, first))
			continue;
		printf("%-*s  ", width, name);
		cli_put_value(name, v);
		fputc('\n', stdout);
	}
}

void cli_print_kv(const json_t *obj, const char *const *skip)
{
	cli_print_kv_ordered(obj, NULL, skip);
}

void cli_print_list(const json_t *data)
{
	const json_t *e;
	size_t i;

	json_array_foreach(json_object_get(data, "keys"), i, e) {
		cli_put_value(NULL, e);
		fputc('\n', stdout);
	}
}

void cli_print(const struct cli_client *c, const json_t *data, void (*table)(const json_t *))
{
	if (c->json)
		cli_print_json(data);
	else if (table != NULL)
		table(data);
	else
		cli_print_kv(data, NULL);
	fflush(stdout);
}

const json_t *cli_data(const json_t *answer)
{
	const json_t *d = json_object_get(answer, "data");

	return json_is_object(d) ? d : answer;
}

int cli_simple_call(const char *method, char *path, json_t *body, void (*table)(const json_t *))
{
	struct cli_client c;
	json_t *ans = NULL;
	int rc;

	if (path == NULL) {
		fprintf(stderr, "kmsctl: out of memory\n");
		rc = CLI_SERVER;
		goto out_nc;
	}
	rc = cli_connect(&c, 1);
	if (rc != CLI_OK)
		goto out_nc;
	rc = cli_call(&c, method, path, body, &ans);
	if (rc == CLI_OK)
		cli_print(&c, cli_data(ans), table);
	json_decref(ans);
	cli_disconnect(&c);
out_nc:
	json_decref(body);
	free(path);
	return rc;
}
