#include "policy/authn.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <string.h>

#include "kms/base/b64.h"
#include "kms/base/secret.h"

kms_err authn_token_new(char *token, char *accessor)
{
	uint8_t acc[AUTHN_ACCESSOR_LEN / 2], sec[32];
	char sec_hex[65];

	if (RAND_bytes(acc, sizeof(acc)) != 1 || RAND_bytes(sec, sizeof(sec)) != 1)
		return kms_errf(KMS_ERR_INTERNAL, "random generator failed");
	kms_hex_encode(acc, sizeof(acc), accessor);
	kms_hex_encode(sec, sizeof(sec), sec_hex);
	memcpy(token, "kms.", 4);
	memcpy(token + 4, accessor, AUTHN_ACCESSOR_LEN);
	token[4 + AUTHN_ACCESSOR_LEN] = '.';
	memcpy(token + 5 + AUTHN_ACCESSOR_LEN, sec_hex, 64);
	token[AUTHN_TOKEN_LEN] = '\0';
	kms_wipe(sec, sizeof(sec));
	kms_wipe(sec_hex, sizeof(sec_hex));
	return KMS_OK;
}

static int is_lower_hex(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

kms_err authn_token_parse(const char *token, size_t len, char *accessor)
{
	unsigned bad = 0;

	if (len != AUTHN_TOKEN_LEN || memcmp(token, "kms.", 4) != 0 ||
	    token[4 + AUTHN_ACCESSOR_LEN] != '.')
		return kms_errf(KMS_ERR_UNAUTHENTICATED, "permission denied");
	/* Whole-string scan without early exit: the secret part's content must not
	 * change the time taken. */
	for (size_t i = 4; i < len; i++)
		if (i != 4 + AUTHN_ACCESSOR_LEN)
			bad |= (unsigned)!is_lower_hex(token[i]);
	if (bad)
		return kms_errf(KMS_ERR_UNAUTHENTICATED, "permission denied");
	memcpy(accessor, token + 4, AUTHN_ACCESSOR_LEN);
	accessor[AUTHN_ACCESSOR_LEN] = '\0';
	return KMS_OK;
}

static EVP_MD *sha256_md;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void sha256_fetch(void)
{
	sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

/* Once per request: OpenSSL 3's SHA256() looks the algorithm up by name on every call,
 * which costs more than hashing a token, so the implementation is fetched once. */
void authn_token_hash(const char *token, size_t len, uint8_t out[AUTHN_HASH_LEN])
{
	unsigned n = 0;

	pthread_once(&sha256_once, sha256_fetch);
	if (sha256_md == NULL || EVP_Digest(token, len, out, &n, sha256_md, NULL) != 1 ||
	    n != AUTHN_HASH_LEN)
		SHA256((const unsigned char *)token, len, out);
}

int authn_hash_equal(const uint8_t a[AUTHN_HASH_LEN], const uint8_t b[AUTHN_HASH_LEN])
{
	return CRYPTO_memcmp(a, b, AUTHN_HASH_LEN) == 0;
}
