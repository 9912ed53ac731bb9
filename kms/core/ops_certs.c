/* Client certificates (mTLS): who a verified certificate is, and the admin's mappings
 * from certificates to principals. The TLS layer (kms/http/server.c) has already
 * checked the certificate against tls_client_ca during the handshake; here it is only
 * an SPKI fingerprint and a subject DN, mapped to a principal on every request (no
 * cache: a deleted mapping stops working on the next request). */
#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kms/base/b64.h"
#include "kms/base/json.h"
#include "kms/core/core_int.h"

#define CERT_PEM_MAX 16384

static kms_err refuse(struct op_ctx *x, const char *why)
{
	memset(&x->who, 0, sizeof(x->who));
	x->role = POLICY_ROLE_NONE;
	free(x->scope);
	x->scope = NULL;
	x->n_scope = 0;
	snprintf(x->auth_detail, sizeof(x->auth_detail), "%s", why);
	return kms_errf(KMS_ERR_DENIED, "%s", why);
}

static kms_err lookup(struct core *c, enum store_cert_kind kind, const char *value, int64_t *pid)
{
	kms_err rc;

	*pid = 0;
	if (value == NULL)
		return KMS_OK;
	rc = store_cert_lookup(c->st, kind, value, pid);
	if (rc == KMS_ERR_NOT_FOUND) {
		*pid = 0;
		return KMS_OK;
	}
	return rc;
}

/* The rules (docs/API.md "Client certificates"):
 * - no certificate: the token decides, as before;
 * - a certificate mapped to P (by SPKI fingerprint or by subject; both mapped to
 *   different principals is refused): the caller is P. A token sent as well must be a
 *   valid token of P, else refused;
 * - a certificate mapped to nobody: a token decides; without one, 403 saying so. */
kms_err core_authenticate(struct core *c, const struct core_call *call, struct op_ctx *x)
{
	bool have_token = call->token != NULL && call->token[0] != '\0';
	int64_t by_spki, by_subject, pid;
	kms_err rc;

	x->auth_method = "token";
	if (call->cert_spki == NULL)
		return core_authenticate_token(c, call->token, x);
	x->auth_method = "cert";
	if ((rc = lookup(c, STORE_CERT_SPKI, call->cert_spki, &by_spki)) != KMS_OK ||
	    (rc = lookup(c, STORE_CERT_SUBJECT, call->cert_subject, &by_subject)) != KMS_OK)
		return rc;
	if (by_spki != 0 && by_subject != 0 && by_spki != by_subject)
		return refuse(x, "client certificate maps to two principals (by SPKI and by subject): refused");
	pid = by_spki != 0 ? by_spki : by_subject;
	if (pid == 0) {
		if (have_token) {
			x->auth_method = "token";
			return core_authenticate_token(c, call->token, x);
		}
		return refuse(x, "client certificate is not mapped to a principal");
	}
	if (have_token) {
		rc = core_authenticate_token(c, call->token, x);
		if (rc == KMS_ERR_DENIED || rc == KMS_ERR_UNAUTHENTICATED)
			return refuse(x, "the token sent with the client certificate is not valid");
		if (rc != KMS_OK)
			return rc;
		if (x->who.id != pid)
			return refuse(x, "the token and the client certificate belong to different principals");
		x->auth_method = "cert+token";
		return KMS_OK;
	}
	rc = store_principal_get_id(c->st, pid, &x->who);
	if (rc == KMS_ERR_NOT_FOUND)
		return refuse(x, "client certificate is not mapped to a principal");
	if (rc != KMS_OK)
		return rc;
	x->role = policy_role_parse(x->who.role);
	if (x->role == POLICY_ROLE_SERVICE)
		return store_principal_tenants(c->st, x->who.id, &x->scope, &x->n_scope);
	return KMS_OK;
}

/* ---- the mappings (admin) ---------------------------------------------------------- */

/* SHA-256 of a PEM certificate's SubjectPublicKeyInfo, as 64 lower-case hex. */
static kms_err pem_spki(const char *pem, char hex[65])
{
	unsigned char *der = NULL, md[SHA256_DIGEST_LENGTH];
	X509 *crt = NULL;
	BIO *bio = NULL;
	int len;
	kms_err rc = kms_errf(KMS_ERR_INVALID, "certificate must be one PEM X.509 certificate");

	if (strlen(pem) > CERT_PEM_MAX)
		return kms_errf(KMS_ERR_INVALID, "certificate too large (at most %d bytes of PEM)", CERT_PEM_MAX);
	if ((bio = BIO_new_mem_buf(pem, -1)) == NULL)
		return kms_errf(KMS_ERR_NOMEM, "certificate");
	if ((crt = PEM_read_bio_X509(bio, NULL, NULL, NULL)) == NULL)
		goto out;
	if ((len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(crt), &der)) <= 0)
		goto out;
	SHA256(der, (size_t)len, md);
	kms_hex_encode(md, sizeof(md), hex);
	rc = KMS_OK;
out:
	OPENSSL_free(der);
	X509_free(crt);
	BIO_free(bio);
	return rc;
}

static bool printable_dn(const char *s)
{
	for (const unsigned char *p = (const unsigned char *)s; *p; p++)
		if (*p < 0x20 || *p == 0x7f)
			return false;
	return true;
}

/* The mapping a body names: exactly one of "spki_sha256" (64 hex digits, any case),
 * "subject" (the DN as RFC 4514 text) or "certificate" (PEM: its SPKI fingerprint). */
static kms_err body_mapping(const struct op_ctx *x, enum store_cert_kind *kind, char *value, size_t cap)
{
	static const char *const allowed[] = {"spki_sha256", "subject", "certificate", NULL};
	json_t *body = x->call->body;
	const char *spki = NULL, *subject = NULL, *pem = NULL;
	kms_err rc;

	if (body == NULL)
		return kms_errf(KMS_ERR_INVALID, "body must name the certificate: spki_sha256, subject or certificate");
	if ((rc = kms_json_only(body, allowed)) != KMS_OK || (rc = kms_json_opt_string(body, "spki_sha256", &spki)) != KMS_OK ||
	    (rc = kms_json_opt_string(body, "subject", &subject)) != KMS_OK ||
	    (rc = kms_json_opt_string(body, "certificate", &pem)) != KMS_OK)
		return rc;
	if ((spki != NULL) + (subject != NULL) + (pem != NULL) != 1)
		return kms_errf(KMS_ERR_INVALID, "give exactly one of spki_sha256, subject or certificate");
	if (spki != NULL) {
		size_t i;

		for (i = 0; spki[i] != '\0' && i < 64; i++) {
			if (kms_hex_digit(spki[i]) < 0)
				break;
			value[i] = (char)(spki[i] >= 'A' && spki[i] <= 'F' ? spki[i] - 'A' + 'a' : spki[i]);
		}
		if (i != 64 || spki[i] != '\0')
			return kms_errf(KMS_ERR_INVALID, "spki_sha256 must be 64 hex digits (SHA-256 of the SubjectPublicKeyInfo)");
		value[64] = '\0';
		*kind = STORE_CERT_SPKI;
		return KMS_OK;
	}
	if (pem != NULL) {
		*kind = STORE_CERT_SPKI;
		return pem_spki(pem, value);
	}
	if (subject[0] == '\0' || strlen(subject) > STORE_CERT_VALUE_MAX || !printable_dn(subject))
		return kms_errf(KMS_ERR_INVALID, "subject must be 1-%d bytes of RFC 4514 text without control characters",
				STORE_CERT_VALUE_MAX);
	snprintf(value, cap, "%s", subject);
	*kind = STORE_CERT_SUBJECT;
	return KMS_OK;
}

static kms_err named_principal(struct core *c, struct op_ctx *x, struct store_principal *p)
{
	kms_err rc;

	if (!core_valid_name(x->call->name))
		return kms_errf(KMS_ERR_NOT_FOUND, "principal not found");
	rc = store_principal_get(c->st, x->call->name, p);
	if (rc == KMS_ERR_NOT_FOUND)
		return kms_errf(KMS_ERR_NOT_FOUND, "principal \"%s\" not found", x->call->name);
	return rc;
}

kms_err op_principal_cert_add(struct core *c, struct op_ctx *x)
{
	struct store_principal p;
	enum store_cert_kind kind;
	char value[STORE_CERT_VALUE_MAX + 1];
	int64_t id = 0, now = core_now();
	kms_err rc;

	if ((rc = named_principal(c, x, &p)) != KMS_OK ||
	    (rc = body_mapping(x, &kind, value, sizeof(value))) != KMS_OK ||
	    (rc = store_cert_add(c->st, p.id, kind, value, now, &id)) != KMS_OK)
		return rc;
	x->data = json_pack("{s:s,s:s,s:s,s:I}", "principal", p.name, "kind", store_cert_kind_name(kind), "value",
			    value, "created", (json_int_t)now);
	return x->data != NULL ? KMS_OK : kms_errf(KMS_ERR_NOMEM, "answer");
}

kms_err op_principal_cert_list(struct core *c, struct op_ctx *x)
{
	struct store_principal p;
	struct store_cert *certs = NULL;
	size_t n = 0;
	json_t *arr;
	kms_err rc;

	if ((rc = named_principal(c, x, &p)) != KMS_OK || (rc = store_cert_list(c->st, p.id, &certs, &n)) != KMS_OK)
		return rc;
	arr = json_array();
	for (size_t i = 0; arr != NULL && i < n; i++)
		json_array_append_new(arr, json_pack("{s:s,s:s,s:I}", "kind", store_cert_kind_name(certs[i].kind), "value",
						     certs[i].value, "created", (json_int_t)certs[i].created));
	free(certs);
	x->data = json_pack("{s:s,s:o}", "principal", p.name, "certs", arr);
	return x->data != NULL ? KMS_OK : kms_errf(KMS_ERR_NOMEM, "answer");
}

kms_err op_principal_cert_revoke(struct core *c, struct op_ctx *x)
{
	struct store_principal p;
	enum store_cert_kind kind;
	char value[STORE_CERT_VALUE_MAX + 1];
	kms_err rc;

	if ((rc = named_principal(c, x, &p)) != KMS_OK ||
	    (rc = body_mapping(x, &kind, value, sizeof(value))) != KMS_OK ||
	    (rc = store_cert_delete(c->st, p.id, kind, value)) != KMS_OK)
		return rc;
	x->data = json_pack("{s:s,s:s,s:s}", "principal", p.name, "kind", store_cert_kind_name(kind), "value", value);
	return x->data != NULL ? KMS_OK : kms_errf(KMS_ERR_NOMEM, "answer");
}
