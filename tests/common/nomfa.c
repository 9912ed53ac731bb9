#include "tests/common/nomfa.h"

#include <jansson.h>
#include <stdio.h>

#include "policy/policy_doc.h"

int test_policy_nomfa_file(const char *dir, char *path, size_t cap)
{
	json_error_t je;
	json_t *doc = json_loads(policy_doc_default_json, JSON_REJECT_DUPLICATES, &je);
	json_t *rules = doc ? json_object_get(doc, "rules") : NULL;
	size_t i;
	json_t *r;
	int rc = -1;

	if (!json_is_array(rules))
		goto out;
	json_array_foreach(rules, i, r) {
		json_t *conds = json_object_get(r, "conditions");
		json_object_del(r, "require_mfa");
		json_object_del(r, "require_quorum");
		if (json_is_object(conds)) {
			json_object_del(conds, "mfa_max_age");
			if (json_object_size(conds) == 0)
				json_object_del(r, "conditions");
		}
	}
	if ((size_t)snprintf(path, cap, "%s/policy-nomfa.json", dir) >= cap)
		goto out;
	rc = json_dump_file(doc, path, JSON_INDENT(1)) == 0 ? 0 : -1;
out:
	json_decref(doc);
	return rc;
}
