/* Test fixture: a fresh SoftHSM2 token in a new temporary directory.
 *
 *   struct softhsm_token t;
 *   assert_int_equal(softhsm_token_create(&t), 0);
 *   ... p11_provision / p11_open with t.label, t.so_pin, t.user_pin ...
 *   softhsm_token_destroy(&t);
 *
 * softhsm_token_create makes /tmp/kmsd-softhsm-XXXXXX, writes softhsm2.conf there
 * (tokens in <dir>/tokens, file backend, log level ERROR), points SOFTHSM2_CONF at
 * it (process-wide: one token at a time per process, and the PKCS#11 module must be
 * (re)initialised after create, i.e. no struct p11 may be open across create) and
 * runs `softhsm2-util --init-token --free` quietly. Returns 0, or -1 with a message
 * on stderr. softhsm_token_destroy removes the directory and unsets SOFTHSM2_CONF;
 * it accepts a token whose create failed. */
#ifndef KMS_TESTS_SOFTHSM_H
#define KMS_TESTS_SOFTHSM_H

#include <stddef.h>

#define SOFTHSM_LABEL "kmsd"
#define SOFTHSM_SO_PIN "so-pin-1234"
#define SOFTHSM_USER_PIN "user-pin-5678"
#define SOFTHSM_MODULE "/usr/lib/softhsm/libsofthsm2.so"

struct softhsm_token {
	char dir[64];	 /* the temporary directory, "" if none */
	char conf[128];	 /* <dir>/softhsm2.conf */
	const char *module; /* SOFTHSM_MODULE */
	const char *label;  /* SOFTHSM_LABEL */
	const char *so_pin; /* SOFTHSM_SO_PIN */
	size_t so_pin_len;
	const char *user_pin; /* SOFTHSM_USER_PIN */
	size_t user_pin_len;
};

int softhsm_token_create(struct softhsm_token *t);
void softhsm_token_destroy(struct softhsm_token *t);

#endif
