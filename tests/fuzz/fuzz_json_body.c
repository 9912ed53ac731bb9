/* Request bodies: kms_json_parse_object (against json_loadb: the same verdict and value),
 * then the accessors the way the handlers use
 * them (kms_json_only against each handler's list, opt_string/opt_uint/opt_bool on the
 * members they read), at the top level and inside every batch_input item.
 *
 * Properties:
 *   - parse fails with KMS_ERR_INVALID and a detail, or returns an object;
 *   - kms_json_only agrees with an independent membership check;
 *   - opt_uint: an absent member gives the default, a present one a value in [0, max]
 *     equal to the integer (or the canonical decimal string) given; opt_bool gives 0/1
 *     and agrees with the member; opt_string gives the member's own string;
 *   - compact serialisation re-parses (duplicate keys refused) to an equal value. */
#include <string.h>

#include "kms/base/json.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	kms_json_init();
	return 0;
}

/* The allowed-field lists of the handlers (ops_admin.c, ops_data.c). */
static const char *const allow_datakey[] = {"bits", "associated_data", "encryption_context", "context", "nonce", NULL};
static const char *const allow_encrypt[] = {"plaintext", "key_version", "associated_data",
					    "encryption_context", "context", "type", NULL};
static const char *const allow_decrypt[] = {"ciphertext", "associated_data", "encryption_context", "context", NULL};
static const char *const allow_rewrap[] = {"ciphertext", "key_version", "associated_data",
					   "encryption_context", "context", NULL};
static const char *const allow_key[] = {"type", "derived", "convergent_encryption", "exportable",
					"allow_plaintext_backup", NULL};
static const char *const allow_tenant[] = {"retention", NULL};
static const char *const allow_principal[] = {"role", "tenants", NULL};
static const char *const allow_token[] = {"ttl", NULL};
static const char *const allow_revoke[] = {"accessor", NULL};
static const char *const allow_none[] = {NULL};

static const char *const *const lists[] = {allow_datakey, allow_encrypt, allow_decrypt, allow_rewrap,
					   allow_key,	  allow_tenant,	 allow_principal, allow_token,
					   allow_revoke,  allow_none};

static int member_allowed(const char *k, const char *const *allowed)
{
	for (; *allowed != NULL; allowed++)
		if (strcmp(*allowed, k) == 0)
			return 1;
	return 0;
}

static void check_only(json_t *obj, const char *const *allowed)
{
	const char *k;
	json_t *v;
	int want = 1;

	json_object_foreach(obj, k, v) {
		(void)v;
		if (!member_allowed(k, allowed))
			want = 0;
	}
	kms_err rc = kms_json_only(obj, allowed);
	CHECK((rc == KMS_OK) == want);
	CHECK(rc == KMS_OK || rc == KMS_ERR_INVALID);
}

/* Canonical non-negative decimal: what opt_uint accepts from a string. */
static int model_decimal(const char *s, long long *out)
{
	long long x = 0;

	if (*s < '0' || *s > '9')
		return 0;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return 0;
		if (x > (0x7fffffffffffffffLL - (*s - '0')) / 10)
			return 0;
		x = x * 10 + (*s - '0');
	}
	*out = x;
	return 1;
}

static void check_uint(json_t *obj, const char *name, long long dflt, long long max)
{
	json_t *v = json_object_get(obj, name);
	long long out = -12345, want;
	kms_err rc = kms_json_opt_uint(obj, name, dflt, max, &out);

	if (v == NULL || json_is_null(v)) {
		CHECK(rc == KMS_OK && out == dflt);
		return;
	}
	CHECK(rc == KMS_OK || rc == KMS_ERR_INVALID);
	if (rc == KMS_OK)
		CHECK(out >= 0 && out <= max);
	if (json_is_integer(v)) {
		want = json_integer_value(v);
		CHECK((rc == KMS_OK) == (want >= 0 && want <= max));
		if (rc == KMS_OK)
			CHECK(out == want);
	} else if (json_is_string(v)) {
		/* strtoll also takes leading zeros; the model does too */
		if (strlen(json_string_value(v)) == json_string_length(v) &&
		    model_decimal(json_string_value(v), &want)) {
			CHECK((rc == KMS_OK) == (want <= max));
			if (rc == KMS_OK)
				CHECK(out == want);
		} else {
			CHECK(rc != KMS_OK);
		}
	} else {
		CHECK(rc != KMS_OK);
	}
}

static void check_bool(json_t *obj, const char *name)
{
	json_t *v = json_object_get(obj, name);
	int out = -1;
	kms_err rc = kms_json_opt_bool(obj, name, 0, &out);

	if (v == NULL || json_is_null(v)) {
		CHECK(rc == KMS_OK && out == 0);
		return;
	}
	if (json_is_boolean(v)) {
		CHECK(rc == KMS_OK && out == json_is_true(v));
	} else if (json_is_string(v) && strcmp(json_string_value(v), "true") == 0 &&
		   json_string_length(v) == 4) {
		CHECK(rc == KMS_OK && out == 1);
	} else if (json_is_string(v) && strcmp(json_string_value(v), "false") == 0 &&
		   json_string_length(v) == 5) {
		CHECK(rc == KMS_OK && out == 0);
	} else {
		CHECK(rc == KMS_ERR_INVALID);
	}
}

static void check_string(json_t *obj, const char *name)
{
	json_t *v = json_object_get(obj, name);
	const char *out = (const char *)1;
	kms_err rc = kms_json_opt_string(obj, name, &out);

	if (v == NULL || json_is_null(v)) {
		CHECK(rc == KMS_OK && out == NULL);
	} else if (json_is_string(v)) {
		CHECK(rc == KMS_OK && out == json_string_value(v));
	} else {
		CHECK(rc == KMS_ERR_INVALID);
	}
}

static void check_item(json_t *obj)
{
	static const char *const strs[] = {"plaintext", "ciphertext", "associated_data", "context", "type",
					   "retention", "role", "accessor", "nonce"};
	static const char *const bools[] = {"derived", "convergent_encryption", "exportable",
					    "allow_plaintext_backup"};

	for (size_t i = 0; i < sizeof(lists) / sizeof(lists[0]); i++)
		check_only(obj, lists[i]);
	for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++)
		check_string(obj, strs[i]);
	for (size_t i = 0; i < sizeof(bools) / sizeof(bools[0]); i++)
		check_bool(obj, bools[i]);
	check_uint(obj, "bits", 256, 512);
	check_uint(obj, "key_version", 0, 0xffffffffLL);
	check_uint(obj, "ttl", 0, 10LL * 365 * 24 * 3600);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	kms_err err = KMS_ERR_INTERNAL;
	json_t *obj, *back, *batch, *it;
	char *buf, *dump;
	size_t i, dlen = 0;

	if (size > 65536)
		return 0;
	buf = fuzz_dup(data, size, 0);
	obj = kms_json_parse_object(buf, size, &err);
	{
		/* kms_json_parse_object reads the usual bodies itself: it must take exactly
		 * what jansson takes, as the same value, members in the same order */
		json_t *ref = json_loadb(buf, size, JSON_REJECT_DUPLICATES, NULL);
		CHECK((obj != NULL) == (ref != NULL && json_is_object(ref)));
		if (obj != NULL) {
			char *a = kms_json_dump(obj, NULL), *b = kms_json_dump(ref, NULL);
			CHECK(json_equal(obj, ref) && a != NULL && b != NULL && strcmp(a, b) == 0);
			kms_json_free_str(a, 0);
			kms_json_free_str(b, 0);
		}
		json_decref(ref);
	}
	free(buf);
	if (obj == NULL) {
		CHECK(err == KMS_ERR_INVALID);
		CHECK(kms_err_detail(err)[0] != '\0');
		return 0;
	}
	CHECK(err == KMS_OK && json_is_object(obj));
	check_item(obj);
	batch = json_object_get(obj, "batch_input");
	if (json_is_array(batch)) {
		json_array_foreach(batch, i, it) {
			if (json_is_object(it))
				check_item(it);
		}
	}

	dump = kms_json_dump(obj, &dlen);
	CHECK(dump != NULL && dlen == strlen(dump));
	back = kms_json_parse_object(dump, dlen, &err);
	CHECK(back != NULL);
	CHECK(json_equal(obj, back));
	kms_json_free_str(dump, dlen);
	json_decref(back);
	json_decref(obj);
	return 0;
}
