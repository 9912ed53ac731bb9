/* The token layer (see p11.h for the contract and DESIGN "Token object templates" for
 * why every template below looks the way it does).
 *
 * Shape of a struct p11:
 *   - one loaded module, shared by every struct p11 of the process that names the same
 *     library (a process-wide registry counts users; C_Finalize runs when the last one
 *     closes, and only if we were the ones who called C_Initialize);
 *   - a holder session (R/W) on which the user logs in and which stays open until
 *     p11_close: every session object (KEKs being generated, serving copies) is created
 *     and destroyed on it, under obj_lock, so that objects live as long as the process
 *     and creation is serialised (SoftHSM2 2.6.1 races on parallel object creation);
 *   - a pool of read-only sessions for crypto operations, checked out one per call.
 * Nothing here ever calls C_Logout while serving: a logout destroys every private
 * session object of the application (KEKs being generated or rewrapped) and makes the
 * token objects unusable. Serving copies are public session objects (kek_load_call):
 * they die with the holder session at p11_close, or when the token loses it. */
#include "pkcs11/p11.h"

#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/pem.h>
#include <p11-kit/pkcs11.h>

#include "kms/base/log.h"
#include "kms/base/secret.h"
#include "pkcs11/ckr.h"
#include "pkcs11/p11_internal.h"

_Static_assert(sizeof(CK_ULONG) >= sizeof(size_t), "CK_ULONG must hold a size_t");
_Static_assert(sizeof(p11_key) >= sizeof(CK_OBJECT_HANDLE), "p11_key must hold a handle");

#define P11_MAX_SESSIONS 1024
#define P11_MK_CACHE 8 /* master key versions whose handles are remembered */
#define P11_LABEL_MAX 32 /* CK_TOKEN_INFO.label: 32 bytes, space padded */
/* Decrypt needs an output buffer as large as ct || tag on SoftHSM2 (SymDecrypt checks
 * *pulDataLen >= ulEncryptedDataLen). When the caller's buffer is only pt-sized we
 * decrypt into this much stack, and into wiped heap beyond it. */
#define P11_DECRYPT_SCRATCH 4096

/* ---------------------------------------------------------------- module registry */

struct p11_module {
	struct p11_module *next;
	void *dl;
	CK_FUNCTION_LIST_PTR f;
	unsigned refs;
	bool finalize; /* we called C_Initialize, so we call C_Finalize */
};

static pthread_mutex_t modules_lock = PTHREAD_MUTEX_INITIALIZER;
static struct p11_module *modules;

/* PKCS#11 3.0's CK_INTERFACE; p11-kit 0.24's header predates 3.0. */
struct p11_interface {
	CK_UTF8CHAR *name;
	void *functions; /* a CK_FUNCTION_LIST_3_0, whose prefix is CK_FUNCTION_LIST */
	CK_FLAGS flags;
};
typedef CK_RV (*p11_get_interface_fn)(CK_UTF8CHAR *name, CK_VERSION *version,
				      struct p11_interface **iface, CK_FLAGS flags);

static kms_err module_functions(void *dl, const char *path, CK_FUNCTION_LIST_PTR *out)
{
	static char iface_name[] = "PKCS 11";
	p11_get_interface_fn get_interface;
	CK_C_GetFunctionList get_list;
	struct p11_interface *iface = NULL;
	CK_RV rv;

	*out = NULL;
	/* 3.0 modules: ask for the default "PKCS 11" interface. SoftHSM2 2.6.1 has none. */
	get_interface = (p11_get_interface_fn)dlsym(dl, "C_GetInterface");
	if (get_interface != NULL) {
		rv = get_interface((CK_UTF8CHAR *)iface_name, NULL, &iface, 0);
		if (rv == CKR_OK && iface != NULL && iface->functions != NULL) {
			*out = iface->functions;
			return KMS_OK;
		}
		kms_debug("token: C_GetInterface failed (%s), trying C_GetFunctionList",
			  p11_ckr_name(rv));
	}
	get_list = (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList");
	if (get_list == NULL)
		return kms_errf(KMS_ERR_CONFIG,
				"token: %s exports neither C_GetInterface nor C_GetFunctionList",
				path);
	rv = get_list(out);
	if (rv != CKR_OK)
		return p11_ckr_err(rv, "C_GetFunctionList");
	if (*out == NULL)
		return kms_errf(KMS_ERR_TOKEN, "token: C_GetFunctionList returned no list");
	return KMS_OK;
}

static kms_err module_acquire(const char *path, struct p11_module **out)
{
	CK_C_INITIALIZE_ARGS args;
	struct p11_module *m;
	kms_err rc;
	CK_RV rv;
	void *dl;

	*out = NULL;
	pthread_mutex_lock(&modules_lock);
	/* RTLD_NODELETE: a module may keep threads or atexit handlers; unmapping it under
	 * them is worse than keeping a few pages mapped (and LSan can still name it). */
	dl = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
	if (dl == NULL) {
		const char *why = dlerror();

		rc = kms_errf(KMS_ERR_CONFIG, "token: cannot load PKCS#11 module %s: %s", path,
			      why != NULL ? why : "unknown error");
		goto out;
	}
	for (m = modules; m != NULL; m = m->next) {
		if (m->dl == dl) {
			m->refs++;
			dlclose(dl); /* drop the reference this dlopen added */
			*out = m;
			rc = KMS_OK;
			goto out;
		}
	}
	m = calloc(1, sizeof(*m));
	if (m == NULL) {
		dlclose(dl);
		rc = kms_errf(KMS_ERR_NOMEM, "token: out of memory");
		goto out;
	}
	m->dl = dl;
	rc = module_functions(dl, path, &m->f);
	if (rc != KMS_OK)
		goto fail;
	memset(&args, 0, sizeof(args));
	args.flags = CKF_OS_LOCKING_OK;
	rv = m->f->C_Initialize(&args);
	if (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		/* Someone else in this process (a library we link) initialised it; it is theirs
		 * to finalise. */
		kms_warn("token: %s was already initialised in this process; kmsd will not "
			 "finalise it",
			 path);
		m->finalize = false;
	} else if (rv != CKR_OK) {
		rc = p11_ckr_err(rv, "C_Initialize");
		goto fail;
	} else {
		m->finalize = true;
	}
	m->refs = 1;
	m->next = modules;
	modules = m;
	*out = m;
	rc = KMS_OK;
	goto out;
fail:
	dlclose(dl);
	free(m);
out:
	pthread_mutex_unlock(&modules_lock);
	return rc;
}

static void module_release(struct p11_module *m)
{
	struct p11_module **pp;
	CK_RV rv;

	if (m == NULL)
		return;
	pthread_mutex_lock(&modules_lock);
	if (--m->refs == 0) {
		for (pp = &modules; *pp != NULL; pp = &(*pp)->next) {
			if (*pp == m) {
				*pp = m->next;
				break;
			}
		}
		if (m->finalize) {
			rv = m->f->C_Finalize(NULL);
			if (rv != CKR_OK)
				kms_warn("token: C_Finalize failed: %s", p11_ckr_name(rv));
		}
		dlclose(m->dl);
		free(m);
	}
	pthread_mutex_unlock(&modules_lock);
}

/* ---------------------------------------------------------------- slots, login, objects */

static const char *module_path(const struct p11_config *cfg)
{
	return cfg->module != NULL && cfg->module[0] != '\0' ? cfg->module : P11_DEFAULT_MODULE;
}

static kms_err find_slot(CK_FUNCTION_LIST_PTR f, const char *label, CK_SLOT_ID *out)
{
	CK_UTF8CHAR want[P11_LABEL_MAX];
	CK_SLOT_ID *slots = NULL;
	CK_TOKEN_INFO ti;
	CK_ULONG n = 0, i, found = 0;
	size_t len = strlen(label);
	kms_err rc;
	CK_RV rv;
	int attempt;

	if (len == 0 || len > P11_LABEL_MAX)
		return kms_errf(KMS_ERR_CONFIG, "token: label must be 1..32 bytes");
	memset(want, ' ', sizeof(want));
	memcpy(want, label, len);

	/* The slot list can grow between the two calls (hot-plug): retry a few times. */
	for (attempt = 0;; attempt++) {
		rv = f->C_GetSlotList(CK_TRUE, NULL, &n);
		if (rv != CKR_OK)
			return p11_ckr_err(rv, "C_GetSlotList");
		if (n == 0)
			break;
		slots = calloc(n, sizeof(*slots));
		if (slots == NULL)
			return kms_errf(KMS_ERR_NOMEM, "token: out of memory");
		rv = f->C_GetSlotList(CK_TRUE, slots, &n);
		if (rv == CKR_OK)
			break;
		free(slots);
		slots = NULL;
		if (rv != CKR_BUFFER_TOO_SMALL || attempt == 3)
			return p11_ckr_err(rv, "C_GetSlotList");
	}
	for (i = 0; i < n; i++) {
		rv = f->C_GetTokenInfo(slots[i], &ti);
		if (rv == CKR_TOKEN_NOT_PRESENT || rv == CKR_TOKEN_NOT_RECOGNIZED)
			continue;
		if (rv != CKR_OK) {
			rc = p11_ckr_err(rv, "C_GetTokenInfo");
			goto out;
		}
		if ((ti.flags & CKF_TOKEN_INITIALIZED) == 0)
			continue;
		if (memcmp(ti.label, want, sizeof(want)) == 0) {
			if (found++ == 0)
				*out = slots[i];
		}
	}
	if (found == 0)
		rc = kms_errf(KMS_ERR_TOKEN, "token: no initialised token labelled \"%s\"", label);
	else if (found > 1)
		rc = kms_errf(KMS_ERR_CONFIG, "token: %lu tokens are labelled \"%s\"",
			      (unsigned long)found, label);
	else
		rc = KMS_OK;
out:
	free(slots);
	return rc;
}

static kms_err login(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s, CK_USER_TYPE who,
		     const char *pin, size_t pin_len)
{
	CK_RV rv;

	/* The module keeps no pointer to the PIN; C_Login's prototype is just not const. */
	rv = f->C_Login(s, who, (CK_UTF8CHAR_PTR)pin, (CK_ULONG)pin_len);
	if (rv == CKR_USER_ALREADY_LOGGED_IN && who == CKU_USER) {
		/* Login state is per application: another struct p11 of this process on the
		 * same token logged in already. */
		return KMS_OK;
	}
	if (rv != CKR_OK) {
		kms_err e = p11_ckr_err(rv, who == CKU_SO ? "C_Login(SO)" : "C_Login(user)");

		if (rv == CKR_PIN_INCORRECT)
			kms_errf(e, "token: %s PIN incorrect (CKR_PIN_INCORRECT)",
				 who == CKU_SO ? "SO" : "user");
		return e;
	}
	return KMS_OK;
}

/* Counts (0, 1 or 2 meaning "more than one") token objects of class cls labelled
 * label; *h receives the first. */
static kms_err find_object(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls,
			   const char *label, CK_OBJECT_HANDLE *h, unsigned *count)
{
	CK_BBOOL yes = CK_TRUE;
	CK_ATTRIBUTE tmpl[] = {
		{CKA_CLASS, &cls, sizeof(cls)},
		{CKA_TOKEN, &yes, sizeof(yes)},
		{CKA_LABEL, (void *)label, strlen(label)},
	};
	CK_OBJECT_HANDLE found[2] = {CK_INVALID_HANDLE, CK_INVALID_HANDLE};
	CK_ULONG n = 0;
	CK_RV rv, rv2;

	*h = CK_INVALID_HANDLE;
	*count = 0;
	rv = f->C_FindObjectsInit(s, tmpl, sizeof(tmpl) / sizeof(tmpl[0]));
	if (rv != CKR_OK)
		return p11_ckr_err(rv, "C_FindObjectsInit");
	rv = f->C_FindObjects(s, found, 2, &n);
	rv2 = f->C_FindObjectsFinal(s);
	if (rv != CKR_OK)
		return p11_ckr_err(rv, "C_FindObjects");
	if (rv2 != CKR_OK)
		return p11_ckr_err(rv2, "C_FindObjectsFinal");
	*h = found[0];
	*count = (unsigned)n;
	return KMS_OK;
}

/* The same for secret keys. */
static kms_err find_key(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s, const char *label,
			CK_OBJECT_HANDLE *h, unsigned *count)
{
	return find_object(f, s, CKO_SECRET_KEY, label, h, count);
}

/* ---------------------------------------------------------------- templates */

static CK_BBOOL ck_true = CK_TRUE;
static CK_BBOOL ck_false = CK_FALSE;
static CK_OBJECT_CLASS cls_secret = CKO_SECRET_KEY;
static CK_KEY_TYPE kt_aes = CKK_AES;
static CK_KEY_TYPE kt_generic = CKK_GENERIC_SECRET;
static CK_ULONG len_32 = 32;
static CK_MECHANISM_TYPE mk_mechs[] = {CKM_AES_KEY_WRAP_PAD};
static CK_MECHANISM_TYPE mac_mechs[] = {CKM_SHA256_HMAC};
static CK_OBJECT_CLASS cls_private = CKO_PRIVATE_KEY;
static CK_OBJECT_CLASS cls_public = CKO_PUBLIC_KEY;
static CK_KEY_TYPE kt_ec = CKK_EC;
/* SoftHSM2 2.6.1 offers CKM_ECDSA but no CKM_ECDSA_SHA256: the key signs digests. */
static CK_MECHANISM_TYPE audit_sign_mechs[] = {CKM_ECDSA};
/* DER OBJECT IDENTIFIER 1.2.840.10045.3.1.7 (prime256v1, NIST P-256). */
static CK_BYTE p256_params[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
/* Every key unwrapped under the MK must be sensitive and wrappable only by a trusted
 * key. A template naming these two attributes with other values is refused by the
 * token (CKR_TEMPLATE_INCONSISTENT), so every unwrap names both explicitly. */
static CK_ATTRIBUTE mk_unwrap_template[] = {
	{CKA_SENSITIVE, &ck_true, sizeof(CK_BBOOL)},
	{CKA_WRAP_WITH_TRUSTED, &ck_true, sizeof(CK_BBOOL)},
};

#define A(type, var) {type, &(var), sizeof(var)}
#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

/* ---------------------------------------------------------------- master key checks */

static kms_err mk_bad(const char *label, const char *what)
{
	kms_error("token: master key %s %s; refusing to use it", label, what);
	return kms_errf(KMS_ERR_TOKEN, "token: master key %s %s", label, what);
}

static void mk_label(uint32_t version, char *buf, size_t cap)
{
	snprintf(buf, cap, P11_LABEL_MK_FMT, (unsigned)version);
}

/* Checks the properties DESIGN relies on: a copy that lost any of them would reopen an
 * extraction path, so it is refused loudly rather than used. */
static kms_err mk_verify(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE mk,
			 const char *label)
{
	CK_BBOOL trusted = CK_FALSE, token = CK_FALSE, priv = CK_FALSE, sensitive = CK_FALSE;
	CK_BBOOL extractable = CK_TRUE;
	CK_ATTRIBUTE flags[] = {
		A(CKA_TRUSTED, trusted),     A(CKA_TOKEN, token),
		A(CKA_PRIVATE, priv),	     A(CKA_SENSITIVE, sensitive),
		A(CKA_EXTRACTABLE, extractable),
	};
	CK_MECHANISM_TYPE mechs[4];
	CK_ATTRIBUTE mech_attr = {CKA_ALLOWED_MECHANISMS, mechs, sizeof(mechs)};
	CK_BBOOL ut_sensitive = CK_FALSE, ut_wwt = CK_FALSE;
	CK_ATTRIBUTE ut_inner[] = {
		A(CKA_SENSITIVE, ut_sensitive),
		A(CKA_WRAP_WITH_TRUSTED, ut_wwt),
	};
	CK_ATTRIBUTE ut = {CKA_UNWRAP_TEMPLATE, NULL, 0};
	CK_RV rv;

	rv = f->C_GetAttributeValue(s, mk, flags, NELEM(flags));
	if (rv != CKR_OK)
		return p11_ckr_err(rv, "C_GetAttributeValue(master key)");
	if (trusted != CK_TRUE)
		return mk_bad(label, "is not CKA_TRUSTED");
	if (token != CK_TRUE || priv != CK_TRUE)
		return mk_bad(label, "is not a private token object");
	if (sensitive != CK_TRUE || extractable != CK_FALSE)
		return mk_bad(label, "is not sensitive and unextractable");

	rv = f->C_GetAttributeValue(s, mk, &mech_attr, 1);
	if (rv == CKR_BUFFER_TOO_SMALL || rv == CKR_ATTRIBUTE_TYPE_INVALID)
		return mk_bad(label, "does not restrict CKA_ALLOWED_MECHANISMS to CKM_AES_KEY_WRAP_PAD");
	if (rv != CKR_OK)
		return p11_ckr_err(rv, "C_GetAttributeValue(CKA_ALLOWED_MECHANISMS)");
	if (mech_attr.ulValueLen != sizeof(CK_MECHANISM_TYPE) || mechs[0] != CKM_AES_KEY_WRAP_PAD)
		return mk_bad(label, "does not restrict CKA_ALLOWED_MECHANISMS to CKM_AES_KEY_WRAP_PAD");

	/* An attribute array is read in two steps: its size, then values by type. The
	 * module fills as many entries as the array has, so the size must match ours
	 * exactly before a buffer is handed over. */
	rv = f->C_GetAttributeValue(s, mk, &ut, 1);
	if (rv == CKR_ATTRIBUTE_TYPE_INVALID)
		return mk_bad(label, "has no CKA_UNWRAP_TEMPLATE");
	if (rv != CKR_OK)
		return p11_ckr_err(rv, "C_GetAttributeValue(CKA_UNWRAP_TEMPLATE)");
	if (ut.ulValueLen != sizeof(ut_inner))
		return mk_bad(label, "has an unexpected CKA_UNWRAP_TEMPLATE");
	ut.pValue = ut_inner;
	ut.ulValueLen = sizeof(ut_inner);
	rv = f->C_GetAttributeValue(s, mk, &ut, 1);
	if (rv != CKR_OK)
		return p11_ckr_err(rv, "C_GetAttributeValue(CKA_UNWRAP_TEMPLATE)");
	if (ut_inner[0].type != CKA_SENSITIVE || ut_inner[1].type != CKA_WRAP_WITH_TRUSTED ||
	    ut_sensitive != CK_TRUE || ut_wwt != CK_TRUE)
		return mk_bad(label, "has an unexpected CKA_UNWRAP_TEMPLATE");
	return KMS_OK;
}

/* ---------------------------------------------------------------- provisioning */

enum login_state { LOGGED_OUT, LOGGED_USER, LOGGED_SO };

static kms_err logout(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s, enum login_state *st)
{
	CK_RV rv = f->C_Logout(s);

	if (rv != CKR_OK && rv != CKR_USER_NOT_LOGGED_IN)
		return p11_ckr_err(rv, "C_Logout");
	*st = LOGGED_OUT;
	return KMS_OK;
}

/* The master-key ceremony (DESIGN): CKA_TRUSTED can be set only by the SO and only at
 * creation, and the SO cannot create private objects. So the SO generates a *session*,
 * public, trusted staging key (a public token object would be written to disk in the
 * clear), logs out (a logout destroys only private session objects, so the staging key
 * survives), the user logs in and copies it into a private token object, which keeps
 * CKA_TRUSTED, the unwrap template and the mechanism list, and the staging key is
 * destroyed. Enters and leaves with the user logged in on s. */
static kms_err mk_ceremony(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s, const char *label,
			   const char *so_pin, size_t so_pin_len, const char *user_pin,
			   size_t user_pin_len, enum login_state *st)
{
	static char staging_label[] = P11_LABEL_MK_STAGING;
	CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
	CK_ATTRIBUTE staging_tmpl[] = {
		A(CKA_CLASS, cls_secret),
		A(CKA_KEY_TYPE, kt_aes),
		A(CKA_VALUE_LEN, len_32),
		A(CKA_TOKEN, ck_false),
		A(CKA_PRIVATE, ck_false),
		A(CKA_TRUSTED, ck_true),
		A(CKA_SENSITIVE, ck_true),
		A(CKA_EXTRACTABLE, ck_false),
		A(CKA_WRAP, ck_true),
		A(CKA_UNWRAP, ck_true),
		A(CKA_ENCRYPT, ck_false),
		A(CKA_DECRYPT, ck_false),
		A(CKA_SIGN, ck_false),
		A(CKA_VERIFY, ck_false),
		A(CKA_DERIVE, ck_false),
		{CKA_ALLOWED_MECHANISMS, mk_mechs, sizeof(mk_mechs)},
		{CKA_UNWRAP_TEMPLATE, mk_unwrap_template, sizeof(mk_unwrap_template)},
		{CKA_LABEL, staging_label, sizeof(staging_label) - 1},
	};
	CK_ATTRIBUTE copy_tmpl[] = {
		A(CKA_TOKEN, ck_true),
		A(CKA_PRIVATE, ck_true),
		{CKA_LABEL, (void *)label, strlen(label)},
	};
	CK_OBJECT_HANDLE staging = CK_INVALID_HANDLE, mk = CK_INVALID_HANDLE;
	kms_err rc;
	CK_RV rv;

	if (so_pin == NULL || so_pin_len == 0)
		return kms_errf(KMS_ERR_INVALID, "token: creating the master key needs the SO PIN");

	rc = logout(f, s, st);
	if (rc != KMS_OK)
		return rc;
	rc = login(f, s, CKU_SO, so_pin, so_pin_len);
	if (rc != KMS_OK)
		goto out;
	*st = LOGGED_SO;
	rv = f->C_GenerateKey(s, &gen, staging_tmpl, NELEM(staging_tmpl), &staging);
	if (rv != CKR_OK) {
		rc = p11_ckr_err(rv, "C_GenerateKey(master key staging, as SO)");
		goto out;
	}
	rc = logout(f, s, st);
	if (rc != KMS_OK)
		goto out;
	rc = login(f, s, CKU_USER, user_pin, user_pin_len);
	if (rc != KMS_OK)
		goto out;
	*st = LOGGED_USER;
	rv = f->C_CopyObject(s, staging, copy_tmpl, NELEM(copy_tmpl), &mk);
	if (rv != CKR_OK) {
		rc = p11_ckr_err(rv, "C_CopyObject(master key)");
		goto out;
	}
	rc = mk_verify(f, s, mk, label);
	if (rc != KMS_OK) {
		rv = f->C_DestroyObject(s, mk);
		if (rv != CKR_OK)
			kms_error("token: could not destroy the faulty master key copy: %s",
				  p11_ckr_name(rv));
		goto out;
	}
	kms_info("token: master key %s created (trusted, wrap/unwrap with KWP only)", label);
out:
	if (staging != CK_INVALID_HANDLE) {
		rv = f->C_DestroyObject(s, staging);
		if (rv != CKR_OK) {
			/* It dies with the session anyway; say so, but do not fail a good MK. */
			kms_warn("token: C_DestroyObject(staging key) failed: %s", p11_ckr_name(rv));
		}
	}
	if (*st == LOGGED_SO) {
		/* Never leave the SO logged in, whatever failed. */
		if (logout(f, s, st) != KMS_OK)
			kms_warn("token: SO logout failed");
	}
	return rc;
}

static kms_err mac_key_create(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s, const char *label)
{
	CK_MECHANISM gen = {CKM_GENERIC_SECRET_KEY_GEN, NULL, 0};
	CK_ATTRIBUTE tmpl[] = {
		A(CKA_CLASS, cls_secret),
		A(CKA_KEY_TYPE, kt_generic),
		A(CKA_VALUE_LEN, len_32),
		A(CKA_TOKEN, ck_true),
		A(CKA_PRIVATE, ck_true),
		A(CKA_SENSITIVE, ck_true),
		A(CKA_EXTRACTABLE, ck_false),
		A(CKA_SIGN, ck_true),
		A(CKA_VERIFY, ck_true),
		A(CKA_ENCRYPT, ck_false),
		A(CKA_DECRYPT, ck_false),
		A(CKA_WRAP, ck_false),
		A(CKA_UNWRAP, ck_false),
		A(CKA_DERIVE, ck_false),
		{CKA_ALLOWED_MECHANISMS, mac_mechs, sizeof(mac_mechs)},
		{CKA_LABEL, (void *)label, strlen(label)},
	};
	CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
	CK_RV rv;

	rv = f->C_GenerateKey(s, &gen, tmpl, NELEM(tmpl), &h);
	if (rv != CKR_OK)
		return p11_ckr_err(rv, "C_GenerateKey(MAC key)");
	kms_info("token: %s created", label);
	return KMS_OK;
}

/* The audit checkpoint key pair (see p11.h). Both halves carry the same label. */
static kms_err audit_sign_key_create(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s)
{
	static char label[] = P11_LABEL_AUDIT_SIGN;
	CK_MECHANISM gen = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
	CK_ATTRIBUTE pub_tmpl[] = {
		A(CKA_CLASS, cls_public),
		A(CKA_KEY_TYPE, kt_ec),
		A(CKA_TOKEN, ck_true),
		A(CKA_PRIVATE, ck_false),
		A(CKA_VERIFY, ck_true),
		A(CKA_ENCRYPT, ck_false),
		A(CKA_WRAP, ck_false),
		A(CKA_DERIVE, ck_false),
		{CKA_EC_PARAMS, p256_params, sizeof(p256_params)},
		{CKA_LABEL, label, sizeof(label) - 1},
	};
	CK_ATTRIBUTE priv_tmpl[] = {
		A(CKA_CLASS, cls_private),
		A(CKA_KEY_TYPE, kt_ec),
		A(CKA_TOKEN, ck_true),
		A(CKA_PRIVATE, ck_true),
		A(CKA_SENSITIVE, ck_true),
		A(CKA_EXTRACTABLE, ck_false),
		A(CKA_SIGN, ck_true),
		A(CKA_SIGN_RECOVER, ck_false),
		A(CKA_DECRYPT, ck_false),
		A(CKA_UNWRAP, ck_false),
		A(CKA_DERIVE, ck_false),
		{CKA_ALLOWED_MECHANISMS, audit_sign_mechs, sizeof(audit_sign_mechs)},
		{CKA_LABEL, label, sizeof(label) - 1},
	};
	CK_OBJECT_HANDLE pub = CK_INVALID_HANDLE, priv = CK_INVALID_HANDLE;
	CK_RV rv;

	rv = f->C_GenerateKeyPair(s, &gen, pub_tmpl, NELEM(pub_tmpl), priv_tmpl, NELEM(priv_tmpl),
				  &pub, &priv);
	if (rv != CKR_OK)
		return p11_ckr_err(rv, "C_GenerateKeyPair(audit signing key)");
	kms_info("token: %s created (ECDSA P-256, sign only)", P11_LABEL_AUDIT_SIGN);
	return KMS_OK;
}

/* Creates the audit key pair when neither half exists; refuses a lone half. */
static kms_err audit_sign_key_ensure(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE s)
{
	CK_OBJECT_HANDLE h;
	unsigned n_priv, n_pub;
	kms_err rc;

	rc = find_object(f, s, CKO_PRIVATE_KEY, P11_LABEL_AUDIT_SIGN, &h, &n_priv);
	if (rc == KMS_OK)
		rc = find_object(f, s, CKO_PUBLIC_KEY, P11_LABEL_AUDIT_SIGN, &h, &n_pub);
	if (rc != KMS_OK)
		return rc;
	if (n_priv > 1 || n_pub > 1)
		return kms_errf(KMS_ERR_TOKEN, "token: several objects are labelled %s",
				P11_LABEL_AUDIT_SIGN);
	if (n_priv == 1 && n_pub == 1)
		return KMS_OK;
	if (n_priv != n_pub)
		return kms_errf(KMS_ERR_TOKEN,
				"token: only the %s half of %s exists; refusing to replace the "
				"audit signing key (signatures already made would be orphaned)",
				n_priv ? "private" : "public", P11_LABEL_AUDIT_SIGN);
	return audit_sign_key_create(f, s);
}

static kms_err check_config(const struct p11_config *cfg)
{
	if (cfg == NULL || cfg->token_label == NULL)
		return kms_errf(KMS_ERR_CONFIG, "token: no token label configured");
	if (cfg->sessions < 1 || cfg->sessions > P11_MAX_SESSIONS)
		return kms_errf(KMS_ERR_CONFIG, "token: session pool size must be 1..%d",
				P11_MAX_SESSIONS);
	return KMS_OK;
}

kms_err p11_provision(const struct p11_config *cfg, const char *so_pin, size_t so_pin_len,
		      const char *user_pin, size_t user_pin_len)
{
	static const char *const mac_labels[] = {P11_LABEL_STORE_MAC, P11_LABEL_AUDIT_HMAC};
	struct p11_module *mod = NULL;
	CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
	enum login_state st = LOGGED_OUT;
	CK_OBJECT_HANDLE h;
	CK_FUNCTION_LIST_PTR f;
	CK_SLOT_ID slot = 0;
	bool mk_existed = false;
	unsigned n;
	size_t i;
	kms_err rc;
	CK_RV rv;

	rc = check_config(cfg);
	if (rc != KMS_OK)
		return rc;
	if (user_pin == NULL || user_pin_len == 0)
		return kms_errf(KMS_ERR_INVALID, "token: user PIN required");
	rc = module_acquire(module_path(cfg), &mod);
	if (rc != KMS_OK)
		return rc;
	f = mod->f;
	rc = find_slot(f, cfg->token_label, &slot);
	if (rc != KMS_OK)
		goto out;
	rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
	if (rv != CKR_OK) {
		s = CK_INVALID_HANDLE;
		rc = p11_ckr_err(rv, "C_OpenSession");
		goto out;
	}
	/* Log in as user first: the MK is private, so only the user can see whether it
	 * exists. */
	rc = login(f, s, CKU_USER, user_pin, user_pin_len);
	if (rc != KMS_OK)
		goto out;
	st = LOGGED_USER;

	rc = find_key(f, s, P11_LABEL_MK, &h, &n);
	if (rc != KMS_OK)
		goto out;
	if (n > 1) {
		rc = kms_errf(KMS_ERR_TOKEN, "token: several objects are labelled %s",
			      P11_LABEL_MK);
		goto out;
	}
	if (n == 1) {
		mk_existed = true;
	} else {
		rc = mk_ceremony(f, s, P11_LABEL_MK, so_pin, so_pin_len, user_pin, user_pin_len,
				 &st);
		if (rc != KMS_OK)
			goto out;
	}

	for (i = 0; i < NELEM(mac_labels); i++) {
		rc = find_key(f, s, mac_labels[i], &h, &n);
		if (rc != KMS_OK)
			goto out;
		if (n > 1) {
			rc = kms_errf(KMS_ERR_TOKEN, "token: several objects are labelled %s",
				      mac_labels[i]);
			goto out;
		}
		if (n == 0) {
			rc = mac_key_create(f, s, mac_labels[i]);
			if (rc != KMS_OK)
				goto out;
		}
	}
	rc = audit_sign_key_ensure(f, s);
	if (rc != KMS_OK)
		goto out;
	rc = mk_existed ? kms_errf(KMS_ERR_CONFLICT, "token: master key %s already exists",
				   P11_LABEL_MK)
			: KMS_OK;
out:
	if (s != CK_INVALID_HANDLE) {
		/* No explicit C_Logout for the user: closing our only session logs out, and
		 * a logout would also destroy the session objects of anyone else in this
		 * process. mk_ceremony never returns with the SO logged in. */
		rv = f->C_CloseSession(s);
		if (rv != CKR_OK)
			kms_warn("token: C_CloseSession failed: %s", p11_ckr_name(rv));
	}
	module_release(mod);
	return rc;
}

kms_err p11_mk_create(const struct p11_config *cfg, uint32_t version, const char *so_pin,
		      size_t so_pin_len, const char *user_pin, size_t user_pin_len)
{
	struct p11_module *mod = NULL;
	CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
	enum login_state st = LOGGED_OUT;
	CK_OBJECT_HANDLE h;
	CK_FUNCTION_LIST_PTR f;
	CK_SLOT_ID slot = 0;
	char label[P11_LABEL_MAX + 1];
	unsigned n;
	kms_err rc;
	CK_RV rv;

	rc = check_config(cfg);
	if (rc != KMS_OK)
		return rc;
	if (version < 1)
		return kms_errf(KMS_ERR_INVALID, "token: master key versions start at 1");
	if (user_pin == NULL || user_pin_len == 0)
		return kms_errf(KMS_ERR_INVALID, "token: user PIN required");
	mk_label(version, label, sizeof(label));
	rc = module_acquire(module_path(cfg), &mod);
	if (rc != KMS_OK)
		return rc;
	f = mod->f;
	rc = find_slot(f, cfg->token_label, &slot);
	if (rc != KMS_OK)
		goto out;
	rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
	if (rv != CKR_OK) {
		s = CK_INVALID_HANDLE;
		rc = p11_ckr_err(rv, "C_OpenSession");
		goto out;
	}
	rc = login(f, s, CKU_USER, user_pin, user_pin_len);
	if (rc != KMS_OK)
		goto out;
	st = LOGGED_USER;
	rc = find_key(f, s, label, &h, &n);
	if (rc != KMS_OK)
		goto out;
	if (n > 1) {
		rc = kms_errf(KMS_ERR_TOKEN, "token: several objects are labelled %s", label);
		goto out;
	}
	if (n == 1) {
		/* Left by a run that stopped before the store recorded it: usable only if it
		 * is still everything a master key must be. */
		rc = mk_verify(f, s, h, label);
		if (rc == KMS_OK)
			rc = kms_errf(KMS_ERR_CONFLICT, "token: master key %s already exists", label);
		goto out;
	}
	rc = mk_ceremony(f, s, label, so_pin, so_pin_len, user_pin, user_pin_len, &st);
out:
	if (s != CK_INVALID_HANDLE) {
		/* As in p11_provision: closing our only session logs the user out. */
		rv = f->C_CloseSession(s);
		if (rv != CKR_OK)
			kms_warn("token: C_CloseSession failed: %s", p11_ckr_name(rv));
	}
	module_release(mod);
	return rc;
}

/* ---------------------------------------------------------------- the open token */

struct p11 {
	struct p11_module *mod;
	CK_FUNCTION_LIST_PTR f;
	CK_SLOT_ID slot;

	pthread_mutex_t obj_lock; /* object creation/destruction, and the holder session */
	CK_SESSION_HANDLE holder;
	uint32_t holder_gen; /* bumped when the holder is reopened; read atomically */
	CK_OBJECT_HANDLE store_mac, audit_hmac;
	/* Master keys found so far, by version (under obj_lock). Several live side by side
	 * while a rotation moves blobs from one to the next; another process (kmsd
	 * master-key rotate) creates and destroys them, so a miss or a stale handle sends
	 * the lookup back to the token, by label. */
	struct p11_mk {
		uint32_t version;
		CK_OBJECT_HANDLE h;
	} mks[P11_MK_CACHE];
	unsigned n_mks, next_mk;
	CK_OBJECT_HANDLE audit_sign, audit_pub; /* the kmsd-audit-sign pair */
	CK_OBJECT_HANDLE mfa_seal; /* kmsd-mfa-seal once found or made (under obj_lock) */

	pthread_mutex_t pool_lock;
	pthread_cond_t pool_cond;
	CK_SESSION_HANDLE *pool; /* free sessions: pool[0..n_free) */
	unsigned n_free, n_sessions;
	bool locks_ready;
};

static kms_err find_required_class(struct p11 *p, CK_OBJECT_CLASS cls, const char *label,
				   CK_OBJECT_HANDLE *h)
{
	unsigned n;
	kms_err rc = find_object(p->f, p->holder, cls, label, h, &n);

	if (rc != KMS_OK)
		return rc;
	if (n == 0)
		return kms_errf(KMS_ERR_TOKEN,
				"token not provisioned: no key labelled %s (run kmsd init)", label);
	if (n > 1)
		return kms_errf(KMS_ERR_TOKEN, "token: several objects are labelled %s", label);
	return KMS_OK;
}

static kms_err find_required(struct p11 *p, const char *label, CK_OBJECT_HANDLE *h)
{
	return find_required_class(p, CKO_SECRET_KEY, label, h);
}

/* The private audit key must still be what audit_sign_key_create made: an EC key that
 * cannot leave the token. */
static kms_err audit_sign_verify(struct p11 *p)
{
	CK_KEY_TYPE kt = 0;
	CK_BBOOL token = CK_FALSE, priv = CK_FALSE, sensitive = CK_FALSE, extractable = CK_TRUE;
	CK_BBOOL sign = CK_FALSE;
	CK_ATTRIBUTE a[] = {
		A(CKA_KEY_TYPE, kt),	       A(CKA_TOKEN, token),	A(CKA_PRIVATE, priv),
		A(CKA_SENSITIVE, sensitive), A(CKA_EXTRACTABLE, extractable), A(CKA_SIGN, sign),
	};
	CK_RV rv = p->f->C_GetAttributeValue(p->holder, p->audit_sign, a, NELEM(a));

	if (rv != CKR_OK)
		return p11_ckr_err(rv, "C_GetAttributeValue(audit signing key)");
	if (kt != CKK_EC || token != CK_TRUE || priv != CK_TRUE || sensitive != CK_TRUE ||
	    extractable != CK_FALSE || sign != CK_TRUE) {
		kms_error("token: %s is not a private, sensitive, unextractable EC signing key; "
			  "refusing to use it",
			  P11_LABEL_AUDIT_SIGN);
		return kms_errf(KMS_ERR_TOKEN, "token: %s has unexpected attributes",
				P11_LABEL_AUDIT_SIGN);
	}
	return KMS_OK;
}

kms_err p11_open(const struct p11_config *cfg, const char *pin, size_t pin_len, struct p11 **out)
{
	struct p11 *p;
	kms_err rc;
	CK_RV rv;
	unsigned i;

	if (out == NULL)
		return kms_errf(KMS_ERR_INTERNAL, "token: p11_open without out");
	*out = NULL;
	rc = check_config(cfg);
	if (rc != KMS_OK)
		return rc;
	if (pin == NULL || pin_len == 0)
		return kms_errf(KMS_ERR_CONFIG, "token: user PIN required");
	p = calloc(1, sizeof(*p));
	if (p == NULL)
		return kms_errf(KMS_ERR_NOMEM, "token: out of memory");
	p->holder = CK_INVALID_HANDLE;
	p->pool = calloc(cfg->sessions, sizeof(*p->pool));
	if (p->pool == NULL) {
		free(p);
		return kms_errf(KMS_ERR_NOMEM, "token: out of memory");
	}
	if (pthread_mutex_init(&p->obj_lock, NULL) != 0)
		goto nolocks;
	if (pthread_mutex_init(&p->pool_lock, NULL) != 0) {
		pthread_mutex_destroy(&p->obj_lock);
		goto nolocks;
	}
	if (pthread_cond_init(&p->pool_cond, NULL) != 0) {
		pthread_mutex_destroy(&p->pool_lock);
		pthread_mutex_destroy(&p->obj_lock);
		goto nolocks;
	}
	p->locks_ready = true;

	rc = module_acquire(module_path(cfg), &p->mod);
	if (rc != KMS_OK)
		goto fail;
	p->f = p->mod->f;
	rc = find_slot(p->f, cfg->token_label, &p->slot);
	if (rc != KMS_OK)
		goto fail;
	rv = p->f->C_OpenSession(p->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL,
				 &p->holder);
	if (rv != CKR_OK) {
		p->holder = CK_INVALID_HANDLE;
		rc = p11_ckr_err(rv, "C_OpenSession(holder)");
		goto fail;
	}
	rc = login(p->f, p->holder, CKU_USER, pin, pin_len);
	if (rc != KMS_OK)
		goto fail;
	for (i = 0; i < cfg->sessions; i++) {
		/* Read-only is enough: crypto operations only use objects. */
		rv = p->f->C_OpenSession(p->slot, CKF_SERIAL_SESSION, NULL, NULL,
					 &p->pool[p->n_free]);
		if (rv != CKR_OK) {
			rc = p11_ckr_err(rv, "C_OpenSession(pool)");
			goto fail;
		}
		p->n_free++;
		p->n_sessions++;
	}
	/* The master keys are looked up by version when first used (p11_mk_check): which
	 * ones exist is the store's to say, and changes under a master-key rotation. */
	rc = find_required(p, P11_LABEL_STORE_MAC, &p->store_mac);
	if (rc == KMS_OK)
		rc = find_required(p, P11_LABEL_AUDIT_HMAC, &p->audit_hmac);
	if (rc == KMS_OK)
		rc = find_required_class(p, CKO_PRIVATE_KEY, P11_LABEL_AUDIT_SIGN, &p->audit_sign);
	if (rc == KMS_OK)
		rc = find_required_class(p, CKO_PUBLIC_KEY, P11_LABEL_AUDIT_SIGN, &p->audit_pub);
	if (rc == KMS_OK)
		rc = audit_sign_verify(p);
	if (rc != KMS_OK)
		goto fail;
	*out = p;
	return KMS_OK;

nolocks:
	free(p->pool);
	free(p);
	return kms_errf(KMS_ERR_INTERNAL, "token: cannot create locks");
fail:
	p11_close(p);
	return rc;
}

void p11_close(struct p11 *p)
{
	unsigned i;
	CK_RV rv;

	if (p == NULL)
		return;
	if (p->f != NULL) {
		if (p->n_free != p->n_sessions)
			kms_error("token: p11_close with %u sessions still in use",
				  p->n_sessions - p->n_free);
		for (i = 0; i < p->n_free; i++) {
			rv = p->f->C_CloseSession(p->pool[i]);
			if (rv != CKR_OK)
				kms_warn("token: C_CloseSession(pool) failed: %s",
					 p11_ckr_name(rv));
		}
		/* Closing the holder destroys every serving copy it owns; as the last session
		 * it also logs the user out. */
		if (p->holder != CK_INVALID_HANDLE) {
			rv = p->f->C_CloseSession(p->holder);
			if (rv != CKR_OK)
				kms_warn("token: C_CloseSession(holder) failed: %s",
					 p11_ckr_name(rv));
		}
	}
	module_release(p->mod);
	if (p->locks_ready) {
		pthread_cond_destroy(&p->pool_cond);
		pthread_mutex_destroy(&p->pool_lock);
		pthread_mutex_destroy(&p->obj_lock);
	}
	free(p->pool);
	free(p);
}

/* ---------------------------------------------------------------- session pool */

static CK_SESSION_HANDLE pool_get(struct p11 *p)
{
	CK_SESSION_HANDLE s;

	pthread_mutex_lock(&p->pool_lock);
	while (p->n_free == 0)
		pthread_cond_wait(&p->pool_cond, &p->pool_lock);
	s = p->pool[--p->n_free];
	pthread_mutex_unlock(&p->pool_lock);
	return s;
}

/* Returns s to the pool. After a result that may leave the session unusable (closed,
 * or with an operation still active: modules keep the operation after
 * CKR_BUFFER_TOO_SMALL, and SoftHSM2 also after CKR_ARGUMENTS_BAD), the session is
 * replaced by a fresh one so that the next caller does not inherit the problem. */
static void pool_put(struct p11 *p, CK_SESSION_HANDLE s, CK_RV last)
{
	CK_SESSION_HANDLE fresh;
	CK_RV rv;

	if (last == CKR_SESSION_HANDLE_INVALID || last == CKR_SESSION_CLOSED ||
	    last == CKR_BUFFER_TOO_SMALL || last == CKR_ARGUMENTS_BAD ||
	    last == CKR_OPERATION_ACTIVE) {
		rv = p->f->C_OpenSession(p->slot, CKF_SERIAL_SESSION, NULL, NULL, &fresh);
		if (rv == CKR_OK) {
			(void)p->f->C_CloseSession(s);
			s = fresh;
		} else {
			kms_warn("token: could not replace a pool session: %s", p11_ckr_name(rv));
		}
	}
	pthread_mutex_lock(&p->pool_lock);
	p->pool[p->n_free++] = s;
	pthread_cond_signal(&p->pool_cond);
	pthread_mutex_unlock(&p->pool_lock);
}

/* ---------------------------------------------------------------- holder session */

/* A serving KEK handle carries the holder generation it was made in: session objects
 * die with the holder, so a handle from an older generation names nothing (or, worse,
 * whatever the token reuses the number for). */
#define KEY_MAKE(gen, h) (((p11_key)(gen) << 32) | (p11_key)(uint32_t)(h))
#define KEY_H(k) ((CK_OBJECT_HANDLE)((k) & 0xffffffffu))
#define KEY_GEN(k) ((uint32_t)((k) >> 32))

static uint32_t holder_gen(struct p11 *p)
{
	return __atomic_load_n(&p->holder_gen, __ATOMIC_ACQUIRE);
}

bool p11_kek_current(struct p11 *p, p11_key k)
{
	return p != NULL && k != 0 && KEY_GEN(k) == holder_gen(p);
}

static bool session_lost(CK_RV rv)
{
	return rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED;
}

/* The token lost the holder session (HSM fail-over, token reset): open a new one. The
 * user stays logged in while any session of the application is open (the pool's are),
 * and token objects keep their handles; every serving copy died with the old session,
 * which the new generation tells callers. Called with obj_lock held. */
static kms_err holder_reopen_locked(struct p11 *p, CK_RV why)
{
	CK_SESSION_HANDLE h;
	CK_RV rv;

	kms_warn("token: the holder session is gone (%s); opening a new one", p11_ckr_name(why));
	rv = p->f->C_OpenSession(p->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &h);
	if (rv != CKR_OK)
		return p11_ckr_err(rv, "C_OpenSession(holder)");
	(void)p->f->C_CloseSession(p->holder); /* most likely already gone */
	p->holder = h;
	__atomic_store_n(&p->holder_gen, p->holder_gen + 1, __ATOMIC_RELEASE);
	return KMS_OK;
}

/* ---------------------------------------------------------------- master keys */

static void mk_forget_locked(struct p11 *p, uint32_t version)
{
	unsigned i;

	for (i = 0; i < p->n_mks; i++) {
		if (p->mks[i].version == version) {
			p->mks[i] = p->mks[--p->n_mks];
			p->next_mk = 0;
			return;
		}
	}
}

/* The handle of kmsd-mk-<version>: remembered, unless refresh; else found by label and
 * checked (mk_verify: a copy that lost a property is refused, never used) before it is
 * remembered. KMS_ERR_NOT_FOUND when the token holds no such key. obj_lock held. */
static kms_err mk_get_locked(struct p11 *p, uint32_t version, bool refresh, CK_OBJECT_HANDLE *out)
{
	char label[P11_LABEL_MAX + 1];
	CK_OBJECT_HANDLE h;
	unsigned n, i;
	kms_err rc;

	*out = CK_INVALID_HANDLE;
	if (version == 0)
		return kms_errf(KMS_ERR_INTERNAL, "token: master key version 0 does not exist");
	if (!refresh) {
		for (i = 0; i < p->n_mks; i++) {
			if (p->mks[i].version == version) {
				*out = p->mks[i].h;
				return KMS_OK;
			}
		}
	}
	mk_forget_locked(p, version);
	mk_label(version, label, sizeof(label));
	rc = find_key(p->f, p->holder, label, &h, &n);
	if (rc != KMS_OK)
		return rc;
	if (n == 0)
		return kms_errf(KMS_ERR_NOT_FOUND, "token: master key %s is not in the token", label);
	if (n > 1)
		return kms_errf(KMS_ERR_TOKEN, "token: several objects are labelled %s", label);
	rc = mk_verify(p->f, p->holder, h, label);
	if (rc != KMS_OK)
		return rc;
	if (p->n_mks < P11_MK_CACHE) {
		i = p->n_mks++;
	} else {
		i = p->next_mk;
		p->next_mk = (p->next_mk + 1) % P11_MK_CACHE;
	}
	p->mks[i].version = version;
	p->mks[i].h = h;
	*out = h;
	return KMS_OK;
}

/* A master key handle that no longer names the key: another process destroyed it (or
 * the token renumbered its objects). Look it up again by label. */
static bool mk_stale(CK_RV rv)
{
	return rv == CKR_WRAPPING_KEY_HANDLE_INVALID || rv == CKR_UNWRAPPING_KEY_HANDLE_INVALID ||
	       rv == CKR_OBJECT_HANDLE_INVALID || rv == CKR_KEY_HANDLE_INVALID;
}

kms_err p11_mk_check(struct p11 *p, uint32_t version)
{
	CK_OBJECT_HANDLE h;
	kms_err rc;

	if (p == NULL)
		return kms_errf(KMS_ERR_INTERNAL, "token: p11_mk_check: bad arguments");
	pthread_mutex_lock(&p->obj_lock);
	rc = mk_get_locked(p, version, true, &h);
	pthread_mutex_unlock(&p->obj_lock);
	return rc;
}

kms_err p11_mk_destroy(struct p11 *p, uint32_t version)
{
	CK_OBJECT_HANDLE h;
	kms_err rc;
	CK_RV rv;

	if (p == NULL)
		return kms_errf(KMS_ERR_INTERNAL, "token: p11_mk_destroy: bad arguments");
	pthread_mutex_lock(&p->obj_lock);
	rc = mk_get_locked(p, version, true, &h);
	if (rc == KMS_OK) {
		rv = p->f->C_DestroyObject(p->holder, h);
		if (session_lost(rv) && holder_reopen_locked(p, rv) == KMS_OK)
			rv = p->f->C_DestroyObject(p->holder, h);
		if (rv != CKR_OK)
			rc = p11_ckr_err(rv, "C_DestroyObject(master key)");
		else
			kms_info("token: master key version %u destroyed", (unsigned)version);
		mk_forget_locked(p, version);
	}
	pthread_mutex_unlock(&p->obj_lock);
	return rc;
}

/* ---------------------------------------------------------------- operations */

/* SoftHSM2 refuses NULL data pointers even for zero lengths (CKR_ARGUMENTS_BAD). */
static CK_BYTE empty_input[1];

static CK_BYTE_PTR in_ptr(const uint8_t *b)
{
	return b != NULL ? (CK_BYTE_PTR)b : empty_input;
}

static kms_err random_call(struct p11 *p, uint8_t *out, size_t n)
{
	CK_SESSION_HANDLE s;
	CK_RV rv;

	if (p == NULL || (out == NULL && n > 0))
		return kms_errf(KMS_ERR_INTERNAL, "token: p11_random: bad arguments");
	if (n == 0)
		return KMS_OK;
	s = pool_get(p);
	rv = p->f->C_GenerateRandom(s, out, (CK_ULONG)n);
	pool_put(p, s, rv);
	if (rv != CKR_OK) {
		kms_wipe(out, n);
		return p11_ckr_err(rv, "C_GenerateRandom");
	}
	return KMS_OK;
}

static kms_err kek_generate_call(struct p11 *p, uint32_t mk_version, uint8_t blob[P11_KEK_BLOB_LEN])
{
	CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
	CK_MECHANISM kwp = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
	/* Extractable only so that the MK can wrap it; WRAP_WITH_TRUSTED keeps any other
	 * wrapping key out (CKR_KEY_NOT_WRAPPABLE). Never a token object. */
	CK_ATTRIBUTE tmpl[] = {
		A(CKA_CLASS, cls_secret),
		A(CKA_KEY_TYPE, kt_aes),
		A(CKA_VALUE_LEN, len_32),
		A(CKA_TOKEN, ck_false),
		A(CKA_PRIVATE, ck_true),
		A(CKA_SENSITIVE, ck_true),
		A(CKA_EXTRACTABLE, ck_true),
		A(CKA_WRAP_WITH_TRUSTED, ck_true),
		A(CKA_ENCRYPT, ck_true),
		A(CKA_DECRYPT, ck_true),
		A(CKA_WRAP, ck_false),
		A(CKA_UNWRAP, ck_false),
		A(CKA_SIGN, ck_false),
		A(CKA_VERIFY, ck_false),
		A(CKA_DERIVE, ck_false),
	};
	CK_OBJECT_HANDLE kek = CK_INVALID_HANDLE, mk = CK_INVALID_HANDLE;
	CK_ULONG n = P11_KEK_BLOB_LEN;
	kms_err rc = KMS_OK;
	CK_RV rv;

	if (p == NULL || blob == NULL)
		return kms_errf(KMS_ERR_INTERNAL, "token: p11_kek_generate: bad arguments");
	pthread_mutex_lock(&p->obj_lock);
	rc = mk_get_locked(p, mk_version, false, &mk);
	if (rc != KMS_OK)
		goto out;
	rv = p->f->C_GenerateKey(p->holder, &gen, tmpl, NELEM(tmpl), &kek);
	if (session_lost(rv) && holder_reopen_locked(p, rv) == KMS_OK)
		rv = p->f->C_GenerateKey(p->holder, &gen, tmpl, NELEM(tmpl), &kek);
	if (rv != CKR_OK) {
		kek = CK_INVALID_HANDLE;
		rc = p11_ckr_err(rv, "C_GenerateKey(KEK)");
		goto out;
	}
	rv = p->f->C_WrapKey(p->holder, &kwp, mk, kek, blob, &n);
	if (mk_stale(rv)) {
		rc = mk_get_locked(p, mk_version, true, &mk);
		if (rc != KMS_OK)
			goto out;
		n = P11_KEK_BLOB_LEN;
		rv = p->f->C_WrapKey(p->holder, &kwp, mk, kek, blob, &n);
	}
	if (rv != CKR_OK) {
		rc = p11_ckr_err(rv, "C_WrapKey(KEK under master key)");
		goto out;
	}
	if (n != P11_KEK_BLOB_LEN)
		rc = kms_errf(KMS_ERR_INTERNAL, "token: KEK blob is %lu bytes, expected %d",
			      (unsigned long)n, P11_KEK_BLOB_LEN);
out:
	if (kek != CK_INVALID_HANDLE) {
		rv = p->f->C_DestroyObject(p->holder, kek);
		if (rv != CKR_OK) {
			/* An extractable KEK left in the token: fail, so nobody stores a blob
			 * whose clear twin is still around. */
			kms_error("token: could not destroy a freshly wrapped KEK: %s",
				  p11_ckr_name(rv));
			if (rc == KMS_OK)
				rc = p11_ckr_err(rv, "C_DestroyObject(KEK)");
		}
	}
	pthread_mutex_unlock(&p->obj_lock);
	if (rc != KMS_OK)
		kms_wipe(blob, P11_KEK_BLOB_LEN);
	return rc;
}

/* Known-answer probe for C_UnwrapKey: SoftHSM2 2.6.1 reports a blob whose KWP integrity
 * check fails as CKR_GENERAL_ERROR, the same code as an internal fault. If a fresh KEK
 * still wraps and unwraps under the MK, the token is fine and the blob was bad.
 * Called with obj_lock held; creates and destroys its own objects. */
static bool kek_probe_locked(struct p11 *p, CK_OBJECT_HANDLE mk, const CK_ATTRIBUTE *tmpl,
			     CK_ULONG n_tmpl, CK_RV *why)
{
	CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
	CK_MECHANISM kwp = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
	CK_ATTRIBUTE gen_tmpl[] = {
		A(CKA_CLASS, cls_secret),	  A(CKA_KEY_TYPE, kt_aes),
		A(CKA_VALUE_LEN, len_32),	  A(CKA_TOKEN, ck_false),
		A(CKA_PRIVATE, ck_true),	  A(CKA_SENSITIVE, ck_true),
		A(CKA_EXTRACTABLE, ck_true),	  A(CKA_WRAP_WITH_TRUSTED, ck_true),
		A(CKA_ENCRYPT, ck_false),	  A(CKA_DECRYPT, ck_false),
	};
	CK_OBJECT_HANDLE kek = CK_INVALID_HANDLE, back = CK_INVALID_HANDLE;
	uint8_t blob[P11_KEK_BLOB_LEN];
	CK_ULONG n = sizeof(blob);
	CK_RV rv;

	rv = p->f->C_GenerateKey(p->holder, &gen, gen_tmpl, NELEM(gen_tmpl), &kek);
	if (rv != CKR_OK) {
		kek = CK_INVALID_HANDLE;
		goto out;
	}
	rv = p->f->C_WrapKey(p->holder, &kwp, mk, kek, blob, &n);
	if (rv != CKR_OK)
		goto out;
	rv = p->f->C_UnwrapKey(p->holder, &kwp, mk, blob, n, (CK_ATTRIBUTE_PTR)tmpl, n_tmpl,
			       &back);
	if (rv != CKR_OK)
		back = CK_INVALID_HANDLE;
out:
	if (back != CK_INVALID_HANDLE && p->f->C_DestroyObject(p->holder, back) != CKR_OK)
		kms_warn("token: could not destroy the KEK probe copy");
	if (kek != CK_INVALID_HANDLE && p->f->C_DestroyObject(p->holder, kek) != CKR_OK)
		kms_warn("token: could not destroy the KEK probe");
	*why = rv;
	return rv == CKR_OK;
}

/* One C_UnwrapKey of a KEK blob under master key version mk_version, with everything
 * that can go wrong on the way told apart: a lost holder session (reopened, tried
 * again), a stale master key handle (looked up again by label, tried again), and
 * CKR_GENERAL_ERROR, which is a bad blob only if a known-answer probe shows the token
 * works (then KMS_ERR_INVALID). KMS_ERR_NOT_FOUND when the master key is not in the
 * token. obj_lock held. */
static kms_err unwrap_locked(struct p11 *p, uint32_t mk_version, const uint8_t *blob,
			     size_t blob_len, CK_ATTRIBUTE *tmpl, CK_ULONG n_tmpl,
			     CK_OBJECT_HANDLE *out)
{
	CK_MECHANISM kwp = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
	CK_OBJECT_HANDLE mk = CK_INVALID_HANDLE, h = CK_INVALID_HANDLE;
	char label[P11_LABEL_MAX + 1];
	CK_RV rv, probe_rv = CKR_OK;
	kms_err rc;

	*out = CK_INVALID_HANDLE;
	rc = mk_get_locked(p, mk_version, false, &mk);
	if (rc != KMS_OK)
		return rc;
	rv = p->f->C_UnwrapKey(p->holder, &kwp, mk, (CK_BYTE_PTR)blob, (CK_ULONG)blob_len, tmpl,
			       n_tmpl, &h);
	if (session_lost(rv) && holder_reopen_locked(p, rv) == KMS_OK)
		rv = p->f->C_UnwrapKey(p->holder, &kwp, mk, (CK_BYTE_PTR)blob, (CK_ULONG)blob_len,
				       tmpl, n_tmpl, &h);
	if (mk_stale(rv)) {
		rc = mk_get_locked(p, mk_version, true, &mk);
		if (rc != KMS_OK)
			return rc;
		rv = p->f->C_UnwrapKey(p->holder, &kwp, mk, (CK_BYTE_PTR)blob, (CK_ULONG)blob_len,
				       tmpl, n_tmpl, &h);
	}
	if ((rv == CKR_GENERAL_ERROR || rv == CKR_FUNCTION_FAILED) &&
	    kek_probe_locked(p, mk, tmpl, n_tmpl, &probe_rv)) {
		/* The token works. A bad blob fails again, deterministically; a passing
		 * fault does not: one more try tells them apart. */
		rv = p->f->C_UnwrapKey(p->holder, &kwp, mk, (CK_BYTE_PTR)blob, (CK_ULONG)blob_len,
				       tmpl, n_tmpl, &h);
		if (rv == CKR_GENERAL_ERROR || rv == CKR_FUNCTION_FAILED)
			rv = CKR_WRAPPED_KEY_INVALID;
	}
	mk_label(mk_version, label, sizeof(label));
	if (rv == CKR_OK && h > 0xffffffffu) {
		(void)p->f->C_DestroyObject(p->holder, h);
		return kms_errf(KMS_ERR_TOKEN, "token: object handle out of the range kmsd can track");
	}
	if (rv == CKR_OK) {
		*out = h;
		return KMS_OK;
	}
	if (rv == CKR_WRAPPED_KEY_INVALID || rv == CKR_WRAPPED_KEY_LEN_RANGE ||
	    rv == CKR_ENCRYPTED_DATA_INVALID || rv == CKR_ENCRYPTED_DATA_LEN_RANGE) {
		/* What compliant modules say for a blob that fails KWP's integrity check. */
		return kms_errf(KMS_ERR_INVALID, "token: KEK blob does not unwrap under %s (%s)",
				label, p11_ckr_name(rv));
	}
	if (rv == CKR_GENERAL_ERROR || rv == CKR_FUNCTION_FAILED) {
		/* the probe above failed */
		return kms_errf(KMS_ERR_TOKEN,
				"token: C_UnwrapKey failed: %s, and a known-answer probe failed too: %s",
				p11_ckr_name(rv), p11_ckr_name(probe_rv));
	}
	return p11_ckr_err(rv, "C_UnwrapKey(KEK)");
}

static kms_err kek_load_call(struct p11 *p, uint32_t mk_version, const uint8_t *blob, size_t blob_len,
		     p11_key *out)
{
	/* SENSITIVE and WRAP_WITH_TRUSTED must be named: the MK's unwrap template demands
	 * them, and a template that omits them is refused. */
	CK_ATTRIBUTE tmpl[] = {
		A(CKA_CLASS, cls_secret),
		A(CKA_KEY_TYPE, kt_aes),
		A(CKA_TOKEN, ck_false),
		A(CKA_PRIVATE, ck_true),
		A(CKA_SENSITIVE, ck_true),
		A(CKA_EXTRACTABLE, ck_false),
		A(CKA_WRAP_WITH_TRUSTED, ck_true),
		A(CKA_ENCRYPT, ck_true),
		A(CKA_DECRYPT, ck_true),
		A(CKA_WRAP, ck_false),
		A(CKA_UNWRAP, ck_false),
		A(CKA_SIGN, ck_false),
		A(CKA_VERIFY, ck_false),
		A(CKA_DERIVE, ck_false),
	};
	CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
	kms_err rc;

	if (p == NULL || out == NULL || (blob == NULL && blob_len > 0))
		return kms_errf(KMS_ERR_INTERNAL, "token: p11_kek_load: bad arguments");
	*out = 0;
	if (blob_len != P11_KEK_BLOB_LEN)
		return kms_errf(KMS_ERR_INVALID, "token: a KEK blob is %d bytes, not %zu",
				P11_KEK_BLOB_LEN, blob_len);
	pthread_mutex_lock(&p->obj_lock);
	rc = unwrap_locked(p, mk_version, blob, blob_len, tmpl, NELEM(tmpl), &h);
	if (rc == KMS_OK)
		*out = KEY_MAKE(p->holder_gen, h);
	pthread_mutex_unlock(&p->obj_lock);
	return rc;
}

kms_err p11_kek_rewrap(struct p11 *p, uint32_t from_mk, const uint8_t *blob, size_t blob_len,
		       uint32_t to_mk, uint8_t out[P11_KEK_BLOB_LEN])
{
	CK_MECHANISM kwp = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
	/* The transit copy: extractable (so that the new MK can wrap it), and still
	 * SENSITIVE and WRAP_WITH_TRUSTED as the old MK's unwrap template demands: its value
	 * cannot be read, and only a trusted key (a master key) can wrap it. No ENCRYPT or
	 * DECRYPT: it exists only to be wrapped, and lives only until then. */
	CK_ATTRIBUTE transit[] = {
		A(CKA_CLASS, cls_secret),
		A(CKA_KEY_TYPE, kt_aes),
		A(CKA_TOKEN, ck_false),
		A(CKA_PRIVATE, ck_true),
		A(CKA_SENSITIVE, ck_true),
		A(CKA_EXTRACTABLE, ck_true),
		A(CKA_WRAP_WITH_TRUSTED, ck_true),
		A(CKA_ENCRYPT, ck_false),
		A(CKA_DECRYPT, ck_false),
		A(CKA_WRAP, ck_false),
		A(CKA_UNWRAP, ck_false),
		A(CKA_SIGN, ck_false),
		A(CKA_VERIFY, ck_false),
		A(CKA_DERIVE, ck_false),
	};
	/* The check: the new blob unwraps under the new MK as a serving copy would. */
	CK_ATTRIBUTE check[] = {
		A(CKA_CLASS, cls_secret),
		A(CKA_KEY_TYPE, kt_aes),
		A(CKA_TOKEN, ck_false),
		A(CKA_PRIVATE, ck_true),
		A(CKA_SENSITIVE, ck_true),
		A(CKA_EXTRACTABLE, ck_false),
		A(CKA_WRAP_WITH_TRUSTED, ck_true),
		A(CKA_ENCRYPT, ck_true),
		A(CKA_DECRYPT, ck_true),
	};
	CK_OBJECT_HANDLE kek = CK_INVALID_HANDLE, back = CK_INVALID_HANDLE, to = CK_INVALID_HANDLE;
	CK_ULONG n = P11_KEK_BLOB_LEN;
	kms_err rc;
	CK_RV rv;

	if (p == NULL || out == NULL || (blob == NULL && blob_len > 0))
		return kms_errf(KMS_ERR_INTERNAL, "token: p11_kek_rewrap: bad arguments");
	if (from_mk == to_mk)
		return kms_errf(KMS_ERR_INTERNAL, "token: rewrap under the same master key");
	if (blob_len != P11_KEK_BLOB_LEN)
		return kms_errf(KMS_ERR_INVALID, "token: a KEK blob is %d bytes, not %zu",
				P11_KEK_BLOB_LEN, blob_len);
	pthread_mutex_lock(&p->obj_lock);
	rc = mk_get_locked(p, to_mk, false, &to);
	if (rc != KMS_OK)
		goto out;
	rc = unwrap_locked(p, from_mk, blob, blob_len, transit, NELEM(transit), &kek);
	if (rc != KMS_OK)
		goto out;
	rv = p->f->C_WrapKey(p->holder, &kwp, to, kek, out, &n);
	if (mk_stale(rv)) {
		rc = mk_get_locked(p, to_mk, true, &to);
		if (rc != KMS_OK)
			goto out;
		n = P11_KEK_BLOB_LEN;
		rv = p->f->C_WrapKey(p->holder, &kwp, to, kek, out, &n);
	}
	if (rv != CKR_OK) {
		rc = p11_ckr_err(rv, "C_WrapKey(KEK under the new master key)");
		goto out;
	}
	if (n != P11_KEK_BLOB_LEN) {
		rc = kms_errf(KMS_ERR_INTERNAL, "token: KEK blob is %lu bytes, expected %d",
			      (unsigned long)n, P11_KEK_BLOB_LEN);
		goto out;
	}
	rv = p->f->C_UnwrapKey(p->holder, &kwp, to, out, n, check, NELEM(check), &back);
	if (rv != CKR_OK) {
		back = CK_INVALID_HANDLE;
		rc = p11_ckr_err(rv, "C_UnwrapKey(check of the rewrapped KEK)");
		goto out;
	}
	rc = KMS_OK;
out:
	if (back != CK_INVALID_HANDLE && p->f->C_DestroyObject(p->holder, back) != CKR_OK)
		kms_warn("token: could not destroy the rewrap check copy");
	if (kek != CK_INVALID_HANDLE) {
		rv = p->f->C_DestroyObject(p->holder, kek);
		if (rv != CKR_OK) {
			/* As in p11_kek_generate: never leave an extractable copy behind. */
			kms_error("token: could not destroy the transit copy of a KEK: %s",
				  p11_ckr_name(rv));
			if (rc == KMS_OK)
				rc = p11_ckr_err(rv, "C_DestroyObject(KEK transit copy)");
		}
	}
	pthread_mutex_unlock(&p->obj_lock);
	if (rc != KMS_OK)
		kms_wipe(out, P11_KEK_BLOB_LEN);
	return rc;
}

void p11_kek_unload(struct p11 *p, p11_key k)
{
	CK_RV rv;

	if (p == NULL || k == 0)
		return;
	pthread_mutex_lock(&p->obj_lock);
	if (KEY_GEN(k) != p->holder_gen) {
		/* died with an earlier holder session */
		pthread_mutex_unlock(&p->obj_lock);
		return;
	}
	rv = p->f->C_DestroyObject(p->holder, KEY_H(k));
	pthread_mutex_unlock(&p->obj_lock);
	if (rv != CKR_OK)
		kms_warn("token: C_DestroyObject(KEK) failed: %s", p11_ckr_name(rv));
}

static void gcm_mechanism(CK_MECHANISM *m, CK_GCM_PARAMS *gp, const uint8_t *iv,
			  const uint8_t *aad, size_t aad_len)
{
	gp->pIv = (CK_BYTE_PTR)iv;
	gp->ulIvLen = P11_GCM_IV_LEN;
	gp->ulIvBits = P11_GCM_IV_LEN * 8;
	gp->pAAD = aad_len > 0 ? (CK_BYTE_PTR)aad : NULL;
	gp->ulAADLen = (CK_ULONG)aad_len;
	gp->ulTagBits = P11_GCM_TAG_LEN * 8;
	m->mechanism = CKM_AES_GCM;
	m->pParameter = gp;
	m->ulParameterLen = sizeof(*gp);
}

static kms_err gcm_encrypt_call(struct p11 *p, p11_key k, const uint8_t iv[P11_GCM_IV_LEN],
			const uint8_t *aad, size_t aad_len, const uint8_t *pt, size_t pt_len,
			uint8_t *out, size_t out_cap)
{
	CK_GCM_PARAMS gp;
	CK_MECHANISM m;
	CK_SESSION_HANDLE s;
	CK_ULONG n = (CK_ULONG)out_cap;
	const char *fn = "C_EncryptInit";
	CK_RV rv;

	if (p == NULL || iv == NULL || out == NULL || (aad == NULL && aad_len > 0) ||
	    (pt == NULL && pt_len > 0))
		return kms_errf(KMS_ERR_INTERNAL, "token: p11_gcm_encrypt: bad arguments");
	if (k == 0)
		return kms_errf(KMS_ERR_INTERNAL, "token: p11_gcm_encrypt: no key");
	if (pt_len > SIZE_MAX - P11_GCM_TAG_LEN || out_cap < pt_len + P11_GCM_TAG_LEN)
		return kms_errf(KMS_ERR_INTERNAL, "token: GCM output buffer too small");
	if (!p11_kek_current(p, k))
		return kms_errf(KMS_ERR_TOKEN, "token: the serving copy of this KEK was lost with its session");
	gcm_mechanism(&m, &gp, iv, aad, aad_len);
	s = pool_get(p);
	rv = p->f->C_EncryptInit(s, &m, KEY_H(k));
	if (rv == CKR_OK) {
		fn = "C_Encrypt";
		rv = p->f->C_Encrypt(s, in_ptr(pt), (CK_ULONG)pt_len, out, &n);
	}
	pool_put(p, s, rv);
	if (rv != CKR_OK)
		return p11_ckr_err(rv, fn);
	if (n != pt_len + P11_GCM_TAG_LEN) {
		kms_wipe(out, out_cap);
		return kms_errf(KMS_ERR_INTERNAL, "token: C_Encrypt returned %lu bytes, expected %zu",
				(unsigned long)n, pt_len + P11_GCM_TAG_LEN);
	}
	return KMS_OK;
}

/* Known-answer probe: encrypt a fixed block under k with a fixed IV and decrypt it
 * back, on the session that just failed. If the token and the key work, the failure
 * was the caller's ciphertext (its tag did not verify); otherwise it was the token.
 * A fixed (IV, plaintext) pair adds a single, always identical ciphertext under the key:
 * it uses up no IV space (so the per-version encryption count stays meaningful however
 * often a client sends bad ciphertexts) and never leaves this function. */
static bool gcm_probe(struct p11 *p, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE k, CK_RV *why)
{
	static const uint8_t probe_iv[P11_GCM_IV_LEN] = {'k', 'm', 's', 'd', '-', 'p',
							 'r', 'o', 'b', 'e', 0,	  1};
	uint8_t pt[16] = {0}, ct[sizeof(pt) + P11_GCM_TAG_LEN], back[sizeof(ct)];
	CK_GCM_PARAMS gp;
	CK_MECHANISM m;
	CK_ULONG n;
	bool ok = false;
	CK_RV rv;

	gcm_mechanism(&m, &gp, probe_iv, NULL, 0);
	rv = p->f->C_EncryptInit(s, &m, k);
	if (rv != CKR_OK)
		goto out;
	n = sizeof(ct);
	rv = p->f->C_Encrypt(s, pt, sizeof(pt), ct, &n);
	if (rv != CKR_OK)
		goto out;
	if (n != sizeof(ct)) {
		rv = CKR_GENERAL_ERROR;
		goto out;
	}
	rv = p->f->C_DecryptInit(s, &m, k);
	if (rv != CKR_OK)
		goto out;
	n = sizeof(back);
	rv = p->f->C_Decrypt(s, ct, sizeof(ct), back, &n);
	if (rv != CKR_OK)
		goto out;
	ok = n == sizeof(pt) && memcmp(back, pt, sizeof(pt)) == 0;
	if (!ok)
		rv = CKR_GENERAL_ERROR;
out:
	*why = rv;
	kms_wipe(ct, sizeof(ct));
	kms_wipe(back, sizeof(back));
	return ok;
}

static bool decrypt_needs_probe(CK_RV rv)
{
	/* SoftHSM2 2.6.1 says CKR_GENERAL_ERROR for a bad tag; compliant modules say
	 * CKR_ENCRYPTED_DATA_INVALID (2.40) or CKR_AEAD_DECRYPT_FAILED (3.0). */
	return rv == CKR_GENERAL_ERROR || rv == CKR_FUNCTION_FAILED ||
	       rv == CKR_ENCRYPTED_DATA_INVALID || rv == CKR_ENCRYPTED_DATA_LEN_RANGE ||
	       rv == 0x35UL /* CKR_AEAD_DECRYPT_FAILED */;
}

static kms_err gcm_decrypt_call(struct p11 *p, p11_key k, const uint8_t iv[P11_GCM_IV_LEN],
			const uint8_t *aad, size_t aad_len, const uint8_t *in, size_t in_len,
			uint8_t *out, size_t out_cap, size_t *out_len)
{
	uint8_t scratch[P11_DECRYPT_SCRATCH];
	uint8_t *buf = out, *heap = NULL;
	CK_GCM_PARAMS gp;
	CK_MECHANISM m;
	CK_SESSION_HANDLE s;
	const char *fn = "C_DecryptInit";
	bool key_accepted = false;
	size_t pt_len;
	CK_ULONG n, n0;
	kms_err rc = KMS_OK;
	CK_RV rv, probe_rv;

	if (out_len != NULL)
		*out_len = 0;
	if (p == NULL || iv == NULL || out_len == NULL || (aad == NULL && aad_len > 0) ||
	    (in == NULL && in_len > 0) || (out == NULL && out_cap > 0))
		return kms_errf(KMS_ERR_INTERNAL, "token: p11_gcm_decrypt: bad arguments");
	if (k == 0)
		return kms_errf(KMS_ERR_INTERNAL, "token: p11_gcm_decrypt: no key");
	if (in_len < P11_GCM_TAG_LEN)
		return kms_errf(KMS_ERR_DECRYPT, "ciphertext too short");
	pt_len = in_len - P11_GCM_TAG_LEN;
	if (out_cap < pt_len)
		return kms_errf(KMS_ERR_INTERNAL, "token: GCM output buffer too small");
	n = (CK_ULONG)out_cap;
	if (out_cap < in_len) {
		/* See P11_DECRYPT_SCRATCH. The plaintext passes through here: wiped below. */
		if (in_len <= sizeof(scratch)) {
			buf = scratch;
		} else {
			heap = malloc(in_len);
			if (heap == NULL)
				return kms_errf(KMS_ERR_NOMEM, "token: out of memory");
			buf = heap;
		}
		n = (CK_ULONG)in_len;
	}
	n0 = n;
	if (!p11_kek_current(p, k)) {
		rc = kms_errf(KMS_ERR_TOKEN, "token: the serving copy of this KEK was lost with its session");
		goto out;
	}
	gcm_mechanism(&m, &gp, iv, aad, aad_len);
	s = pool_get(p);
	rv = p->f->C_DecryptInit(s, &m, KEY_H(k));
	if (rv == CKR_OK) {
		fn = "C_Decrypt";
		rv = p->f->C_Decrypt(s, (CK_BYTE_PTR)in, (CK_ULONG)in_len, buf, &n);
		key_accepted = true;
	}
	if (rv != CKR_OK && key_accepted && decrypt_needs_probe(rv)) {
		if (!gcm_probe(p, s, KEY_H(k), &probe_rv)) {
			rc = kms_errf(KMS_ERR_TOKEN,
				      "token: C_Decrypt failed: %s, and a known-answer probe "
				      "on the same key failed too: %s",
				      p11_ckr_name(rv), p11_ckr_name(probe_rv));
			pool_put(p, s, probe_rv);
			goto out;
		}
		/* The key works. A bad tag fails again, deterministically; a passing token
		 * fault does not: one more try, so that a good ciphertext is never called
		 * forged. */
		n = n0;
		rv = p->f->C_DecryptInit(s, &m, KEY_H(k));
		if (rv == CKR_OK)
			rv = p->f->C_Decrypt(s, (CK_BYTE_PTR)in, (CK_ULONG)in_len, buf, &n);
		if (rv != CKR_OK && decrypt_needs_probe(rv)) {
			rc = kms_errf(KMS_ERR_DECRYPT, "ciphertext failed authentication");
			pool_put(p, s, rv);
			goto out;
		}
	}
	pool_put(p, s, rv);
	if (rv != CKR_OK) {
		rc = p11_ckr_err(rv, fn);
		goto out;
	}
	if (n != pt_len) {
		rc = kms_errf(KMS_ERR_INTERNAL, "token: C_Decrypt returned %lu bytes, expected %zu",
			      (unsigned long)n, pt_len);
		goto out;
	}
	if (buf != out && pt_len > 0)
		memcpy(out, buf, pt_len);
	*out_len = pt_len;
out:
	if (buf != out)
		kms_wipe(buf, in_len);
	free(heap);
	if (rc != KMS_OK && out != NULL)
		kms_wipe(out, out_cap < in_len ? out_cap : in_len);
	return rc;
}

static kms_err hmac_call(struct p11 *p, enum p11_mac_key which, const uint8_t *data, size_t len,
		 uint8_t out[P11_HMAC_LEN])
{
	CK_MECHANISM m = {CKM_SHA256_HMAC, NULL, 0};
	CK_OBJECT_HANDLE key;
	CK_SESSION_HANDLE s;
	CK_ULONG n = P11_HMAC_LEN;
	const char *fn = "C_SignInit";
	CK_RV rv;

	if (p == NULL || out == NULL || (data == NULL && len > 0))
		return kms_errf(KMS_ERR_INTERNAL, "token: p11_hmac: bad arguments");
	switch (which) {
	case P11_MAC_STORE:
		key = p->store_mac;
		break;
	case P11_MAC_AUDIT:
		key = p->audit_hmac;
		break;
	default:
		return kms_errf(KMS_ERR_INTERNAL, "token: p11_hmac: unknown key %d", (int)which);
	}
	s = pool_get(p);
	rv = p->f->C_SignInit(s, &m, key);
	if (rv == CKR_OK) {
		fn = "C_Sign";
		rv = p->f->C_Sign(s, in_ptr(data), (CK_ULONG)len, out, &n);
	}
	pool_put(p, s, rv);
	if (rv != CKR_OK)
		return p11_ckr_err(rv, fn);
	if (n != P11_HMAC_LEN)
		return kms_errf(KMS_ERR_INTERNAL, "token: C_Sign returned %lu bytes",
				(unsigned long)n);
	return KMS_OK;
}

/* ---------------------------------------------------------------- audit signing key */

/* raw r||s (2 x 32 bytes, as PKCS#11 returns ECDSA signatures) -> DER ECDSA-Sig-Value. */
static kms_err ecdsa_raw_to_der(const uint8_t *raw, size_t raw_len, uint8_t *der, size_t cap,
				size_t *len)
{
	ECDSA_SIG *sig = NULL;
	BIGNUM *r = NULL, *s = NULL;
	unsigned char *q = der;
	kms_err rc = KMS_ERR_INTERNAL;
	int n;

	if (raw_len != 64)
		return kms_errf(KMS_ERR_TOKEN, "token: ECDSA signature is %zu bytes, expected 64",
				raw_len);
	sig = ECDSA_SIG_new();
	r = BN_bin2bn(raw, 32, NULL);
	s = BN_bin2bn(raw + 32, 32, NULL);
	if (sig == NULL || r == NULL || s == NULL || ECDSA_SIG_set0(sig, r, s) != 1) {
		rc = kms_errf(KMS_ERR_NOMEM, "token: out of memory");
		goto out;
	}
	r = s = NULL; /* owned by sig now */
	n = i2d_ECDSA_SIG(sig, NULL);
	if (n <= 0 || (size_t)n > cap) {
		rc = kms_errf(KMS_ERR_INTERNAL, "token: DER signature does not fit (%d bytes)", n);
		goto out;
	}
	n = i2d_ECDSA_SIG(sig, &q);
	if (n <= 0) {
		rc = kms_errf(KMS_ERR_INTERNAL, "token: DER encoding of the signature failed");
		goto out;
	}
	*len = (size_t)n;
	rc = KMS_OK;
out:
	BN_free(r);
	BN_free(s);
	ECDSA_SIG_free(sig);
	return rc;
}

static kms_err audit_sign_call(struct p11 *p, const uint8_t digest[P11_SHA256_LEN], uint8_t *sig,
		       size_t sig_cap, size_t *sig_len)
{
	CK_MECHANISM m = {CKM_ECDSA, NULL, 0};
	CK_BYTE raw[132]; /* room for P-521 should the module ever answer with it */
	CK_ULONG n = sizeof(raw);
	CK_SESSION_HANDLE s;
	const char *fn = "C_SignInit";
	CK_RV rv;

	if (sig_len != NULL)
		*sig_len = 0;
	if (p == NULL || digest == NULL || sig == NULL || sig_len == NULL)
		return kms_errf(KMS_ERR_INTERNAL, "token: p11_audit_sign: bad arguments");
	if (sig_cap < P11_AUDIT_SIG_MAX)
		return kms_errf(KMS_ERR_INTERNAL, "token: p11_audit_sign: buffer under %d bytes",
				P11_AUDIT_SIG_MAX);
	s = pool_get(p);
	rv = p->f->C_SignInit(s, &m, p->audit_sign);
	if (rv == CKR_OK) {
		fn = "C_Sign";
		rv = p->f->C_Sign(s, (CK_BYTE_PTR)digest, P11_SHA256_LEN, raw, &n);
	}
	pool_put(p, s, rv);
	if (rv != CKR_OK)
		return p11_ckr_err(rv, fn);
	return ecdsa_raw_to_der(raw, n, sig, sig_cap, sig_len);
}

/* CKA_EC_POINT is a DER OCTET STRING holding the point (PKCS#11 2.40; SoftHSM2 does
 * this); some modules give the bare point. Returns the uncompressed P-256 point. */
static kms_err ec_point_unwrap(const CK_BYTE *v, CK_ULONG n, const CK_BYTE **pt)
{
	if (n == 67 && v[0] == 0x04 && v[1] == 65 && v[2] == 0x04) {
		*pt = v + 2;
		return KMS_OK;
	}
	if (n == 65 && v[0] == 0x04) {
		*pt = v;
		return KMS_OK;
	}
	return kms_errf(KMS_ERR_TOKEN, "token: %s: unexpected CKA_EC_POINT (%lu bytes)",
			P11_LABEL_AUDIT_SIGN, (unsigned long)n);
}

kms_err p11_audit_pubkey_pem(struct p11 *p, char **pem)
{
	CK_BYTE params[32], point[128];
	CK_ATTRIBUTE a[] = {
		{CKA_EC_PARAMS, params, sizeof(params)},
		{CKA_EC_POINT, point, sizeof(point)},
	};
	const CK_BYTE *pt = NULL;
	char group[] = "prime256v1";
	OSSL_PARAM op[3];
	EVP_PKEY_CTX *ctx = NULL, *check = NULL;
	EVP_PKEY *pkey = NULL;
	BIO *bio = NULL;
	char *data = NULL;
	long len;
	CK_SESSION_HANDLE s;
	kms_err rc;
	CK_RV rv;

	if (pem != NULL)
		*pem = NULL;
	if (p == NULL || pem == NULL)
		return kms_errf(KMS_ERR_INTERNAL, "token: p11_audit_pubkey_pem: bad arguments");
	s = pool_get(p);
	rv = p->f->C_GetAttributeValue(s, p->audit_pub, a, NELEM(a));
	pool_put(p, s, rv);
	if (rv != CKR_OK)
		return p11_ckr_err(rv, "C_GetAttributeValue(audit public key)");
	if (a[0].ulValueLen != sizeof(p256_params) ||
	    memcmp(params, p256_params, sizeof(p256_params)) != 0)
		return kms_errf(KMS_ERR_TOKEN, "token: %s is not a P-256 key", P11_LABEL_AUDIT_SIGN);
	rc = ec_point_unwrap(point, a[1].ulValueLen, &pt);
	if (rc != KMS_OK)
		return rc;

	op[0] = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, group, 0);
	op[1] = OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, (void *)pt, 65);
	op[2] = OSSL_PARAM_construct_end();
	rc = KMS_ERR_INTERNAL;
	ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
	if (ctx == NULL || EVP_PKEY_fromdata_init(ctx) != 1 ||
	    EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, op) != 1) {
		rc = kms_errf(KMS_ERR_TOKEN, "token: %s: public key rejected by OpenSSL",
			      P11_LABEL_AUDIT_SIGN);
		goto out;
	}
	check = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
	if (check == NULL || EVP_PKEY_public_check(check) != 1) {
		rc = kms_errf(KMS_ERR_TOKEN, "token: %s: public key is not a valid P-256 point",
			      P11_LABEL_AUDIT_SIGN);
		goto out;
	}
	bio = BIO_new(BIO_s_mem());
	if (bio == NULL || PEM_write_bio_PUBKEY(bio, pkey) != 1) {
		rc = kms_errf(KMS_ERR_NOMEM, "token: cannot encode the audit public key");
		goto out;
	}
	len = BIO_get_mem_data(bio, &data);
	if (len <= 0 || data == NULL) {
		rc = kms_errf(KMS_ERR_INTERNAL, "token: empty PEM");
		goto out;
	}
	*pem = malloc((size_t)len + 1);
	if (*pem == NULL) {
		rc = kms_errf(KMS_ERR_NOMEM, "token: out of memory");
		goto out;
	}
	memcpy(*pem, data, (size_t)len);
	(*pem)[len] = '\0';
	rc = KMS_OK;
out:
	BIO_free(bio);
	EVP_PKEY_CTX_free(check);
	EVP_PKEY_free(pkey);
	EVP_PKEY_CTX_free(ctx);
	return rc;
}

/* ---------------------------------------------------------------- test accessors */

CK_FUNCTION_LIST_PTR p11_internal_functions(struct p11 *p)
{
	return p->f;
}

CK_SLOT_ID p11_internal_slot(struct p11 *p)
{
	return p->slot;
}

CK_SESSION_HANDLE p11_internal_holder(struct p11 *p)
{
	return p->holder;
}

CK_OBJECT_HANDLE p11_internal_object(struct p11 *p, const char *label)
{
	if (strcmp(label, P11_LABEL_MK) == 0) {
		CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;

		pthread_mutex_lock(&p->obj_lock);
		if (mk_get_locked(p, 1, false, &h) != KMS_OK)
			h = CK_INVALID_HANDLE;
		pthread_mutex_unlock(&p->obj_lock);
		return h;
	}
	if (strcmp(label, P11_LABEL_STORE_MAC) == 0)
		return p->store_mac;
	if (strcmp(label, P11_LABEL_AUDIT_HMAC) == 0)
		return p->audit_hmac;
	if (strcmp(label, P11_LABEL_AUDIT_SIGN) == 0)
		return p->audit_sign;
	return CK_INVALID_HANDLE;
}

CK_OBJECT_HANDLE p11_internal_audit_pubkey(struct p11 *p)
{
	return p->audit_pub;
}

/* ---------------------------------------------------------------- call timing */

/* The serving path's token calls, timed for kmsd_token_call_duration_seconds: each
 * public entry point above is its *_call plus a histogram entry. */
static struct p11_call_stats call_stats[P11_CALL__N];

static const char *const call_names[P11_CALL__N] = {
	"random", "kek_generate", "kek_load", "gcm_encrypt", "gcm_decrypt", "hmac", "audit_sign",
};

static const double call_bounds_s[P11_CALL_BUCKETS] = {0.00005, 0.0001, 0.00025, 0.0005, 0.001,
							0.0025,	 0.005,	 0.01,	  0.05,	  0.25};

static int64_t call_start(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void call_end(enum p11_call c, int64_t t0)
{
	uint64_t ns = (uint64_t)(call_start() - t0);
	double s = (double)ns / 1e9;
	unsigned b = 0;

	while (b < P11_CALL_BUCKETS && s > call_bounds_s[b])
		b++;
	__atomic_fetch_add(&call_stats[c].hist[b], 1, __ATOMIC_RELAXED);
	__atomic_fetch_add(&call_stats[c].ns_sum, ns, __ATOMIC_RELAXED);
}

kms_err p11_random(struct p11 *p, uint8_t *out, size_t n)
{
	int64_t t0 = call_start();
	kms_err rc = random_call(p, out, n);

	call_end(P11_CALL_RANDOM, t0);
	return rc;
}

kms_err p11_kek_generate(struct p11 *p, uint32_t mk_version, uint8_t blob[P11_KEK_BLOB_LEN])
{
	int64_t t0 = call_start();
	kms_err rc = kek_generate_call(p, mk_version, blob);

	call_end(P11_CALL_KEK_GENERATE, t0);
	return rc;
}

kms_err p11_kek_load(struct p11 *p, uint32_t mk_version, const uint8_t *blob, size_t blob_len,
		     p11_key *out)
{
	int64_t t0 = call_start();
	kms_err rc = kek_load_call(p, mk_version, blob, blob_len, out);

	call_end(P11_CALL_KEK_LOAD, t0);
	return rc;
}

kms_err p11_gcm_encrypt(struct p11 *p, p11_key k, const uint8_t iv[P11_GCM_IV_LEN],
			const uint8_t *aad, size_t aad_len, const uint8_t *pt, size_t pt_len,
			uint8_t *out, size_t out_cap)
{
	int64_t t0 = call_start();
	kms_err rc = gcm_encrypt_call(p, k, iv, aad, aad_len, pt, pt_len, out, out_cap);

	call_end(P11_CALL_GCM_ENCRYPT, t0);
	return rc;
}

kms_err p11_gcm_decrypt(struct p11 *p, p11_key k, const uint8_t iv[P11_GCM_IV_LEN],
			const uint8_t *aad, size_t aad_len, const uint8_t *in, size_t in_len,
			uint8_t *out, size_t out_cap, size_t *out_len)
{
	int64_t t0 = call_start();
	kms_err rc = gcm_decrypt_call(p, k, iv, aad, aad_len, in, in_len, out, out_cap, out_len);

	call_end(P11_CALL_GCM_DECRYPT, t0);
	return rc;
}

kms_err p11_hmac(struct p11 *p, enum p11_mac_key which, const uint8_t *data, size_t len,
		 uint8_t out[P11_HMAC_LEN])
{
	int64_t t0 = call_start();
	kms_err rc = hmac_call(p, which, data, len, out);

	call_end(P11_CALL_HMAC, t0);
	return rc;
}

kms_err p11_audit_sign(struct p11 *p, const uint8_t digest[P11_SHA256_LEN], uint8_t *sig,
		       size_t sig_cap, size_t *sig_len)
{
	int64_t t0 = call_start();
	kms_err rc = audit_sign_call(p, digest, sig, sig_cap, sig_len);

	call_end(P11_CALL_AUDIT_SIGN, t0);
	return rc;
}

void p11_metrics_write(FILE *f)
{
	fprintf(f, "# HELP kmsd_token_call_duration_seconds Time of the token operations on the "
		   "serving path (one message-shaped call of pkcs11/, token calls and session pool "
		   "wait included).\n"
		   "# TYPE kmsd_token_call_duration_seconds histogram\n");
	for (int c = 0; c < P11_CALL__N; c++) {
		uint64_t cum = 0;

		for (int b = 0; b <= P11_CALL_BUCKETS; b++) {
			cum += __atomic_load_n(&call_stats[c].hist[b], __ATOMIC_RELAXED);
			if (b < P11_CALL_BUCKETS)
				fprintf(f, "kmsd_token_call_duration_seconds_bucket{call=\"%s\",le=\"%g\"} %llu\n",
					call_names[c], call_bounds_s[b], (unsigned long long)cum);
			else
				fprintf(f, "kmsd_token_call_duration_seconds_bucket{call=\"%s\",le=\"+Inf\"} %llu\n",
					call_names[c], (unsigned long long)cum);
		}
		fprintf(f, "kmsd_token_call_duration_seconds_sum{call=\"%s\"} %.9f\n", call_names[c],
			(double)__atomic_load_n(&call_stats[c].ns_sum, __ATOMIC_RELAXED) / 1e9);
		fprintf(f, "kmsd_token_call_duration_seconds_count{call=\"%s\"} %llu\n", call_names[c],
			(unsigned long long)cum);
	}
	p11_ckr_counts_write(f);
}

/* ---- master-key fingerprint (backup manifests) ---------------------------------------
 * A value that names a master key without revealing it: the key wraps (KWP, which is
 * deterministic) a fixed, public 32-byte key made for the purpose, and the SHA-256 of
 * "kmsd-mk-fingerprint:1:" || that wrap is the fingerprint. Like a key check value it
 * is one known-plaintext block sequence under the key, which AES does not mind; two
 * tokens give the same fingerprint only if they hold the same master key value. */
kms_err p11_mk_fingerprint(struct p11 *p, uint32_t version, uint8_t out[P11_SHA256_LEN])
{
	static const char prefix[] = "kmsd-mk-fingerprint:1:";
	CK_MECHANISM kwp = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
	CK_BYTE value[32];
	CK_ATTRIBUTE tmpl[] = {
		A(CKA_CLASS, cls_secret),
		A(CKA_KEY_TYPE, kt_aes),
		A(CKA_TOKEN, ck_false),
		A(CKA_PRIVATE, ck_true),
		A(CKA_SENSITIVE, ck_false),
		A(CKA_EXTRACTABLE, ck_true),
		A(CKA_ENCRYPT, ck_false),
		A(CKA_DECRYPT, ck_false),
		A(CKA_WRAP, ck_false),
		A(CKA_UNWRAP, ck_false),
		A(CKA_SIGN, ck_false),
		A(CKA_VERIFY, ck_false),
		A(CKA_DERIVE, ck_false),
		{CKA_VALUE, value, sizeof(value)},
	};
	CK_OBJECT_HANDLE probe = CK_INVALID_HANDLE, mk = CK_INVALID_HANDLE;
	CK_BYTE wrapped[P11_KEK_BLOB_LEN];
	CK_ULONG n = sizeof(wrapped);
	unsigned int dlen = 0;
	kms_err rc;
	CK_RV rv;

	if (p == NULL || out == NULL)
		return kms_errf(KMS_ERR_INTERNAL, "token: p11_mk_fingerprint: bad arguments");
	/* the fixed key: SHA-256 of a public string, so that it is no special value */
	if (EVP_Digest("kmsd-mk-fingerprint-key", 23, value, &dlen, EVP_sha256(), NULL) != 1 ||
	    dlen != sizeof(value))
		return kms_errf(KMS_ERR_INTERNAL, "token: SHA-256 failed");
	pthread_mutex_lock(&p->obj_lock);
	rc = mk_get_locked(p, version, true, &mk);
	if (rc != KMS_OK)
		goto out;
	rv = p->f->C_CreateObject(p->holder, tmpl, NELEM(tmpl), &probe);
	if (session_lost(rv) && holder_reopen_locked(p, rv) == KMS_OK)
		rv = p->f->C_CreateObject(p->holder, tmpl, NELEM(tmpl), &probe);
	if (rv != CKR_OK) {
		probe = CK_INVALID_HANDLE;
		rc = p11_ckr_err(rv, "C_CreateObject(fingerprint probe)");
		goto out;
	}
	rv = p->f->C_WrapKey(p->holder, &kwp, mk, probe, wrapped, &n);
	if (rv != CKR_OK) {
		rc = p11_ckr_err(rv, "C_WrapKey(fingerprint probe under master key)");
		goto out;
	}
	{
		EVP_MD_CTX *md = EVP_MD_CTX_new();

		if (md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1 ||
		    EVP_DigestUpdate(md, prefix, sizeof(prefix) - 1) != 1 ||
		    EVP_DigestUpdate(md, wrapped, n) != 1 || EVP_DigestFinal_ex(md, out, &dlen) != 1)
			rc = kms_errf(KMS_ERR_INTERNAL, "token: SHA-256 failed");
		EVP_MD_CTX_free(md);
	}
out:
	if (probe != CK_INVALID_HANDLE && p->f->C_DestroyObject(p->holder, probe) != CKR_OK)
		kms_warn("token: could not destroy the fingerprint probe (a public value)");
	pthread_mutex_unlock(&p->obj_lock);
	return rc;
}

/* ---------------------------------------------------------------- MFA seed sealing */

static CK_MECHANISM_TYPE gcm_mechs[] = {CKM_AES_GCM};

/* kmsd-mfa-seal: AES-256, token, private, sensitive, not extractable, ENCRYPT/DECRYPT
 * only, ALLOWED_MECHANISMS={CKM_AES_GCM}. Needs only the user PIN, so it is made on
 * first use rather than at kmsd init (tokens provisioned before MFA existed get it then). */
static kms_err mfa_seal_create_locked(struct p11 *p, CK_OBJECT_HANDLE *out)
{
	static char label[] = P11_LABEL_MFA_SEAL;
	CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0};
	CK_ATTRIBUTE tmpl[] = {
		A(CKA_CLASS, cls_secret),
		A(CKA_KEY_TYPE, kt_aes),
		A(CKA_VALUE_LEN, len_32),
		A(CKA_TOKEN, ck_true),
		A(CKA_PRIVATE, ck_true),
		A(CKA_SENSITIVE, ck_true),
		A(CKA_EXTRACTABLE, ck_false),
		A(CKA_ENCRYPT, ck_true),
		A(CKA_DECRYPT, ck_true),
		A(CKA_SIGN, ck_false),
		A(CKA_VERIFY, ck_false),
		A(CKA_WRAP, ck_false),
		A(CKA_UNWRAP, ck_false),
		A(CKA_DERIVE, ck_false),
		{CKA_ALLOWED_MECHANISMS, gcm_mechs, sizeof(gcm_mechs)},
		{CKA_LABEL, label, sizeof(label) - 1},
	};
	CK_RV rv = p->f->C_GenerateKey(p->holder, &gen, tmpl, NELEM(tmpl), out);

	if (rv != CKR_OK)
		return p11_ckr_err(rv, "C_GenerateKey(MFA seal key)");
	kms_info("token: %s created", P11_LABEL_MFA_SEAL);
	return KMS_OK;
}

/* A key found by label must still be what mfa_seal_create_locked made. */
static kms_err mfa_seal_check_locked(struct p11 *p, CK_OBJECT_HANDLE h)
{
	CK_BBOOL sens = CK_FALSE, extr = CK_TRUE, never = CK_FALSE;
	CK_KEY_TYPE kt = 0;
	CK_ATTRIBUTE a[] = {
		{CKA_SENSITIVE, &sens, sizeof(sens)},
		{CKA_EXTRACTABLE, &extr, sizeof(extr)},
		{CKA_NEVER_EXTRACTABLE, &never, sizeof(never)},
		{CKA_KEY_TYPE, &kt, sizeof(kt)},
	};
	CK_RV rv = p->f->C_GetAttributeValue(p->holder, h, a, NELEM(a));

	if (rv != CKR_OK)
		return p11_ckr_err(rv, "C_GetAttributeValue(MFA seal key)");
	if (sens != CK_TRUE || extr != CK_FALSE || never != CK_TRUE || kt != CKK_AES) {
		kms_error("token: %s is not a sensitive, never-extractable AES key: refusing to use it",
			  P11_LABEL_MFA_SEAL);
		return kms_errf(KMS_ERR_TOKEN, "token: %s has the wrong attributes", P11_LABEL_MFA_SEAL);
	}
	return KMS_OK;
}

static kms_err mfa_seal_key(struct p11 *p, bool create, p11_key *out)
{
	CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
	unsigned n = 0;
	kms_err rc = KMS_OK;

	pthread_mutex_lock(&p->obj_lock);
	if (p->mfa_seal == CK_INVALID_HANDLE) {
		rc = find_key(p->f, p->holder, P11_LABEL_MFA_SEAL, &h, &n);
		if (rc == KMS_OK && n > 1)
			rc = kms_errf(KMS_ERR_TOKEN, "token: several objects are labelled %s", P11_LABEL_MFA_SEAL);
		else if (rc == KMS_OK && n == 0 && !create)
			rc = kms_errf(KMS_ERR_TOKEN, "token: %s is missing: sealed MFA seeds cannot be read",
				      P11_LABEL_MFA_SEAL);
		else if (rc == KMS_OK && n == 0)
			rc = mfa_seal_create_locked(p, &h);
		if (rc == KMS_OK)
			rc = mfa_seal_check_locked(p, h);
		if (rc == KMS_OK)
			p->mfa_seal = h;
	}
	if (rc == KMS_OK)
		*out = KEY_MAKE(p->holder_gen, p->mfa_seal);
	pthread_mutex_unlock(&p->obj_lock);
	return rc;
}

kms_err p11_mfa_seal(struct p11 *p, const uint8_t *aad, size_t aad_len, const uint8_t *seed, size_t seed_len,
		     uint8_t *out, size_t out_cap, size_t *out_len)
{
	p11_key k = 0;
	kms_err rc;

	if (p == NULL || out == NULL || out_len == NULL || seed == NULL || seed_len == 0 ||
	    seed_len > SIZE_MAX - P11_MFA_SEAL_OVERHEAD || out_cap < seed_len + P11_MFA_SEAL_OVERHEAD)
		return kms_errf(KMS_ERR_INTERNAL, "token: p11_mfa_seal: bad arguments");
	rc = mfa_seal_key(p, true, &k);
	if (rc == KMS_OK)
		rc = p11_random(p, out, P11_GCM_IV_LEN);
	if (rc == KMS_OK)
		rc = p11_gcm_encrypt(p, k, out, aad, aad_len, seed, seed_len, out + P11_GCM_IV_LEN,
				     out_cap - P11_GCM_IV_LEN);
	if (rc != KMS_OK) {
		kms_wipe(out, out_cap);
		return rc;
	}
	*out_len = seed_len + P11_MFA_SEAL_OVERHEAD;
	return KMS_OK;
}

kms_err p11_mfa_unseal(struct p11 *p, const uint8_t *aad, size_t aad_len, const uint8_t *in, size_t in_len,
		       uint8_t *seed, size_t seed_cap, size_t *seed_len)
{
	p11_key k = 0;
	kms_err rc;

	if (p == NULL || in == NULL || seed == NULL || seed_len == NULL)
		return kms_errf(KMS_ERR_INTERNAL, "token: p11_mfa_unseal: bad arguments");
	if (in_len <= P11_MFA_SEAL_OVERHEAD || in_len - P11_MFA_SEAL_OVERHEAD > seed_cap)
		return kms_errf(KMS_ERR_DECRYPT, "sealed MFA seed has a bad length");
	rc = mfa_seal_key(p, false, &k);
	if (rc == KMS_OK)
		rc = p11_gcm_decrypt(p, k, in, aad, aad_len, in + P11_GCM_IV_LEN, in_len - P11_GCM_IV_LEN, seed,
				     seed_cap, seed_len);
	if (rc != KMS_OK)
		kms_wipe(seed, seed_cap);
	return rc;
}

/* ---------------------------------------------------------------- health */

kms_err p11_health(struct p11 *p)
{
	CK_SESSION_INFO si;
	CK_RV rv;

	if (p == NULL)
		return kms_errf(KMS_ERR_TOKEN, "token: not open");
	memset(&si, 0, sizeof(si));
	/* The holder session is the one the user logged in on; asking it its state is the
	 * cheapest call that reaches the token (no crypto, no object search). */
	pthread_mutex_lock(&p->obj_lock);
	rv = p->f->C_GetSessionInfo(p->holder, &si);
	pthread_mutex_unlock(&p->obj_lock);
	if (rv != CKR_OK)
		return p11_ckr_err(rv, "C_GetSessionInfo");
	if (si.slotID != p->slot)
		return kms_errf(KMS_ERR_TOKEN, "token: the session belongs to slot %lu, not %lu",
				(unsigned long)si.slotID, (unsigned long)p->slot);
	if (si.state != CKS_RW_USER_FUNCTIONS && si.state != CKS_RO_USER_FUNCTIONS)
		return kms_errf(KMS_ERR_TOKEN, "token: the user is not logged in (session state %lu)",
				(unsigned long)si.state);
	return KMS_OK;
}
