/* TOTP (RFC 6238 / RFC 4226), base32 (RFC 4648), otpauth URIs, recovery codes. */
#include "policy/totp.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>

#include "kms/base/b64.h"
#include "kms/base/secret.h"

static const char b32_alpha[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

const char *totp_alg_name(enum totp_alg alg)
{
	switch (alg) {
	case TOTP_SHA1:
		return "SHA1";
	case TOTP_SHA256:
		return "SHA256";
	case TOTP_SHA512:
		return "SHA512";
	default:
		return "unknown";
	}
}

static const EVP_MD *alg_md(enum totp_alg alg)
{
	switch (alg) {
	case TOTP_SHA1:
		return EVP_sha1();
	case TOTP_SHA256:
		return EVP_sha256();
	case TOTP_SHA512:
		return EVP_sha512();
	default:
		return NULL;
	}
}

static bool params_ok(const struct totp_params *p)
{
	return p != NULL && alg_md(p->alg) != NULL && p->digits >= 6 && p->digits <= 8 && p->period >= 1 &&
	       p->period <= 300;
}

kms_err totp_hotp(const uint8_t *seed, size_t seed_len, const struct totp_params *p, uint64_t counter,
		  char *out)
{
	uint8_t msg[8], mac[EVP_MAX_MD_SIZE];
	unsigned int maclen = 0;
	uint32_t bin, mod = 1;
	unsigned off;

	if (!params_ok(p) || seed == NULL || seed_len == 0 || seed_len > TOTP_SEED_MAX)
		return kms_errf(KMS_ERR_INVALID, "TOTP: bad seed or parameters");
	for (int i = 7; i >= 0; i--) {
		msg[i] = (uint8_t)(counter & 0xFF);
		counter >>= 8;
	}
	if (HMAC(alg_md(p->alg), seed, (int)seed_len, msg, sizeof(msg), mac, &maclen) == NULL || maclen < 20)
		return kms_errf(KMS_ERR_INTERNAL, "TOTP: HMAC failed");
	off = mac[maclen - 1] & 0x0F;
	bin = ((uint32_t)(mac[off] & 0x7F) << 24) | ((uint32_t)mac[off + 1] << 16) |
	      ((uint32_t)mac[off + 2] << 8) | (uint32_t)mac[off + 3];
	for (unsigned i = 0; i < p->digits; i++)
		mod *= 10;
	bin %= mod;
	for (int i = (int)p->digits - 1; i >= 0; i--) {
		out[i] = (char)('0' + bin % 10);
		bin /= 10;
	}
	out[p->digits] = '\0';
	kms_wipe(mac, sizeof(mac));
	return KMS_OK;
}

kms_err totp_step(const struct totp_params *p, int64_t unix_time, uint64_t *step)
{
	if (!params_ok(p) || unix_time < 0)
		return kms_errf(KMS_ERR_INVALID, "TOTP: bad time or parameters");
	*step = (uint64_t)unix_time / p->period;
	return KMS_OK;
}

kms_err totp_code(const uint8_t *seed, size_t seed_len, const struct totp_params *p, int64_t unix_time,
		  char *out)
{
	uint64_t step = 0;
	kms_err rc = totp_step(p, unix_time, &step);

	if (rc != KMS_OK)
		return rc;
	return totp_hotp(seed, seed_len, p, step, out);
}

static bool code_shape_ok(const char *code, unsigned digits)
{
	size_t n;

	if (code == NULL)
		return false;
	n = strnlen(code, 16);
	if (n != digits)
		return false;
	for (size_t i = 0; i < n; i++)
		if (code[i] < '0' || code[i] > '9')
			return false;
	return true;
}

kms_err totp_verify(const uint8_t *seed, size_t seed_len, const struct totp_params *p, int64_t now,
		    const char *code, uint64_t last_step, uint64_t *accepted)
{
	uint64_t t = 0, found = 0;
	char cand[9];
	kms_err rc;

	if ((rc = totp_step(p, now, &t)) != KMS_OK)
		return rc;
	if (seed == NULL || seed_len == 0 || seed_len > TOTP_SEED_MAX)
		return kms_errf(KMS_ERR_INVALID, "TOTP: bad seed");
	if (!code_shape_ok(code, p->digits))
		return kms_errf(KMS_ERR_DENIED, "TOTP code refused");
	for (int d = -TOTP_WINDOW; d <= TOTP_WINDOW; d++) {
		uint64_t s = t + (uint64_t)(int64_t)d;
		int eq;
		if (d < 0 && t < (uint64_t)-d)
			continue;
		if ((rc = totp_hotp(seed, seed_len, p, s, cand)) != KMS_OK) {
			kms_wipe(cand, sizeof(cand));
			return rc;
		}
		/* every candidate is computed and compared; only then is the step looked at */
		eq = CRYPTO_memcmp(cand, code, p->digits) == 0;
		if (eq && s > last_step && found == 0)
			found = s;
	}
	kms_wipe(cand, sizeof(cand));
	if (found == 0)
		return kms_errf(KMS_ERR_DENIED, "TOTP code refused");
	*accepted = found;
	return KMS_OK;
}

bool totp_lockout_valid_limit(unsigned limit)
{
	return limit >= 1 && limit <= TOTP_LOCKOUT_MAX;
}

bool totp_locked(const struct totp_state *st, unsigned limit)
{
	if (!totp_lockout_valid_limit(limit))
		return true; /* fail closed on a bad configuration */
	return st->failures >= limit;
}

uint32_t totp_failures_after(uint32_t failures, bool success)
{
	if (success)
		return 0;
	return failures == UINT32_MAX ? failures : failures + 1;
}

kms_err totp_check(const uint8_t *seed, size_t seed_len, const struct totp_params *p, int64_t now,
		   const char *code, unsigned limit, struct totp_state *st, bool *locked)
{
	uint64_t step = 0;
	kms_err rc;

	*locked = false;
	if (!totp_lockout_valid_limit(limit))
		return kms_errf(KMS_ERR_INVALID, "TOTP lockout limit must be 1 to %d", TOTP_LOCKOUT_MAX);
	if (totp_locked(st, limit)) {
		*locked = true;
		return kms_errf(KMS_ERR_DENIED, "MFA locked after %u failed attempts", (unsigned)st->failures);
	}
	rc = totp_verify(seed, seed_len, p, now, code, st->last_step, &step);
	if (rc == KMS_OK) {
		st->last_step = step;
		st->failures = 0;
		return KMS_OK;
	}
	if (rc != KMS_ERR_DENIED)
		return rc;
	st->failures = totp_failures_after(st->failures, false);
	*locked = totp_locked(st, limit);
	return kms_errf(KMS_ERR_DENIED, "TOTP code refused");
}

/* ------------------------------------------------------------------ base32 */

long totp_base32_encode(const uint8_t *in, size_t n, bool pad, char *out, size_t outcap)
{
	size_t o = 0, full = TOTP_B32_ENC_LEN(n), need = pad ? full : (n * 8 + 4) / 5;
	uint32_t buf = 0;
	int bits = 0;

	if (outcap < need + 1)
		return -1;
	for (size_t i = 0; i < n; i++) {
		buf = (buf << 8) | in[i];
		bits += 8;
		while (bits >= 5) {
			out[o++] = b32_alpha[(buf >> (bits - 5)) & 31];
			bits -= 5;
		}
		buf &= (1u << bits) - 1;
	}
	if (bits > 0)
		out[o++] = b32_alpha[(buf << (5 - bits)) & 31];
	while (pad && o < full)
		out[o++] = '=';
	out[o] = '\0';
	return (long)o;
}

static int b32_val(char ch)
{
	if (ch >= 'A' && ch <= 'Z')
		return ch - 'A';
	if (ch >= 'a' && ch <= 'z')
		return ch - 'a';
	if (ch >= '2' && ch <= '7')
		return ch - '2' + 26;
	return -1;
}

long totp_base32_decode(const char *in, size_t n, uint8_t *out, size_t outcap)
{
	size_t data = n, o = 0, pads;
	uint32_t buf = 0;
	int bits = 0;

	while (data > 0 && in[data - 1] == '=')
		data--;
	pads = n - data;
	switch (data % 8) {
	case 0: case 2: case 4: case 5: case 7:
		break;
	default:
		return -1;
	}
	if (pads > 0 && (n % 8 != 0 || pads != (8 - data % 8) % 8))
		return -1;
	if (data * 5 / 8 > outcap)
		return -1;
	for (size_t i = 0; i < data; i++) {
		int v = b32_val(in[i]);
		if (v < 0)
			return -1;
		buf = (buf << 5) | (uint32_t)v;
		bits += 5;
		if (bits >= 8) {
			out[o++] = (uint8_t)(buf >> (bits - 8));
			bits -= 8;
		}
		buf &= (1u << bits) - 1;
	}
	if (buf != 0) /* non-zero trailing bits: not a canonical encoding */
		return -1;
	return (long)o;
}

/* ------------------------------------------------------------------ enrolment */

kms_err totp_seed_new(uint8_t *seed, size_t len)
{
	if (seed == NULL || len < TOTP_SEED_MIN || len > TOTP_SEED_MAX)
		return kms_errf(KMS_ERR_INVALID, "TOTP seed must be %d to %d bytes", TOTP_SEED_MIN, TOTP_SEED_MAX);
	if (RAND_bytes(seed, (int)len) != 1)
		return kms_errf(KMS_ERR_INTERNAL, "random generator failed");
	return KMS_OK;
}

long totp_uri(const char *label, const uint8_t *seed, size_t seed_len, const struct totp_params *p, char *out,
	      size_t outcap)
{
	char secret[TOTP_B32_ENC_LEN(TOTP_SEED_MAX) + 1], lab[3 * 64 + 1];
	size_t l = 0;
	int n;

	if (!params_ok(p) || label == NULL || *label == '\0' || strlen(label) > 64 || seed == NULL ||
	    seed_len < TOTP_SEED_MIN || seed_len > TOTP_SEED_MAX)
		return -1;
	for (const char *c = label; *c; c++) {
		unsigned char ch = (unsigned char)*c;
		if ((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' ||
		    ch == '.' || ch == '_' || ch == '~') {
			lab[l++] = (char)ch;
		} else {
			l += (size_t)snprintf(lab + l, sizeof(lab) - l, "%%%02X", ch);
		}
	}
	lab[l] = '\0';
	if (totp_base32_encode(seed, seed_len, false, secret, sizeof(secret)) < 0)
		return -1;
	n = snprintf(out, outcap, "otpauth://totp/kmsd:%s?secret=%s&issuer=kmsd&algorithm=%s&digits=%u&period=%u",
		     lab, secret, totp_alg_name(p->alg), p->digits, p->period);
	kms_wipe(secret, sizeof(secret));
	if (n < 0 || (size_t)n >= outcap) {
		if (outcap > 0)
			kms_wipe(out, outcap);
		return -1;
	}
	return n;
}

/* ------------------------------------------------------------ recovery codes */

/* Upper-cases and drops '-' and ' '; exactly TOTP_RECOVERY_LEN base32 characters. */
static int recovery_normalise(const char *in, char out[TOTP_RECOVERY_LEN + 1])
{
	size_t n = 0;

	if (in == NULL)
		return -1;
	for (size_t i = 0; in[i] && i < 64; i++) {
		char ch = in[i];
		if (ch == '-' || ch == ' ')
			continue;
		if (ch >= 'a' && ch <= 'z')
			ch = (char)(ch - 'a' + 'A');
		if (b32_val(ch) < 0 || n >= TOTP_RECOVERY_LEN)
			return -1;
		out[n++] = ch;
	}
	out[n] = '\0';
	return n == TOTP_RECOVERY_LEN ? 0 : -1;
}

static kms_err recovery_hash(const char *norm, const struct totp_recovery *set, uint8_t out[32])
{
	if (PKCS5_PBKDF2_HMAC(norm, TOTP_RECOVERY_LEN, set->salt, sizeof(set->salt), (int)set->iter, EVP_sha256(),
			      32, out) != 1)
		return kms_errf(KMS_ERR_INTERNAL, "PBKDF2 failed");
	return KMS_OK;
}

kms_err totp_recovery_new(char codes[TOTP_RECOVERY_N][TOTP_RECOVERY_LEN + 1], uint32_t iter,
			  struct totp_recovery *set)
{
	uint8_t r[7];
	kms_err rc = KMS_OK;

	memset(set, 0, sizeof(*set));
	set->iter = iter ? iter : TOTP_RECOVERY_ITER;
	if (RAND_bytes(set->salt, sizeof(set->salt)) != 1)
		return kms_errf(KMS_ERR_INTERNAL, "random generator failed");
	for (int i = 0; i < TOTP_RECOVERY_N; i++) {
		bool dup;
		do {
			uint64_t v = 0;
			if (RAND_bytes(r, sizeof(r)) != 1) {
				rc = kms_errf(KMS_ERR_INTERNAL, "random generator failed");
				goto out;
			}
			for (int k = 0; k < 7; k++)
				v = (v << 8) | r[k];
			for (int k = 0; k < TOTP_RECOVERY_LEN; k++) /* 50 of the 56 bits */
				codes[i][k] = b32_alpha[(v >> (5 * k)) & 31];
			codes[i][TOTP_RECOVERY_LEN] = '\0';
			v = 0;
			dup = false;
			for (int j = 0; j < i; j++)
				dup = dup || strcmp(codes[i], codes[j]) == 0;
		} while (dup);
		if ((rc = recovery_hash(codes[i], set, set->hash[i])) != KMS_OK)
			goto out;
	}
out:
	kms_wipe(r, sizeof(r));
	if (rc != KMS_OK) {
		kms_wipe(codes, sizeof(char[TOTP_RECOVERY_N][TOTP_RECOVERY_LEN + 1]));
		memset(set, 0, sizeof(*set));
	}
	return rc;
}

kms_err totp_recovery_use(struct totp_recovery *set, const char *code)
{
	char norm[TOTP_RECOVERY_LEN + 1];
	uint8_t h[32];
	int found = -1;
	kms_err rc;

	if (set->iter == 0 || recovery_normalise(code, norm) != 0) {
		kms_wipe(norm, sizeof(norm));
		return kms_errf(KMS_ERR_DENIED, "recovery code refused");
	}
	rc = recovery_hash(norm, set, h);
	kms_wipe(norm, sizeof(norm));
	if (rc != KMS_OK)
		return rc;
	for (int i = 0; i < TOTP_RECOVERY_N; i++) {
		int eq = CRYPTO_memcmp(h, set->hash[i], sizeof(h)) == 0;
		if (eq && !(set->used >> i & 1u) && found < 0)
			found = i;
	}
	kms_wipe(h, sizeof(h));
	if (found < 0)
		return kms_errf(KMS_ERR_DENIED, "recovery code refused");
	set->used |= 1u << found;
	return KMS_OK;
}

unsigned totp_recovery_left(const struct totp_recovery *set)
{
	unsigned n = 0;

	for (int i = 0; i < TOTP_RECOVERY_N; i++)
		n += !((set->used >> i) & 1u);
	return n;
}

long totp_recovery_encode(const struct totp_recovery *set, char *out, size_t outcap)
{
	char salt[33], hex[65];
	size_t o;
	int n;

	kms_hex_encode(set->salt, sizeof(set->salt), salt);
	n = snprintf(out, outcap, "r1$%u$%s$%08x$", (unsigned)set->iter, salt, (unsigned)set->used);
	if (n < 0 || (size_t)n >= outcap)
		return -1;
	o = (size_t)n;
	for (int i = 0; i < TOTP_RECOVERY_N; i++) {
		kms_hex_encode(set->hash[i], 32, hex);
		n = snprintf(out + o, outcap - o, "%s%s", i ? "," : "", hex);
		if (n < 0 || (size_t)n >= outcap - o)
			return -1;
		o += (size_t)n;
	}
	return (long)o;
}

static int parse_u32(const char *s, size_t n, int base, uint32_t *out)
{
	uint64_t v = 0;

	if (n == 0 || n > (base == 10 ? 10u : 8u))
		return -1;
	for (size_t i = 0; i < n; i++) {
		int d = base == 16 ? (s[i] >= '0' && s[i] <= '9'   ? s[i] - '0'
				      : s[i] >= 'a' && s[i] <= 'f' ? s[i] - 'a' + 10
								   : -1)
				   : (s[i] >= '0' && s[i] <= '9' ? s[i] - '0' : -1);
		if (d < 0)
			return -1;
		v = v * (uint64_t)base + (uint64_t)d;
	}
	if (v > UINT32_MAX)
		return -1;
	*out = (uint32_t)v;
	return 0;
}

kms_err totp_recovery_decode(const char *s, struct totp_recovery *set)
{
	const char *p, *q;
	size_t got;

	memset(set, 0, sizeof(*set));
	if (s == NULL || strncmp(s, "r1$", 3) != 0)
		goto bad;
	p = s + 3;
	if ((q = strchr(p, '$')) == NULL || parse_u32(p, (size_t)(q - p), 10, &set->iter) != 0 || set->iter == 0)
		goto bad;
	p = q + 1;
	if ((q = strchr(p, '$')) == NULL || q - p != 32 ||
	    kms_hex_decode(p, 32, set->salt, sizeof(set->salt), &got) != 0 || got != sizeof(set->salt))
		goto bad;
	p = q + 1;
	if ((q = strchr(p, '$')) == NULL || q - p != 8 || parse_u32(p, 8, 16, &set->used) != 0 ||
	    (set->used >> TOTP_RECOVERY_N) != 0)
		goto bad;
	p = q + 1;
	for (int i = 0; i < TOTP_RECOVERY_N; i++) {
		if (strlen(p) < 64 || kms_hex_decode(p, 64, set->hash[i], 32, &got) != 0 || got != 32)
			goto bad;
		p += 64;
		if (*p != (i + 1 < TOTP_RECOVERY_N ? ',' : '\0'))
			goto bad;
		p++;
	}
	return KMS_OK;
bad:
	memset(set, 0, sizeof(*set));
	return kms_errf(KMS_ERR_INVALID, "malformed recovery code set");
}
