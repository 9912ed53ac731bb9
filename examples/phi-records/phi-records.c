/* phi-records: a small PHI service that keeps FHIR-like Patient records in SQLite with
 * the sensitive fields (name, birthDate, identifier: the MRN) sealed one by one with
 * libkmsclient. The walkthrough is docs/CLIENT.md "The example"; copy from here.
 *
 *   phi-records store DB     seals and stores the sample patients
 *   phi-records read DB      reads every patient back, one JSON line each
 *   phi-records demo DB      both
 *
 * Settings from the environment: KMS_ADDR, KMS_CACERT, KMS_TOKEN_FILE (a 0600 file),
 * KMS_TENANT, KMS_KEY.
 *
 * Each field is sealed under the context {"resourceType":"Patient","field":"<name>"}, and
 * opened only if its header names our tenant, key and that same context: a sealed
 * birthDate copied into the name column does not open. The data-key cache is on, so one data key seals many records' names
 * (within its bounds) instead of one server call per field. */
#include <jansson.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kmsclient.h>

static const char *const SEALED_FIELDS[] = {"identifier", "name", "birthDate"};
#define NSEALED (sizeof(SEALED_FIELDS) / sizeof(SEALED_FIELDS[0]))

static const char *const SAMPLES[] = {
	"{\"resourceType\":\"Patient\",\"id\":\"pat-001\",\"gender\":\"female\","
	"\"identifier\":[{\"system\":\"urn:oid:2.16.840.1.113883.19.5\",\"value\":\"MRN-0042\"}],"
	"\"name\":[{\"family\":\"Doe\",\"given\":[\"Jane\"]}],\"birthDate\":\"1970-01-01\"}",
	"{\"resourceType\":\"Patient\",\"id\":\"pat-002\",\"gender\":\"male\","
	"\"identifier\":[{\"system\":\"urn:oid:2.16.840.1.113883.19.5\",\"value\":\"MRN-0043\"}],"
	"\"name\":[{\"family\":\"Roe\",\"given\":[\"Richard\"]}],\"birthDate\":\"1982-07-14\"}",
	"{\"resourceType\":\"Patient\",\"id\":\"pat-003\",\"gender\":\"other\","
	"\"identifier\":[{\"system\":\"urn:oid:2.16.840.1.113883.19.5\",\"value\":\"MRN-0044\"}],"
	"\"name\":[{\"family\":\"Nguyen\",\"given\":[\"Thi\",\"Mai\"]}],\"birthDate\":\"2001-02-28\"}",
};

static const char *env(const char *name)
{
	const char *v = getenv(name);

	if (v == NULL || v[0] == '\0') {
		fprintf(stderr, "phi-records: set %s\n", name);
		exit(2);
	}
	return v;
}

static int kms_failed(const char *what, kmsc_err e)
{
	fprintf(stderr, "phi-records: %s: %s (HTTP %ld: %s)\n", what, kmsc_strerror(e),
		kmsc_last_status(), kmsc_last_message());
	return 1;
}

/* The context of one field: {"resourceType":"Patient","field":field}. */
static struct kmsc_ctx field_ctx(const char *field, struct kmsc_kv kv[2])
{
	kv[0] = (struct kmsc_kv){"resourceType", "Patient"};
	kv[1] = (struct kmsc_kv){"field", field};
	return (struct kmsc_ctx){kv, 2};
}

static int store(struct kmsc *c, sqlite3 *db, const char *tenant, const char *key)
{
	sqlite3_stmt *st = NULL;
	int rc = 1;

	if (sqlite3_exec(db,
			 "CREATE TABLE IF NOT EXISTS patient ("
			 " id TEXT PRIMARY KEY, gender TEXT,"
			 " identifier BLOB NOT NULL, name BLOB NOT NULL, birth_date BLOB NOT NULL)",
			 NULL, NULL, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(db,
			       "INSERT OR REPLACE INTO patient (id, gender, identifier, name, birth_date)"
			       " VALUES (?, ?, ?, ?, ?)",
			       -1, &st, NULL) != SQLITE_OK) {
		fprintf(stderr, "phi-records: sqlite: %s\n", sqlite3_errmsg(db));
		return 1;
	}
	for (size_t i = 0; i < sizeof(SAMPLES) / sizeof(SAMPLES[0]); i++) {
		json_error_t jerr;
		json_t *p = json_loads(SAMPLES[i], 0, &jerr);

		if (p == NULL)
			goto out;
		sqlite3_reset(st);
		sqlite3_bind_text(st, 1, json_string_value(json_object_get(p, "id")), -1, SQLITE_TRANSIENT);
		sqlite3_bind_text(st, 2, json_string_value(json_object_get(p, "gender")), -1,
				  SQLITE_TRANSIENT);
		for (size_t f = 0; f < NSEALED; f++) {
			struct kmsc_kv kv[2];
			struct kmsc_ctx ctx = field_ctx(SEALED_FIELDS[f], kv);
			char *plain = json_dumps(json_object_get(p, SEALED_FIELDS[f]),
						 JSON_COMPACT | JSON_ENCODE_ANY);
			uint8_t *sealed = NULL;
			size_t n = 0;
			kmsc_err e;

			if (plain == NULL) {
				json_decref(p);
				goto out;
			}
			e = kmsc_seal_buffer(c, tenant, key, &ctx, plain, strlen(plain), &sealed, &n);
			memset(plain, 0, strlen(plain)); /* PHI: do not leave it in freed memory */
			free(plain);
			if (e != KMSC_OK) {
				json_decref(p);
				rc = kms_failed("seal", e);
				goto out;
			}
			sqlite3_bind_blob(st, 3 + (int)f, sealed, (int)n, SQLITE_TRANSIENT);
			kmsc_free(sealed);
		}
		json_decref(p);
		if (sqlite3_step(st) != SQLITE_DONE) {
			fprintf(stderr, "phi-records: sqlite: %s\n", sqlite3_errmsg(db));
			goto out;
		}
	}
	printf("stored %zu patients\n", sizeof(SAMPLES) / sizeof(SAMPLES[0]));
	rc = 0;
out:
	sqlite3_finalize(st);
	return rc;
}

static int read_back(struct kmsc *c, sqlite3 *db, const char *tenant, const char *key)
{
	sqlite3_stmt *st = NULL;
	int rc = 1, n = 0, step;

	if (sqlite3_prepare_v2(db, "SELECT id, gender, identifier, name, birth_date FROM patient ORDER BY id",
			       -1, &st, NULL) != SQLITE_OK) {
		fprintf(stderr, "phi-records: sqlite: %s\n", sqlite3_errmsg(db));
		return 1;
	}
	while ((step = sqlite3_step(st)) == SQLITE_ROW) {
		json_t *p = json_pack("{s:s, s:s, s:s}", "resourceType", "Patient", "id",
				      (const char *)sqlite3_column_text(st, 0), "gender",
				      (const char *)sqlite3_column_text(st, 1));
		char *line;

		if (p == NULL)
			goto out;
		for (size_t f = 0; f < NSEALED; f++) {
			struct kmsc_kv kv[2];
			/* where the field must have been sealed: our tenant and key, its context */
			struct kmsc_ctx ctx = field_ctx(SEALED_FIELDS[f], kv);
			struct kmsc_want want = {tenant, key, &ctx};
			const void *blob = sqlite3_column_blob(st, 2 + (int)f);
			size_t blen = (size_t)sqlite3_column_bytes(st, 2 + (int)f);
			uint8_t *plain = NULL;
			size_t plen = 0;
			json_error_t jerr;
			json_t *v;
			kmsc_err e = kmsc_open_buffer(c, blob, blen, &want, &plain, &plen);

			if (e != KMSC_OK) {
				json_decref(p);
				rc = kms_failed(SEALED_FIELDS[f], e);
				goto out;
			}
			v = json_loadb((const char *)plain, plen, JSON_DECODE_ANY, &jerr);
			kmsc_free_secret(plain);
			if (v == NULL || json_object_set_new(p, SEALED_FIELDS[f], v) != 0) {
				json_decref(p);
				goto out;
			}
		}
		line = json_dumps(p, JSON_COMPACT | JSON_SORT_KEYS);
		json_decref(p);
		if (line == NULL)
			goto out;
		printf("%s\n", line);
		free(line);
		n++;
	}
	if (step != SQLITE_DONE) {
		fprintf(stderr, "phi-records: sqlite: %s\n", sqlite3_errmsg(db));
		goto out;
	}
	printf("read %d patients\n", n);
	rc = 0;
out:
	sqlite3_finalize(st);
	return rc;
}

int main(int argc, char **argv)
{
	struct kmsc_config cfg = {0};
	struct kmsc *c = NULL;
	sqlite3 *db = NULL;
	const char *tenant, *key;
	kmsc_err e;
	int rc = 1;

	if (argc != 3 || (strcmp(argv[1], "store") != 0 && strcmp(argv[1], "read") != 0 &&
			  strcmp(argv[1], "demo") != 0)) {
		fprintf(stderr, "usage: phi-records store|read|demo DB\n");
		return 2;
	}
	cfg.addr = env("KMS_ADDR");
	cfg.ca_file = getenv("KMS_CACERT");
	cfg.token_file = env("KMS_TOKEN_FILE");
	tenant = env("KMS_TENANT");
	key = env("KMS_KEY");
	/* One data key per field kind for up to 5 minutes, 10,000 records or 64 MiB. */
	cfg.cache = 1;
	cfg.cache_max_age_ms = 5 * 60 * 1000;
	cfg.cache_max_messages = 10000;
	cfg.cache_max_bytes = 64u << 20;
	if ((e = kmsc_open(&cfg, &c)) != KMSC_OK)
		return kms_failed("connect", e);
	if (sqlite3_open(argv[2], &db) != SQLITE_OK) {
		fprintf(stderr, "phi-records: %s: %s\n", argv[2], sqlite3_errmsg(db));
		goto out;
	}
	if (strcmp(argv[1], "read") != 0 && store(c, db, tenant, key) != 0)
		goto out;
	if (strcmp(argv[1], "store") != 0 && read_back(c, db, tenant, key) != 0)
		goto out;
	rc = 0;
out:
	sqlite3_close(db);
	kmsc_close(c);
	return rc;
}
