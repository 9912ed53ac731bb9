/* TOTP: RFC 6238 appendix B and RFC 4226 appendix D vectors, RFC 4648 base32 vectors,
 * the +-1 step window, replay and clock-back refusal, lockout, otpauth URIs and recovery
 * codes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "kms/base/err.h"
#include "kms/base/secret.h"
#include "policy/totp.h"

static const uint8_t seed20[] = "12345678901234567890";
static const uint8_t seed32[] = "12345678901234567890123456789012";
static const uint8_t seed64[] = "1234567890123456789012345678901234567890123456789012345678901234";

static void test_rfc6238_vectors(void **state)
{
	static const struct {
		int64_t t;
		const char *sha1, *sha256, *sha512;
	} v[] = {
		{59, "94287082", "46119246", "90693936"},
		{1111111109, "07081804", "68084774", "25091201"},
		{1111111111, "14050471", "67062674", "99943326"},
		{1234567890, "89005924", "91819424", "93441116"},
		{2000000000, "69279037", "90698825", "38618901"},
		{20000000000LL, "65353130", "77737706", "47863826"},
	};
	char out[9];
	(void)state;

	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		struct totp_params p = {TOTP_SHA1, 8, 30};
		assert_int_equal(totp_code(seed20, 20, &p, v[i].t, out), KMS_OK);
		assert_string_equal(out, v[i].sha1);
		p.alg = TOTP_SHA256;
		assert_int_equal(totp_code(seed32, 32, &p, v[i].t, out), KMS_OK);
		assert_string_equal(out, v[i].sha256);
		p.alg = TOTP_SHA512;
		assert_int_equal(totp_code(seed64, 64, &p, v[i].t, out), KMS_OK);
		assert_string_equal(out, v[i].sha512);
		/* and each verifies at its own time, with 8 digits */
		uint64_t acc = 0;
		assert_int_equal(totp_verify(seed64, 64, &p, v[i].t, v[i].sha512, 0, &acc), KMS_OK);
		assert_int_equal(acc, (uint64_t)v[i].t / 30);
	}
}

static void test_rfc4226_vectors(void **state)
{
	static const char *const v[] = {"755224", "287082", "359152", "969429", "338314",
					"254676", "287922", "162583", "399871", "520489"};
	struct totp_params p = TOTP_PARAMS_DEFAULT;
	char out[9];
	(void)state;

	for (uint64_t c = 0; c < 10; c++) {
		assert_int_equal(totp_hotp(seed20, 20, &p, c, out), KMS_OK);
		assert_string_equal(out, v[c]);
	}
	p.digits = 5;
	assert_int_equal(totp_hotp(seed20, 20, &p, 0, out), KMS_ERR_INVALID);
	p.digits = 9;
	assert_int_equal(totp_hotp(seed20, 20, &p, 0, out), KMS_ERR_INVALID);
	p = TOTP_PARAMS_DEFAULT;
	p.alg = (enum totp_alg)9;
	assert_int_equal(totp_hotp(seed20, 20, &p, 0, out), KMS_ERR_INVALID);
	p = TOTP_PARAMS_DEFAULT;
	assert_int_equal(totp_hotp(seed20, 0, &p, 0, out), KMS_ERR_INVALID);
	assert_int_equal(totp_code(seed20, 20, &p, -1, out), KMS_ERR_INVALID);
	assert_string_equal(totp_alg_name(TOTP_SHA256), "SHA256");
}

static void test_base32_rfc4648(void **state)
{
	static const char *const in[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
	static const char *const padded[] = {"",	 "MY======", "MZXQ====", "MZXW6===",
					     "MZXW6YQ=", "MZXW6YTB", "MZXW6YTBOI======"};
	static const char *const bare[] = {"", "MY", "MZXQ", "MZXW6", "MZXW6YQ", "MZXW6YTB", "MZXW6YTBOI"};
	static const char *const refused[] = {"M",	   "MZX",      "MZXW6Y",   "MY=",	   "MY=======",
					      "MY=====",   "MZXW1===", "MZXW6===X", "MZ",	   "MZXR",
					      "MY==MY==", "MZXW6YT8", "=MY",	   "MZXW 6YT"};
	char enc[64];
	uint8_t dec[32];
	char low[32];
	(void)state;

	for (size_t i = 0; i < 7; i++) {
		long n = totp_base32_encode((const uint8_t *)in[i], strlen(in[i]), true, enc, sizeof(enc));
		assert_int_equal(n, (long)strlen(padded[i]));
		assert_string_equal(enc, padded[i]);
		n = totp_base32_encode((const uint8_t *)in[i], strlen(in[i]), false, enc, sizeof(enc));
		assert_string_equal(enc, bare[i]);
		n = totp_base32_decode(padded[i], strlen(padded[i]), dec, sizeof(dec));
		assert_int_equal(n, (long)strlen(in[i]));
		assert_memory_equal(dec, in[i], (size_t)n);
		n = totp_base32_decode(bare[i], strlen(bare[i]), dec, sizeof(dec));
		assert_int_equal(n, (long)strlen(in[i]));
		assert_memory_equal(dec, in[i], (size_t)n);
		for (size_t k = 0; k <= strlen(bare[i]); k++)
			low[k] = (char)((bare[i][k] >= 'A' && bare[i][k] <= 'Z') ? bare[i][k] - 'A' + 'a' : bare[i][k]);
		n = totp_base32_decode(low, strlen(low), dec, sizeof(dec));
		assert_int_equal(n, (long)strlen(in[i]));
	}
	for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
		if (totp_base32_decode(refused[i], strlen(refused[i]), dec, sizeof(dec)) != -1)
			fail_msg("base32 \"%s\" accepted", refused[i]);
	/* output buffers too small */
	assert_int_equal(totp_base32_encode((const uint8_t *)"foobar", 6, true, enc, 16), -1);
	assert_int_equal(totp_base32_decode("MZXW6YTBOI", 10, dec, 5), -1);
	/* the RFC 6238 seed as an authenticator app shows it */
	assert_int_equal(totp_base32_encode(seed20, 20, false, enc, sizeof(enc)), 32);
	assert_string_equal(enc, "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
}

static void code_at(int64_t t, char *out)
{
	struct totp_params p = TOTP_PARAMS_DEFAULT;
	assert_int_equal(totp_code(seed20, 20, &p, t, out), KMS_OK);
}

#define T0 1111111111LL /* step 37037037, 1 s into it */

static void test_window(void **state)
{
	struct totp_params p = TOTP_PARAMS_DEFAULT;
	char c[9];
	uint64_t acc;
	(void)state;

	for (int d = -3; d <= 3; d++) {
		code_at(T0 + 30 * d, c);
		acc = 0;
		kms_err rc = totp_verify(seed20, 20, &p, T0, c, 0, &acc);
		if (d >= -1 && d <= 1) {
			assert_int_equal(rc, KMS_OK);
			assert_int_equal(acc, (uint64_t)(T0 / 30 + d));
		} else {
			assert_int_equal(rc, KMS_ERR_DENIED);
		}
	}
	/* the step boundary: 29 s later is still the same step */
	code_at(T0, c);
	assert_int_equal(totp_verify(seed20, 20, &p, T0 + 28, c, 0, &acc), KMS_OK);
	assert_int_equal(acc, (uint64_t)(T0 / 30));
	/* malformed codes */
	assert_int_equal(totp_verify(seed20, 20, &p, T0, "12345", 0, &acc), KMS_ERR_DENIED);
	assert_int_equal(totp_verify(seed20, 20, &p, T0, "1234567", 0, &acc), KMS_ERR_DENIED);
	assert_int_equal(totp_verify(seed20, 20, &p, T0, "12a456", 0, &acc), KMS_ERR_DENIED);
	assert_int_equal(totp_verify(seed20, 20, &p, T0, "", 0, &acc), KMS_ERR_DENIED);
	assert_int_equal(totp_verify(seed20, 20, &p, T0, NULL, 0, &acc), KMS_ERR_DENIED);
	/* a code for another seed */
	code_at(T0, c);
	assert_int_equal(totp_verify(seed32, 32, &p, T0, c, 0, &acc), KMS_ERR_DENIED);
	/* step 0 has no step -1 */
	code_at(0, c);
	assert_int_equal(totp_verify(seed20, 20, &p, 5, c, 0, &acc), KMS_ERR_DENIED); /* step 0 is never > 0 */
	code_at(30, c);
	assert_int_equal(totp_verify(seed20, 20, &p, 5, c, 0, &acc), KMS_OK);
	assert_int_equal(acc, 1);
}

static void test_replay_and_clock_back(void **state)
{
	struct totp_params p = TOTP_PARAMS_DEFAULT;
	char c[9], c2[9];
	uint64_t last = 0, acc = 0;
	(void)state;

	code_at(T0, c);
	assert_int_equal(totp_verify(seed20, 20, &p, T0, c, last, &acc), KMS_OK);
	last = acc;
	/* the same code again, now or a second later: refused */
	assert_int_equal(totp_verify(seed20, 20, &p, T0, c, last, &acc), KMS_ERR_DENIED);
	assert_int_equal(totp_verify(seed20, 20, &p, T0 + 1, c, last, &acc), KMS_ERR_DENIED);
	/* the previous step's code, never used, is older than the last accepted: refused */
	code_at(T0 - 30, c2);
	assert_int_equal(totp_verify(seed20, 20, &p, T0, c2, last, &acc), KMS_ERR_DENIED);
	/* next step: accepted once */
	code_at(T0 + 30, c2);
	assert_int_equal(totp_verify(seed20, 20, &p, T0 + 30, c2, last, &acc), KMS_OK);
	assert_int_equal(acc, last + 1);
	last = acc;
	/* the clock steps back two minutes (or the server restarts with the persisted step):
	 * the code shown for that time is refused */
	code_at(T0 - 120, c2);
	assert_int_equal(totp_verify(seed20, 20, &p, T0 - 120, c2, last, &acc), KMS_ERR_DENIED);
	code_at(T0 - 90, c2);
	assert_int_equal(totp_verify(seed20, 20, &p, T0 - 90, c2, last, &acc), KMS_ERR_DENIED);
	/* a code one step ahead (fast phone) used first, then the current one: refused */
	last = 0;
	code_at(T0 + 30, c);
	assert_int_equal(totp_verify(seed20, 20, &p, T0, c, last, &acc), KMS_OK);
	last = acc;
	code_at(T0, c);
	assert_int_equal(totp_verify(seed20, 20, &p, T0, c, last, &acc), KMS_ERR_DENIED);
}

static void test_check_and_lockout(void **state)
{
	struct totp_params p = TOTP_PARAMS_DEFAULT;
	struct totp_state st = {0, 0};
	char c[9];
	bool locked;
	(void)state;

	assert_false(totp_lockout_valid_limit(0));
	assert_true(totp_lockout_valid_limit(1));
	assert_true(totp_lockout_valid_limit(100));
	assert_false(totp_lockout_valid_limit(101));
	assert_int_equal(totp_failures_after(4, true), 0);
	assert_int_equal(totp_failures_after(4, false), 5);
	assert_int_equal(totp_failures_after(UINT32_MAX, false), UINT32_MAX);

	code_at(T0, c);
	assert_int_equal(totp_check(seed20, 20, &p, T0, c, 0, &st, &locked), KMS_ERR_INVALID);
	assert_int_equal(totp_check(seed20, 20, &p, T0, c, 101, &st, &locked), KMS_ERR_INVALID);
	assert_int_equal(st.failures, 0);

	/* two failures, then success resets the count */
	assert_int_equal(totp_check(seed20, 20, &p, T0, "000000", 3, &st, &locked), KMS_ERR_DENIED);
	assert_int_equal(totp_check(seed20, 20, &p, T0, "bad", 3, &st, &locked), KMS_ERR_DENIED);
	assert_int_equal(st.failures, 2);
	assert_false(locked);
	assert_int_equal(totp_check(seed20, 20, &p, T0, c, 3, &st, &locked), KMS_OK);
	assert_int_equal(st.failures, 0);
	assert_int_equal(st.last_step, (uint64_t)(T0 / 30));
	/* a replay counts as a failure */
	assert_int_equal(totp_check(seed20, 20, &p, T0, c, 3, &st, &locked), KMS_ERR_DENIED);
	assert_int_equal(st.failures, 1);
	/* lock after 3 consecutive failures; then even the right code is refused unchecked */
	assert_int_equal(totp_check(seed20, 20, &p, T0 + 30, "111111", 3, &st, &locked), KMS_ERR_DENIED);
	assert_false(locked);
	assert_int_equal(totp_check(seed20, 20, &p, T0 + 30, "222222", 3, &st, &locked), KMS_ERR_DENIED);
	assert_true(locked);
	assert_true(totp_locked(&st, 3));
	code_at(T0 + 60, c);
	assert_int_equal(totp_check(seed20, 20, &p, T0 + 60, c, 3, &st, &locked), KMS_ERR_DENIED);
	assert_true(locked);
	assert_int_equal(st.failures, 3); /* not counted further, step not consumed */
	assert_int_equal(st.last_step, (uint64_t)(T0 / 30));
	/* an admin reset (failures = 0) lets the same code through */
	st.failures = 0;
	assert_int_equal(totp_check(seed20, 20, &p, T0 + 60, c, 3, &st, &locked), KMS_OK);
	/* a limit of 100 */
	st.failures = 99;
	assert_int_equal(totp_check(seed20, 20, &p, T0 + 90, "333333", 100, &st, &locked), KMS_ERR_DENIED);
	assert_true(locked);
	assert_true(totp_locked(&st, 100));
	assert_true(totp_locked(&st, 0)); /* bad limit: fail closed */
}

static void test_uri(void **state)
{
	struct totp_params p = TOTP_PARAMS_DEFAULT;
	char uri[256];
	long n;
	(void)state;

	n = totp_uri("alice", seed20, 20, &p, uri, sizeof(uri));
	assert_string_equal(uri, "otpauth://totp/kmsd:alice?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=kmsd"
				 "&algorithm=SHA1&digits=6&period=30");
	assert_int_equal(n, (long)strlen(uri));
	p.alg = TOTP_SHA256;
	n = totp_uri("dr smith@er/1", seed32, 32, &p, uri, sizeof(uri));
	assert_true(n > 0);
	assert_non_null(strstr(uri, "otpauth://totp/kmsd:dr%20smith%40er%2F1?secret="));
	assert_non_null(strstr(uri, "&algorithm=SHA256&digits=6&period=30"));
	for (const char *q = uri; *q; q++)
		assert_true(*q > ' ' && *q < 127); /* nothing to escape further */
	assert_null(strstr(uri, "%3D")); /* secret carries no padding */
	assert_int_equal(totp_uri("alice", seed20, 20, &p, uri, 40), -1);
	assert_int_equal(totp_uri("", seed20, 20, &p, uri, sizeof(uri)), -1);
	assert_int_equal(totp_uri("alice", seed20, 10, &p, uri, sizeof(uri)), -1);
	assert_int_equal(totp_uri(NULL, seed20, 20, &p, uri, sizeof(uri)), -1);
}

static void test_seed(void **state)
{
	uint8_t a[20], b[20];
	(void)state;

	assert_int_equal(totp_seed_new(a, sizeof(a)), KMS_OK);
	assert_int_equal(totp_seed_new(b, sizeof(b)), KMS_OK);
	assert_memory_not_equal(a, b, sizeof(a));
	assert_int_equal(totp_seed_new(a, 8), KMS_ERR_INVALID);
	assert_int_equal(totp_seed_new(a, 65), KMS_ERR_INVALID);
}

static bool is_b32(const char *s)
{
	for (; *s; s++)
		if (!((*s >= 'A' && *s <= 'Z') || (*s >= '2' && *s <= '7')))
			return false;
	return true;
}

static void test_recovery(void **state)
{
	char codes[TOTP_RECOVERY_N][TOTP_RECOVERY_LEN + 1], codes2[TOTP_RECOVERY_N][TOTP_RECOVERY_LEN + 1];
	struct totp_recovery set, set2, back;
	char enc[TOTP_RECOVERY_ENC_MAX], alt[64];
	(void)state;

	assert_int_equal(totp_recovery_new(codes, 1000, &set), KMS_OK);
	assert_int_equal(totp_recovery_new(codes2, 1000, &set2), KMS_OK);
	assert_int_equal(set.iter, 1000);
	assert_memory_not_equal(set.salt, set2.salt, sizeof(set.salt));
	for (int i = 0; i < TOTP_RECOVERY_N; i++) {
		assert_int_equal(strlen(codes[i]), TOTP_RECOVERY_LEN);
		assert_true(is_b32(codes[i]));
		for (int j = 0; j < TOTP_RECOVERY_N; j++) {
			if (j != i)
				assert_string_not_equal(codes[i], codes[j]);
			assert_string_not_equal(codes[i], codes2[j]);
		}
	}
	/* the stored form holds no code */
	assert_true(totp_recovery_encode(&set, enc, sizeof(enc)) > 0);
	for (int i = 0; i < TOTP_RECOVERY_N; i++)
		assert_null(strstr(enc, codes[i]));
	assert_int_equal(totp_recovery_left(&set), 10);

	/* each code works once; lower case and a hyphen are accepted */
	assert_int_equal(totp_recovery_use(&set, codes[3]), KMS_OK);
	assert_int_equal(totp_recovery_use(&set, codes[3]), KMS_ERR_DENIED);
	snprintf(alt, sizeof(alt), "%.5s-%.5s", codes[7], codes[7] + 5);
	for (char *p = alt; *p; p++)
		if (*p >= 'A' && *p <= 'Z')
			*p = (char)(*p - 'A' + 'a');
	assert_int_equal(totp_recovery_use(&set, alt), KMS_OK);
	assert_int_equal(totp_recovery_use(&set, codes[7]), KMS_ERR_DENIED);
	assert_int_equal(totp_recovery_left(&set), 8);
	/* another set's code, malformed codes */
	assert_int_equal(totp_recovery_use(&set, codes2[0]), KMS_ERR_DENIED);
	assert_int_equal(totp_recovery_use(&set, "SHORT"), KMS_ERR_DENIED);
	assert_int_equal(totp_recovery_use(&set, "AAAAAAAAAAAA"), KMS_ERR_DENIED);
	assert_int_equal(totp_recovery_use(&set, "AAAAA1AAAA"), KMS_ERR_DENIED);
	assert_int_equal(totp_recovery_use(&set, NULL), KMS_ERR_DENIED);

	/* stored form round trip keeps which codes were used */
	assert_true(totp_recovery_encode(&set, enc, sizeof(enc)) > 0);
	assert_int_equal(strncmp(enc, "r1$1000$", 8), 0);
	assert_int_equal(totp_recovery_decode(enc, &back), KMS_OK);
	assert_memory_equal(&back, &set, sizeof(set));
	assert_int_equal(totp_recovery_use(&back, codes[3]), KMS_ERR_DENIED);
	assert_int_equal(totp_recovery_use(&back, codes[0]), KMS_OK);
	for (int i = 0; i < TOTP_RECOVERY_N; i++)
		if (i != 0 && i != 3 && i != 7)
			assert_int_equal(totp_recovery_use(&back, codes[i]), KMS_OK);
	assert_int_equal(totp_recovery_left(&back), 0);
	assert_int_equal(totp_recovery_use(&back, codes[9]), KMS_ERR_DENIED);

	/* damaged stored forms */
	assert_int_equal(totp_recovery_decode("", &back), KMS_ERR_INVALID);
	assert_int_equal(totp_recovery_decode("r2$1000$", &back), KMS_ERR_INVALID);
	enc[strlen(enc) - 1] = 'g';
	assert_int_equal(totp_recovery_decode(enc, &back), KMS_ERR_INVALID);
	assert_true(totp_recovery_encode(&set, enc, sizeof(enc)) > 0);
	strcat(enc, ",");
	assert_int_equal(totp_recovery_decode(enc, &back), KMS_ERR_INVALID);
	assert_int_equal(totp_recovery_encode(&set, enc, 100), -1);

	/* the default work factor */
	assert_int_equal(totp_recovery_new(codes, 0, &set), KMS_OK);
	assert_int_equal(set.iter, TOTP_RECOVERY_ITER);
	assert_int_equal(totp_recovery_use(&set, codes[9]), KMS_OK);
	kms_wipe(codes, sizeof(codes));
	kms_wipe(codes2, sizeof(codes2));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_rfc6238_vectors),
		cmocka_unit_test(test_rfc4226_vectors),
		cmocka_unit_test(test_base32_rfc4648),
		cmocka_unit_test(test_window),
		cmocka_unit_test(test_replay_and_clock_back),
		cmocka_unit_test(test_check_and_lockout),
		cmocka_unit_test(test_uri),
		cmocka_unit_test(test_seed),
		cmocka_unit_test(test_recovery),
	};
	return cmocka_run_group_tests_name("totp", tests, NULL, NULL);
}
