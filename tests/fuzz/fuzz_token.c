/* API token shape check (authn_token_parse): every request's credential goes through it
 * before anything else.
 *
 * Properties:
 *   - it succeeds exactly when an independent model says the text is
 *     "kms." 16 lower-hex "." 64 lower-hex (85 bytes, no more, no less);
 *   - on success the accessor is the 16 characters after "kms." and NUL-terminated
 *     within AUTHN_ACCESSOR_LEN + 1 bytes; on failure the error is
 *     KMS_ERR_UNAUTHENTICATED and the accessor buffer is untouched;
 *   - the token is read only within len (exact-size heap copy; also checked with the
 *     text cut one byte short);
 *   - a freshly made token (authn_token_new) parses, with its own accessor, and the
 *     hash of a token is deterministic and differs after a one-byte change. */
#include <string.h>

#include "policy/authn.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	return 0;
}

static int lower_hex(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

static int model(const char *t, size_t n)
{
	if (n != 85 || memcmp(t, "kms.", 4) != 0 || t[20] != '.')
		return 0;
	for (size_t i = 4; i < 85; i++)
		if (i != 20 && !lower_hex(t[i]))
			return 0;
	return 1;
}

static void check_one(const char *t, size_t n)
{
	char *acc = malloc(AUTHN_ACCESSOR_LEN + 1);
	kms_err rc;

	CHECK(acc != NULL);
	memset(acc, 'X', AUTHN_ACCESSOR_LEN + 1);
	rc = authn_token_parse(t, n, acc);
	CHECK((rc == KMS_OK) == model(t, n));
	if (rc == KMS_OK) {
		CHECK(memcmp(acc, t + 4, AUTHN_ACCESSOR_LEN) == 0 && acc[AUTHN_ACCESSOR_LEN] == '\0');
	} else {
		CHECK(rc == KMS_ERR_UNAUTHENTICATED);
		for (size_t i = 0; i <= AUTHN_ACCESSOR_LEN; i++)
			CHECK(acc[i] == 'X');
	}
	free(acc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char tok[AUTHN_TOKEN_LEN + 1], acc[AUTHN_ACCESSOR_LEN + 1], acc2[AUTHN_ACCESSOR_LEN + 1];
	uint8_t h1[AUTHN_HASH_LEN], h2[AUTHN_HASH_LEN];
	char *t;

	if (size > 1024)
		return 0;
	t = fuzz_dup(data, size, 0);
	check_one(t, size);
	if (size > 0)
		check_one(t, size - 1);

	/* Hashing: deterministic, and a one-byte change is seen. */
	authn_token_hash(t, size, h1);
	authn_token_hash(t, size, h2);
	CHECK(authn_hash_equal(h1, h2));
	if (size > 0) {
		t[size / 2] ^= 1;
		authn_token_hash(t, size, h2);
		CHECK(!authn_hash_equal(h1, h2));
	}
	free(t);

	/* A real token, with the input spliced into its secret half, still parses
	 * whenever the splice keeps it lower-hex. */
	if (size == 1) {
		CHECK(authn_token_new(tok, acc) == KMS_OK);
		CHECK(strlen(tok) == AUTHN_TOKEN_LEN && strlen(acc) == AUTHN_ACCESSOR_LEN);
		CHECK(authn_token_parse(tok, AUTHN_TOKEN_LEN, acc2) == KMS_OK);
		CHECK(strcmp(acc, acc2) == 0);
		tok[AUTHN_TOKEN_LEN - 1] = (char)data[0];
		CHECK((authn_token_parse(tok, AUTHN_TOKEN_LEN, acc2) == KMS_OK) == lower_hex((char)data[0]));
	}
	return 0;
}
