#include "kms/base/b64.h"

static const char b64_alpha[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

long kms_b64_encode(const uint8_t *in, size_t n, char *out, size_t outcap)
{
	size_t i, o = 0;

	if (outcap < KMS_B64_ENC_LEN(n) + 1)
		return -1;
	for (i = 0; i + 2 < n; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
		out[o++] = b64_alpha[v >> 18];
		out[o++] = b64_alpha[(v >> 12) & 63];
		out[o++] = b64_alpha[(v >> 6) & 63];
		out[o++] = b64_alpha[v & 63];
	}
	if (i < n) {
		uint32_t v = (uint32_t)in[i] << 16;
		if (i + 1 < n)
			v |= (uint32_t)in[i + 1] << 8;
		out[o++] = b64_alpha[v >> 18];
		out[o++] = b64_alpha[(v >> 12) & 63];
		out[o++] = i + 1 < n ? b64_alpha[(v >> 6) & 63] : '=';
		out[o++] = '=';
	}
	out[o] = '\0';
	return (long)o;
}

static int b64_val(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

long kms_b64_decode(const char *in, size_t n, uint8_t *out, size_t outcap)
{
	size_t i, o = 0, pad = 0;

	if (n % 4 != 0)
		return -1;
	if (n > 0 && in[n - 1] == '=')
		pad++;
	if (n > 1 && in[n - 2] == '=')
		pad++;
	if (KMS_B64_DEC_MAX(n) - pad > outcap)
		return -1;
	for (i = 0; i < n; i += 4) {
		int v[4];
		int last = (i + 4 == n);
		for (int j = 0; j < 4; j++) {
			if (last && in[i + j] == '=' && j >= 4 - (int)pad) {
				v[j] = 0;
				continue;
			}
			v[j] = b64_val((unsigned char)in[i + j]);
			if (v[j] < 0)
				return -1;
		}
		uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
		out[o++] = (uint8_t)(w >> 16);
		if (!last || pad < 2)
			out[o++] = (uint8_t)(w >> 8);
		if (!last || pad < 1)
			out[o++] = (uint8_t)w;
		/* Canonical form only: the bits that padding hides must be zero. */
		if (last && pad == 1 && (v[2] & 3) != 0)
			return -1;
		if (last && pad == 2 && (v[1] & 15) != 0)
			return -1;
	}
	return (long)o;
}

void kms_hex_encode(const uint8_t *in, size_t n, char *out)
{
	static const char hx[] = "0123456789abcdef";

	for (size_t i = 0; i < n; i++) {
		out[2 * i] = hx[in[i] >> 4];
		out[2 * i + 1] = hx[in[i] & 15];
	}
	out[2 * n] = '\0';
}

int kms_hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int kms_hex_decode(const char *in, size_t n, uint8_t *out, size_t outcap, size_t *outlen)
{
	if (n % 2 != 0 || n / 2 > outcap)
		return -1;
	for (size_t i = 0; i < n / 2; i++) {
		int hi = kms_hex_digit(in[2 * i]), lo = kms_hex_digit(in[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return -1;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	*outlen = n / 2;
	return 0;
}
