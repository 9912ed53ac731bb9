/* Strict base64 and hex (kms/base/b64.c): decoding hostile text, and encode/decode
 * round trips of arbitrary bytes.
 *
 * Input: one selector byte, then the payload.
 *
 * Properties:
 *   - decode: -1, or a length equal to 3n/4 minus the padding and within outcap;
 *     output buffers are exactly outcap bytes (ASan sees any write past them); a
 *     successful decode re-encodes to exactly the input (only canonical text is
 *     accepted), and decoding into a smaller buffer fails or gives the same bytes;
 *   - encode: exactly KMS_B64_ENC_LEN(n) characters plus a NUL, decodes back to the
 *     bytes; an outcap one short is refused without writing;
 *   - hex: decode succeeds exactly for even-length [0-9a-fA-F]* that fits, and
 *     re-encodes to the lower-cased input; encode/decode round-trips. */
#include <ctype.h>
#include <string.h>

#include "kms/base/b64.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	return 0;
}

static uint8_t *xmalloc(size_t n)
{
	uint8_t *p = malloc(n ? n : 1);

	CHECK(p != NULL);
	return p;
}

static void b64_decode_props(const char *in, size_t n, size_t small)
{
	size_t cap = KMS_B64_DEC_MAX(n), pad = 0;
	uint8_t *out = xmalloc(cap), *out2;
	char *enc;
	long r, r2;

	r = kms_b64_decode(in, n, out, cap);
	if (r >= 0) {
		CHECK(n % 4 == 0);
		if (n > 0 && in[n - 1] == '=')
			pad++;
		if (n > 1 && in[n - 2] == '=')
			pad++;
		CHECK((size_t)r == cap - pad && (size_t)r <= cap);
		enc = (char *)xmalloc(KMS_B64_ENC_LEN((size_t)r) + 1);
		CHECK(kms_b64_encode(out, (size_t)r, enc, KMS_B64_ENC_LEN((size_t)r) + 1) == (long)n);
		CHECK(memcmp(enc, in, n) == 0);
		free(enc);
	}
	if (small > cap)
		small = cap;
	out2 = xmalloc(small);
	r2 = kms_b64_decode(in, n, out2, small);
	if (r2 >= 0) {
		CHECK(r2 == r && (size_t)r2 <= small);
		CHECK(memcmp(out, out2, (size_t)r2) == 0);
	}
	free(out2);
	free(out);
}

static void b64_roundtrip(const uint8_t *in, size_t n)
{
	size_t el = KMS_B64_ENC_LEN(n);
	char *enc = (char *)xmalloc(el + 1);
	uint8_t *dec = xmalloc(n);

	CHECK(kms_b64_encode(in, n, enc, el) == -1); /* one short: refused */
	CHECK(kms_b64_encode(in, n, enc, el + 1) == (long)el);
	CHECK(enc[el] == '\0' && strlen(enc) == el);
	CHECK(kms_b64_decode(enc, el, dec, n) == (long)n);
	CHECK(n == 0 || memcmp(dec, in, n) == 0);
	/* not valid with one character more or fewer */
	if (el > 0)
		CHECK(kms_b64_decode(enc, el - 1, dec, n) == -1);
	free(dec);
	free(enc);
}

static int hex_model(const char *in, size_t n)
{
	if (n % 2 != 0)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!isxdigit((unsigned char)in[i]))
			return 0;
	return 1;
}

static void hex_props(const char *in, size_t n, size_t small)
{
	size_t cap = n / 2, outlen = 0;
	uint8_t *out = xmalloc(cap);
	char *enc;
	int r;

	r = kms_hex_decode(in, n, out, cap, &outlen);
	CHECK((r == 0) == hex_model(in, n));
	if (r == 0) {
		CHECK(outlen == cap);
		enc = (char *)xmalloc(2 * outlen + 1);
		kms_hex_encode(out, outlen, enc);
		for (size_t i = 0; i < n; i++)
			CHECK(enc[i] == tolower((unsigned char)in[i]));
		CHECK(enc[n] == '\0');
		free(enc);
	}
	free(out);
	if (small < cap) {
		out = xmalloc(small);
		CHECK(kms_hex_decode(in, n, out, small, &outlen) == -1);
		free(out);
	}
}

static void hex_roundtrip(const uint8_t *in, size_t n)
{
	char *enc = (char *)xmalloc(2 * n + 1);
	uint8_t *dec = xmalloc(n);
	size_t outlen = 0;

	kms_hex_encode(in, n, enc);
	CHECK(strlen(enc) == 2 * n);
	CHECK(kms_hex_decode(enc, 2 * n, dec, n, &outlen) == 0 && outlen == n);
	CHECK(n == 0 || memcmp(dec, in, n) == 0);
	free(dec);
	free(enc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *in;
	size_t n, small;

	if (size < 1 || size > 65536)
		return 0;
	n = size - 1;
	in = fuzz_dup(data + 1, n, 0);
	small = data[0];
	switch (data[0] & 3) {
	case 0:
		b64_decode_props(in, n, small);
		break;
	case 1:
		b64_roundtrip(data + 1, n);
		break;
	case 2:
		hex_props(in, n, small);
		break;
	default:
		hex_roundtrip(data + 1, n);
		break;
	}
	free(in);
	return 0;
}
