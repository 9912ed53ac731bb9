/* p11shim: forwards to a real PKCS#11 module and injects faults on command. The
 * contract (environment, control file, what a fault does) is in p11shim.h. */
#include "tests/p11shim/p11shim.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <p11-kit/pkcs11.h>

#define SHIM_DEFAULT_TARGET "/usr/lib/softhsm/libsofthsm2.so"
#define SHIM_MAX_RULES 256
#define SHIM_LINE_MAX 512
#define SHIM_SCRATCH_MAX (64UL * 1024 * 1024) /* never allocate more to finish an operation */

/* Every function of the 2.40 list, in one place: counters, names and the rule parser
 * all come from it. */
#define SHIM_NAMES(X)                                                                      \
	X(C_Initialize) X(C_Finalize) X(C_GetInfo) X(C_GetFunctionList) X(C_GetSlotList)     \
	X(C_GetSlotInfo) X(C_GetTokenInfo) X(C_GetMechanismList) X(C_GetMechanismInfo)       \
	X(C_InitToken) X(C_InitPIN) X(C_SetPIN) X(C_OpenSession) X(C_CloseSession)          \
	X(C_CloseAllSessions) X(C_GetSessionInfo) X(C_GetOperationState)                     \
	X(C_SetOperationState) X(C_Login) X(C_Logout) X(C_CreateObject) X(C_CopyObject)      \
	X(C_DestroyObject) X(C_GetObjectSize) X(C_GetAttributeValue) X(C_SetAttributeValue) \
	X(C_FindObjectsInit) X(C_FindObjects) X(C_FindObjectsFinal) X(C_EncryptInit)         \
	X(C_Encrypt) X(C_EncryptUpdate) X(C_EncryptFinal) X(C_DecryptInit) X(C_Decrypt)      \
	X(C_DecryptUpdate) X(C_DecryptFinal) X(C_DigestInit) X(C_Digest) X(C_DigestUpdate)   \
	X(C_DigestKey) X(C_DigestFinal) X(C_SignInit) X(C_Sign) X(C_SignUpdate)              \
	X(C_SignFinal) X(C_SignRecoverInit) X(C_SignRecover) X(C_VerifyInit) X(C_Verify)     \
	X(C_VerifyUpdate) X(C_VerifyFinal) X(C_VerifyRecoverInit) X(C_VerifyRecover)         \
	X(C_DigestEncryptUpdate) X(C_DecryptDigestUpdate) X(C_SignEncryptUpdate)             \
	X(C_DecryptVerifyUpdate) X(C_GenerateKey) X(C_GenerateKeyPair) X(C_WrapKey)          \
	X(C_UnwrapKey) X(C_DeriveKey) X(C_SeedRandom) X(C_GenerateRandom)                    \
	X(C_GetFunctionStatus) X(C_CancelFunction) X(C_WaitForSlotEvent)

enum shim_fn {
#define X(n) FN_##n,
	SHIM_NAMES(X)
#undef X
	FN__COUNT
};

static const char *const fn_names[FN__COUNT] = {
#define X(n) [FN_##n] = #n,
	SHIM_NAMES(X)
#undef X
};

#define R(x) {#x, x}
static const struct {
	const char *name;
	CK_RV rv;
} rv_names[] = {
	R(CKR_OK),
	R(CKR_CANCEL),
	R(CKR_HOST_MEMORY),
	R(CKR_SLOT_ID_INVALID),
	R(CKR_GENERAL_ERROR),
	R(CKR_FUNCTION_FAILED),
	R(CKR_ARGUMENTS_BAD),
	R(CKR_DEVICE_ERROR),
	R(CKR_DEVICE_MEMORY),
	R(CKR_DEVICE_REMOVED),
	R(CKR_ENCRYPTED_DATA_INVALID),
	R(CKR_ENCRYPTED_DATA_LEN_RANGE),
	R(CKR_FUNCTION_CANCELED),
	R(CKR_KEY_HANDLE_INVALID),
	R(CKR_OBJECT_HANDLE_INVALID),
	R(CKR_OPERATION_ACTIVE),
	R(CKR_OPERATION_NOT_INITIALIZED),
	R(CKR_PIN_INCORRECT),
	R(CKR_PIN_LOCKED),
	R(CKR_SESSION_CLOSED),
	R(CKR_SESSION_COUNT),
	R(CKR_SESSION_HANDLE_INVALID),
	R(CKR_TOKEN_NOT_PRESENT),
	R(CKR_TOKEN_NOT_RECOGNIZED),
	R(CKR_USER_NOT_LOGGED_IN),
	R(CKR_WRAPPED_KEY_INVALID),
	R(CKR_RANDOM_NO_RNG),
	R(CKR_BUFFER_TOO_SMALL),
	R(CKR_CRYPTOKI_NOT_INITIALIZED),
	R(CKR_TEMPLATE_INCONSISTENT),
	R(CKR_KEY_NOT_WRAPPABLE),
	R(CKR_MECHANISM_INVALID),
};
#undef R

struct rule {
	enum shim_fn fn;
	unsigned long n; /* 1-based call number */
	CK_RV rv;
	int persist; /* every call from the nth on, else the nth only */
	int close;   /* also close the session in the real module */
	int fired;
};

/* What the control file looked like when it was last loaded. */
struct file_id {
	int present;
	dev_t dev;
	ino_t ino;
	off_t size;
	struct timespec mtime, ctime;
};

static pthread_mutex_t shim_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static CK_FUNCTION_LIST_PTR real;      /* the real module's list, set once */
static CK_RV load_rv = CKR_GENERAL_ERROR; /* result of loading it */
static struct rule rules[SHIM_MAX_RULES];
static size_t n_rules;
static unsigned long calls[FN__COUNT];	  /* since the last load of the control file */
static unsigned long injected[FN__COUNT]; /* since the shim was loaded */
static struct file_id loaded;

/* ------------------------------------------------------------------ loading */

static void load_real(void)
{
	const char *path = getenv("KMS_SHIM_TARGET");
	CK_C_GetFunctionList get;
	void *dl;

	if (path == NULL || *path == '\0')
		path = SHIM_DEFAULT_TARGET;
	/* never unloaded: the real module may keep threads, and we keep its list */
	dl = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
	if (dl == NULL) {
		fprintf(stderr, "p11shim: cannot load %s: %s\n", path, dlerror());
		return;
	}
	get = (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList");
	if (get == NULL) {
		fprintf(stderr, "p11shim: %s has no C_GetFunctionList\n", path);
		return;
	}
	load_rv = get(&real);
	if (load_rv == CKR_OK && real == NULL)
		load_rv = CKR_GENERAL_ERROR;
	if (load_rv != CKR_OK)
		fprintf(stderr, "p11shim: C_GetFunctionList of %s failed: 0x%lx\n", path,
			(unsigned long)load_rv);
}

/* ------------------------------------------------------------------ control file */

static int parse_fn(const char *s, enum shim_fn *out)
{
	for (int i = 0; i < FN__COUNT; i++) {
		if (strcmp(fn_names[i], s) == 0) {
			*out = (enum shim_fn)i;
			return 0;
		}
	}
	return -1;
}

static int parse_rv(const char *s, CK_RV *out)
{
	char *end;
	unsigned long v;

	for (size_t i = 0; i < sizeof(rv_names) / sizeof(rv_names[0]); i++) {
		if (strcmp(rv_names[i].name, s) == 0) {
			*out = rv_names[i].rv;
			return 0;
		}
	}
	errno = 0;
	v = strtoul(s, &end, 0);
	if (errno != 0 || end == s || *end != '\0')
		return -1;
	*out = (CK_RV)v;
	return 0;
}

/* One line into r; 1 = a rule, 0 = blank or comment, -1 = malformed. */
static int parse_rule(char *line, struct rule *r)
{
	char *tok[6], *save = NULL, *p, *end;
	int n = 0;

	p = strchr(line, '#');
	if (p != NULL)
		*p = '\0';
	for (p = strtok_r(line, " \t\r\n", &save); p != NULL && n < 6;
	     p = strtok_r(NULL, " \t\r\n", &save))
		tok[n++] = p;
	if (n == 0)
		return 0;
	if (n < 3 || n > 5 || p != NULL)
		return -1;
	memset(r, 0, sizeof(*r));
	if (parse_fn(tok[0], &r->fn) != 0)
		return -1;
	errno = 0;
	r->n = strtoul(tok[1], &end, 10);
	if (errno != 0 || end == tok[1] || *end != '\0' || r->n == 0)
		return -1;
	if (parse_rv(tok[2], &r->rv) != 0)
		return -1;
	for (int i = 3; i < n; i++) {
		if (strcmp(tok[i], "once") == 0)
			r->persist = 0;
		else if (strcmp(tok[i], "persist") == 0)
			r->persist = 1;
		else if (strcmp(tok[i], "close") == 0)
			r->close = 1;
		else
			return -1;
	}
	return 1;
}

static int same_file(const struct file_id *a, const struct file_id *b)
{
	if (a->present != b->present)
		return 0;
	if (!a->present)
		return 1;
	return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
	       a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec &&
	       a->ctime.tv_sec == b->ctime.tv_sec && a->ctime.tv_nsec == b->ctime.tv_nsec;
}

/* Reloads the rules if the control file changed since the last look; resets counters.
 * Called with shim_mu held. */
static void reload_locked(void)
{
	const char *path = getenv("KMS_SHIM_CONTROL");
	struct file_id now = {0};
	char line[SHIM_LINE_MAX];
	struct stat st;
	unsigned lineno = 0;
	FILE *fp = NULL;

	if (path != NULL && *path != '\0' && stat(path, &st) == 0) {
		now.present = 1;
		now.dev = st.st_dev;
		now.ino = st.st_ino;
		now.size = st.st_size;
		now.mtime = st.st_mtim;
		now.ctime = st.st_ctim;
	}
	if (same_file(&now, &loaded))
		return;
	n_rules = 0;
	memset(calls, 0, sizeof(calls));
	if (now.present)
		fp = fopen(path, "re");
	if (fp != NULL) {
		/* Identify what we actually read, not what stat saw a moment before. */
		if (fstat(fileno(fp), &st) == 0) {
			now.dev = st.st_dev;
			now.ino = st.st_ino;
			now.size = st.st_size;
			now.mtime = st.st_mtim;
			now.ctime = st.st_ctim;
		}
		while (fgets(line, sizeof(line), fp) != NULL) {
			struct rule r;
			int got;

			lineno++;
			got = parse_rule(line, &r);
			if (got < 0)
				fprintf(stderr, "p11shim: %s:%u: ignored (want: C_Function N CKR_X [once|persist] [close])\n",
					path, lineno);
			else if (got > 0 && n_rules < SHIM_MAX_RULES)
				rules[n_rules++] = r;
			else if (got > 0)
				fprintf(stderr, "p11shim: %s:%u: more than %d rules, ignored\n", path,
					lineno, SHIM_MAX_RULES);
		}
		fclose(fp);
	} else if (now.present) {
		now.present = 0; /* vanished between stat and open: look again next call */
	}
	loaded = now;
}

struct fault {
	int hit;
	int close;
	CK_RV rv;
};

/* Counts one call of fn and says whether it is to fail. */
static struct fault decide(enum shim_fn fn)
{
	struct fault f = {0, 0, CKR_OK};
	unsigned long c;

	pthread_mutex_lock(&shim_mu);
	reload_locked();
	c = ++calls[fn];
	for (size_t i = 0; i < n_rules; i++) {
		struct rule *r = &rules[i];

		if (r->fn != fn)
			continue;
		if (r->persist ? c >= r->n : (c == r->n && !r->fired)) {
			r->fired = 1;
			f.hit = 1;
			f.close |= r->close;
			f.rv = r->rv;
			break;
		}
	}
	if (f.hit)
		injected[fn]++;
	pthread_mutex_unlock(&shim_mu);
	return f;
}

/* A fault on a session call: close the real session first if asked. */
static int inject_s(enum shim_fn fn, CK_SESSION_HANDLE s, CK_RV *rv)
{
	struct fault f = decide(fn);

	if (!f.hit)
		return 0;
	if (f.close)
		(void)real->C_CloseSession(s);
	*rv = f.rv;
	return 1;
}

static int inject(enum shim_fn fn, CK_RV *rv)
{
	struct fault f = decide(fn);

	if (f.hit)
		*rv = f.rv;
	return f.hit;
}

/* ------------------------------------------------------------------ ending operations */

static void wipe_free(CK_BYTE_PTR p, CK_ULONG n)
{
	volatile CK_BYTE *v = p;

	if (p == NULL)
		return;
	for (CK_ULONG i = 0; i < n; i++)
		v[i] = 0;
	free(p);
}

typedef CK_RV (*op5_fn)(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);
typedef CK_RV (*op3_fn)(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG_PTR);

/* Finishes a single-part operation in the real module, as a failed call would have
 * (PKCS#11 2.40 5.2: a call that fails for any reason but CKR_BUFFER_TOO_SMALL ends
 * the operation). Output goes to a wiped scratch buffer. */
static void end_op5(op5_fn f, CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len, CK_ULONG hint)
{
	CK_ULONG n = hint;
	CK_BYTE_PTR buf;
	CK_RV rv;

	for (int attempt = 0; attempt < 2; attempt++) {
		if (n == 0 || n > SHIM_SCRATCH_MAX) {
			rv = f(s, in, in_len, NULL, &n);
			if (rv != CKR_OK || n == 0 || n > SHIM_SCRATCH_MAX)
				return;
		}
		buf = calloc(1, n);
		if (buf == NULL)
			return;
		rv = f(s, in, in_len, buf, &n);
		wipe_free(buf, n);
		if (rv != CKR_BUFFER_TOO_SMALL)
			return;
	}
}

static void end_op3(op3_fn f, CK_SESSION_HANDLE s, CK_ULONG hint)
{
	CK_ULONG n = hint;
	CK_BYTE_PTR buf;
	CK_RV rv;

	for (int attempt = 0; attempt < 2; attempt++) {
		if (n == 0 || n > SHIM_SCRATCH_MAX) {
			rv = f(s, NULL, &n);
			if (rv != CKR_OK || n == 0 || n > SHIM_SCRATCH_MAX)
				return;
		}
		buf = calloc(1, n);
		if (buf == NULL)
			return;
		rv = f(s, buf, &n);
		wipe_free(buf, n);
		if (rv != CKR_BUFFER_TOO_SMALL)
			return;
	}
}

/* ------------------------------------------------------------------ the functions */

static CK_FUNCTION_LIST shim_list;

static CK_RV shim_C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out)
{
	pthread_once(&load_once, load_real);
	if (load_rv != CKR_OK)
		return load_rv;
	if (out == NULL)
		return CKR_ARGUMENTS_BAD;
	*out = &shim_list;
	return CKR_OK;
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out)
{
	return shim_C_GetFunctionList(out);
}

static CK_RV shim_C_Initialize(CK_VOID_PTR args)
{
	CK_RV rv;

	pthread_once(&load_once, load_real);
	if (load_rv != CKR_OK)
		return load_rv;
	if (inject(FN_C_Initialize, &rv))
		return rv;
	return real->C_Initialize(args);
}

/* Calls that need no session, and calls whose first argument is one. */
#define PLAIN(name, params, args)                                                          \
	static CK_RV shim_##name params                                                    \
	{                                                                                  \
		CK_RV rv;                                                                  \
		if (inject(FN_##name, &rv))                                                \
			return rv;                                                         \
		return real->name args;                                                    \
	}
#define SESS(name, params, args)                                                           \
	static CK_RV shim_##name params                                                    \
	{                                                                                  \
		CK_RV rv;                                                                  \
		if (inject_s(FN_##name, s, &rv))                                           \
			return rv;                                                         \
		return real->name args;                                                    \
	}
/* Single-part calls (s, in, in_len, out, out_len) that end the operation on failure. */
#define END5(name)                                                                         \
	static CK_RV shim_##name(CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len,     \
				 CK_BYTE_PTR out, CK_ULONG_PTR out_len)                    \
	{                                                                                  \
		CK_RV rv;                                                                  \
		if (inject_s(FN_##name, s, &rv)) {                                         \
			end_op5(real->name, s, in, in_len,                                 \
				out != NULL && out_len != NULL ? *out_len : 0);            \
			return rv;                                                         \
		}                                                                          \
		return real->name(s, in, in_len, out, out_len);                            \
	}
#define END3(name)                                                                         \
	static CK_RV shim_##name(CK_SESSION_HANDLE s, CK_BYTE_PTR out, CK_ULONG_PTR out_len) \
	{                                                                                  \
		CK_RV rv;                                                                  \
		if (inject_s(FN_##name, s, &rv)) {                                         \
			end_op3(real->name, s, out != NULL && out_len != NULL ? *out_len : 0); \
			return rv;                                                         \
		}                                                                          \
		return real->name(s, out, out_len);                                        \
	}

PLAIN(C_Finalize, (CK_VOID_PTR r), (r))
PLAIN(C_GetInfo, (CK_INFO_PTR i), (i))
PLAIN(C_GetSlotList, (CK_BBOOL tp, CK_SLOT_ID_PTR l, CK_ULONG_PTR n), (tp, l, n))
PLAIN(C_GetSlotInfo, (CK_SLOT_ID id, CK_SLOT_INFO_PTR i), (id, i))
PLAIN(C_GetTokenInfo, (CK_SLOT_ID id, CK_TOKEN_INFO_PTR i), (id, i))
PLAIN(C_WaitForSlotEvent, (CK_FLAGS f, CK_SLOT_ID_PTR id, CK_VOID_PTR r), (f, id, r))
PLAIN(C_GetMechanismList, (CK_SLOT_ID id, CK_MECHANISM_TYPE_PTR l, CK_ULONG_PTR n), (id, l, n))
PLAIN(C_GetMechanismInfo, (CK_SLOT_ID id, CK_MECHANISM_TYPE t, CK_MECHANISM_INFO_PTR i), (id, t, i))
PLAIN(C_InitToken, (CK_SLOT_ID id, CK_UTF8CHAR_PTR pin, CK_ULONG n, CK_UTF8CHAR_PTR label),
      (id, pin, n, label))
PLAIN(C_OpenSession, (CK_SLOT_ID id, CK_FLAGS f, CK_VOID_PTR app, CK_NOTIFY cb, CK_SESSION_HANDLE_PTR s),
      (id, f, app, cb, s))
PLAIN(C_CloseAllSessions, (CK_SLOT_ID id), (id))

SESS(C_InitPIN, (CK_SESSION_HANDLE s, CK_UTF8CHAR_PTR pin, CK_ULONG n), (s, pin, n))
SESS(C_SetPIN, (CK_SESSION_HANDLE s, CK_UTF8CHAR_PTR o, CK_ULONG on, CK_UTF8CHAR_PTR p, CK_ULONG pn),
     (s, o, on, p, pn))
SESS(C_CloseSession, (CK_SESSION_HANDLE s), (s))
SESS(C_GetSessionInfo, (CK_SESSION_HANDLE s, CK_SESSION_INFO_PTR i), (s, i))
SESS(C_GetOperationState, (CK_SESSION_HANDLE s, CK_BYTE_PTR st, CK_ULONG_PTR n), (s, st, n))
SESS(C_SetOperationState,
     (CK_SESSION_HANDLE s, CK_BYTE_PTR st, CK_ULONG n, CK_OBJECT_HANDLE e, CK_OBJECT_HANDLE a),
     (s, st, n, e, a))
SESS(C_Login, (CK_SESSION_HANDLE s, CK_USER_TYPE u, CK_UTF8CHAR_PTR pin, CK_ULONG n), (s, u, pin, n))
SESS(C_Logout, (CK_SESSION_HANDLE s), (s))
SESS(C_CreateObject, (CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR o),
     (s, t, n, o))
SESS(C_CopyObject,
     (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR o),
     (s, h, t, n, o))
SESS(C_DestroyObject, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h), (s, h))
SESS(C_GetObjectSize, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, CK_ULONG_PTR n), (s, h, n))
SESS(C_GetAttributeValue, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_PTR t, CK_ULONG n),
     (s, h, t, n))
SESS(C_SetAttributeValue, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_PTR t, CK_ULONG n),
     (s, h, t, n))
SESS(C_FindObjectsInit, (CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n), (s, t, n))
SESS(C_FindObjects, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE_PTR o, CK_ULONG max, CK_ULONG_PTR n),
     (s, o, max, n))
SESS(C_FindObjectsFinal, (CK_SESSION_HANDLE s), (s))
SESS(C_EncryptInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))
END5(C_Encrypt)
SESS(C_EncryptUpdate, (CK_SESSION_HANDLE s, CK_BYTE_PTR p, CK_ULONG pn, CK_BYTE_PTR o, CK_ULONG_PTR on),
     (s, p, pn, o, on))
END3(C_EncryptFinal)
SESS(C_DecryptInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))
END5(C_Decrypt)
SESS(C_DecryptUpdate, (CK_SESSION_HANDLE s, CK_BYTE_PTR p, CK_ULONG pn, CK_BYTE_PTR o, CK_ULONG_PTR on),
     (s, p, pn, o, on))
END3(C_DecryptFinal)
SESS(C_DigestInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m), (s, m))
END5(C_Digest)
SESS(C_DigestUpdate, (CK_SESSION_HANDLE s, CK_BYTE_PTR p, CK_ULONG n), (s, p, n))
SESS(C_DigestKey, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE k), (s, k))
END3(C_DigestFinal)
SESS(C_SignInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))
END5(C_Sign)
SESS(C_SignUpdate, (CK_SESSION_HANDLE s, CK_BYTE_PTR p, CK_ULONG n), (s, p, n))
END3(C_SignFinal)
SESS(C_SignRecoverInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))
END5(C_SignRecover)
SESS(C_VerifyInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))
SESS(C_VerifyUpdate, (CK_SESSION_HANDLE s, CK_BYTE_PTR p, CK_ULONG n), (s, p, n))
SESS(C_VerifyRecoverInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))
END5(C_VerifyRecover)
SESS(C_DigestEncryptUpdate,
     (CK_SESSION_HANDLE s, CK_BYTE_PTR p, CK_ULONG pn, CK_BYTE_PTR o, CK_ULONG_PTR on), (s, p, pn, o, on))
SESS(C_DecryptDigestUpdate,
     (CK_SESSION_HANDLE s, CK_BYTE_PTR p, CK_ULONG pn, CK_BYTE_PTR o, CK_ULONG_PTR on), (s, p, pn, o, on))
SESS(C_SignEncryptUpdate,
     (CK_SESSION_HANDLE s, CK_BYTE_PTR p, CK_ULONG pn, CK_BYTE_PTR o, CK_ULONG_PTR on), (s, p, pn, o, on))
SESS(C_DecryptVerifyUpdate,
     (CK_SESSION_HANDLE s, CK_BYTE_PTR p, CK_ULONG pn, CK_BYTE_PTR o, CK_ULONG_PTR on), (s, p, pn, o, on))
SESS(C_GenerateKey,
     (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR k),
     (s, m, t, n, k))
SESS(C_GenerateKeyPair,
     (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR pt, CK_ULONG pn, CK_ATTRIBUTE_PTR vt,
      CK_ULONG vn, CK_OBJECT_HANDLE_PTR pk, CK_OBJECT_HANDLE_PTR vk),
     (s, m, pt, pn, vt, vn, pk, vk))
SESS(C_WrapKey,
     (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE w, CK_OBJECT_HANDLE k, CK_BYTE_PTR o,
      CK_ULONG_PTR on),
     (s, m, w, k, o, on))
SESS(C_UnwrapKey,
     (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE u, CK_BYTE_PTR b, CK_ULONG bn,
      CK_ATTRIBUTE_PTR t, CK_ULONG tn, CK_OBJECT_HANDLE_PTR k),
     (s, m, u, b, bn, t, tn, k))
SESS(C_DeriveKey,
     (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR t, CK_ULONG tn,
      CK_OBJECT_HANDLE_PTR k),
     (s, m, b, t, tn, k))
SESS(C_SeedRandom, (CK_SESSION_HANDLE s, CK_BYTE_PTR p, CK_ULONG n), (s, p, n))
SESS(C_GenerateRandom, (CK_SESSION_HANDLE s, CK_BYTE_PTR p, CK_ULONG n), (s, p, n))
SESS(C_GetFunctionStatus, (CK_SESSION_HANDLE s), (s))
SESS(C_CancelFunction, (CK_SESSION_HANDLE s), (s))

/* Verification has no output to discard: finishing it is just calling it. */
static CK_RV shim_C_Verify(CK_SESSION_HANDLE s, CK_BYTE_PTR d, CK_ULONG dn, CK_BYTE_PTR sig, CK_ULONG sn)
{
	CK_RV rv;

	if (inject_s(FN_C_Verify, s, &rv)) {
		(void)real->C_Verify(s, d, dn, sig, sn);
		return rv;
	}
	return real->C_Verify(s, d, dn, sig, sn);
}

static CK_RV shim_C_VerifyFinal(CK_SESSION_HANDLE s, CK_BYTE_PTR sig, CK_ULONG sn)
{
	CK_RV rv;

	if (inject_s(FN_C_VerifyFinal, s, &rv)) {
		(void)real->C_VerifyFinal(s, sig, sn);
		return rv;
	}
	return real->C_VerifyFinal(s, sig, sn);
}

static CK_FUNCTION_LIST shim_list = {
	.version = {2, 40},
#define X(n) .n = shim_##n,
	SHIM_NAMES(X)
#undef X
};

/* ------------------------------------------------------------------ test interface */

unsigned long p11shim_calls(const char *fn)
{
	enum shim_fn f;
	unsigned long n;

	if (fn == NULL || parse_fn(fn, &f) != 0)
		return 0;
	pthread_mutex_lock(&shim_mu);
	reload_locked();
	n = calls[f];
	pthread_mutex_unlock(&shim_mu);
	return n;
}

unsigned long p11shim_injected(const char *fn)
{
	enum shim_fn f;
	unsigned long n = 0;

	pthread_mutex_lock(&shim_mu);
	if (fn == NULL) {
		for (int i = 0; i < FN__COUNT; i++)
			n += injected[i];
	} else if (parse_fn(fn, &f) == 0) {
		n = injected[f];
	}
	pthread_mutex_unlock(&shim_mu);
	return n;
}
