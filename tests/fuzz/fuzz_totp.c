/* TOTP pieces that read outside input (policy/totp.c): base32 seeds (RFC 4648) as an
 * authenticator app or an operator types them, presented codes, and the stored form of
 * recovery-code sets.
 *
 * Input: one selector byte, then the payload.
 *
 * Properties:
 *   - base32 decode: -1, or a length that fits the buffer and re-encodes (without
 *     padding, upper case) to the input with padding and case removed; decoding into a
 *     buffer one byte short fails or gives the same bytes; encode/decode round trips of
 *     arbitrary bytes, padded and not;
 *   - code verify: an arbitrary string as the code is KMS_OK only when it is exactly
 *     the 6 digits of one of the three accepted steps (computed independently here with
 *     totp_code), and never accepts a step <= last_step;
 *   - recovery set decode: KMS_ERR_INVALID, or a set whose encoding is canonical (decodes
 *     to the same set and encodes to the same text again) and equals the input up to the
 *     case of its hex digits (upper-case hex is read; kmsd writes lower case) and leading
 *     zeros of the iteration count. */
#include <ctype.h>
#include <string.h>
#include <strings.h>

#include "policy/totp.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	return 0;
}

static void b32_decode(const uint8_t *d, size_t n)
{
	char *in = fuzz_dup(d, n, 0), *canon = malloc(n + 1), *back;
	size_t cap = n, k = 0;
	uint8_t *out = malloc(cap ? cap : 1), *out2 = malloc(cap ? cap : 1);
	long got, got2;

	CHECK(canon != NULL && out != NULL && out2 != NULL);
	got = totp_base32_decode(in, n, out, cap);
	if (got >= 0) {
		CHECK((size_t)got <= cap);
		for (size_t i = 0; i < n && in[i] != '='; i++)
			canon[k++] = (char)toupper((unsigned char)in[i]);
		canon[k] = '\0';
		back = malloc(TOTP_B32_ENC_LEN((size_t)got) + 1);
		CHECK(back != NULL);
		CHECK(totp_base32_encode(out, (size_t)got, false, back, TOTP_B32_ENC_LEN((size_t)got) + 1) ==
		      (long)k);
		CHECK(strcmp(back, canon) == 0);
		free(back);
		if (got > 0) {
			got2 = totp_base32_decode(in, n, out2, (size_t)got - 1);
			CHECK(got2 < 0);
		}
	}
	free(in);
	free(canon);
	free(out);
	free(out2);
}

static void b32_roundtrip(const uint8_t *d, size_t n, bool pad)
{
	size_t cap = TOTP_B32_ENC_LEN(n) + 1;
	char *enc = malloc(cap);
	uint8_t *dec = malloc(n ? n : 1);
	long el;

	CHECK(enc != NULL && dec != NULL);
	el = totp_base32_encode(d, n, pad, enc, cap);
	CHECK(el >= 0 && (size_t)el < cap && enc[el] == '\0');
	CHECK(totp_base32_decode(enc, (size_t)el, dec, n) == (long)n);
	CHECK(n == 0 || memcmp(dec, d, n) == 0);
	if (cap > 1)
		CHECK(totp_base32_encode(d, n, pad, enc, (size_t)el) == -1);
	free(enc);
	free(dec);
}

static void code_verify(const uint8_t *d, size_t n)
{
	static const uint8_t seed[20] = "12345678901234567890"; /* RFC 6238's test seed */
	struct totp_params p = {.alg = TOTP_SHA1, .digits = 6, .period = 30};
	char *code = fuzz_dup(d, n, 1), want[3][16];
	const int64_t now = 1700000000;
	uint64_t step = 0, acc = 0, last = n > 0 ? d[0] % 4 : 0;
	bool match = false;
	kms_err rc;

	CHECK(totp_step(&p, now, &step) == KMS_OK);
	last = last ? step - 2 + last : 0; /* 0, or steps now-1, now, now+1 used */
	for (int i = 0; i < 3; i++) {
		CHECK(totp_code(seed, sizeof(seed), &p, now + (i - 1) * 30, want[i]) == KMS_OK);
		if (strcmp(code, want[i]) == 0 && step - 1 + (uint64_t)i > last)
			match = true;
	}
	rc = totp_verify(seed, sizeof(seed), &p, now, code, last, &acc);
	CHECK(rc == (match ? KMS_OK : KMS_ERR_DENIED));
	if (rc == KMS_OK)
		CHECK(acc > last && acc + 1 >= step && acc <= step + 1);
	free(code);
}

static void recovery_decode(const uint8_t *d, size_t n)
{
	char *in = fuzz_dup(d, n, 1), out[TOTP_RECOVERY_ENC_MAX + 1];
	struct totp_recovery set;

	if (strlen(in) == n && totp_recovery_decode(in, &set) == KMS_OK) {
		struct totp_recovery again;
		char out2[TOTP_RECOVERY_ENC_MAX + 1];
		const char *ip = strchr(in + 3, '$'), *op;
		long el = totp_recovery_encode(&set, out, sizeof(out));

		CHECK(el >= 0 && totp_recovery_decode(out, &again) == KMS_OK);
		CHECK(memcmp(&again, &set, sizeof(set)) == 0);
		CHECK(totp_recovery_encode(&again, out2, sizeof(out2)) == el && strcmp(out, out2) == 0);
		/* after the iteration count, the texts differ at most in the case of hex digits */
		op = strchr(out + 3, '$');
		CHECK(ip != NULL && op != NULL && strlen(ip) == strlen(op) && strcasecmp(ip, op) == 0);
	}
	free(in);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1 || size > 4096)
		return 0;
	switch (data[0] % 5) {
	case 0:
		b32_decode(data + 1, size - 1);
		break;
	case 1:
		b32_roundtrip(data + 1, size - 1, true);
		break;
	case 2:
		b32_roundtrip(data + 1, size - 1, false);
		break;
	case 3:
		code_verify(data + 1, size - 1);
		break;
	default:
		recovery_decode(data + 1, size - 1);
		break;
	}
	return 0;
}
