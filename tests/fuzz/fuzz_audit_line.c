/* One audit log line as `kmsctl audit search` and `audit report` read it
 * (kms/audit/search.c, report.c): the files are outside input.
 *
 * Properties:
 *   - audit_view_parse either accepts (a record with seq >= 1 whose time parses to
 *     time_us, every string member a string inside the parsed object) or refuses
 *     with a non-empty reason and nothing held;
 *   - an accepted record matches the empty filter and a filter made of its own
 *     principal, tenant, key, outcome, request id, node, version, status and time;
 *   - both report aggregations take it and produce rows;
 *   - audit_time_parse of the raw text, when it succeeds, gives a time within years
 *     0000-9999 and accepts its own date prefix. */
#include <string.h>

#include "kms/audit/report.h"
#include "kms/audit/search.h"
#include "kms/base/json.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	kms_json_init();
	return 0;
}

static void report_props(enum audit_report_kind kind, const struct audit_view *v)
{
	struct audit_report *rp = NULL;
	json_t *rows;

	CHECK(audit_report_new(kind, v->version ? v->version : 1, &rp) == KMS_OK);
	CHECK(audit_report_add(rp, v) == KMS_OK);
	rows = audit_report_rows(rp);
	CHECK(rows != NULL && json_array_size(rows) <= 1);
	json_decref(rows);
	audit_report_free(rp);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct audit_view v;
	struct audit_filter f;
	char why[256], *s = fuzz_dup(data, size, 1);
	const char *bad;
	int64_t us, again;

	bad = audit_view_parse(s, size, &v, why, sizeof(why));
	if (bad != NULL) {
		CHECK(bad == why && why[0] != '\0' && v.v == NULL);
	} else {
		CHECK(json_is_object(v.v) && v.seq >= 1 && v.time != NULL);
		CHECK(audit_time_parse(v.time, &us) == 0 && us == v.time_us);
		CHECK(v.principal == NULL ||
		      v.principal == json_string_value(json_object_get(v.v, "principal")));
		memset(&f, 0, sizeof(f));
		CHECK(audit_filter_match(&f, &v));
		f.principal = v.principal;
		f.tenant = v.tenant;
		f.key = v.key;
		f.outcome = v.outcome;
		f.request_id = v.request_id;
		f.node = v.node;
		f.has_version = true;
		f.version = v.version;
		f.status = v.status;
		f.has_from = f.has_to = true;
		f.from_us = v.time_us;
		f.to_us = v.time_us + 1;
		CHECK(audit_filter_match(&f, &v));
		f.to_us = v.time_us;
		CHECK(!audit_filter_match(&f, &v));
		report_props(AUDIT_REPORT_ACCESS, &v);
		report_props(AUDIT_REPORT_EXPOSURE, &v);
		audit_view_clear(&v);
	}
	if (audit_time_parse(s, &us) == 0) {
		char date[11];

		CHECK(us >= -62167219200LL * 1000000 - 86400LL * 1000000 &&
		      us < 253402300800LL * 1000000 + 86400LL * 1000000);
		memcpy(date, s, 10);
		date[10] = '\0';
		CHECK(audit_time_parse(date, &again) == 0);
	}
	free(s);
	return 0;
}
