/* kms/base: strict base64 and hex, error catalogue, JSON strictness and the JSON writer
 * (byte for byte jansson's output), secret memory. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kms/base/b64.h"
#include "kms/base/err.h"
#include "kms/base/fileio.h"
#include "kms/base/json.h"
#include "kms/base/secret.h"

static void test_b64_rfc4648_vectors(void **state)
{
	static const char *const in[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
	static const char *const out[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
	char enc[32];
	uint8_t dec[32];
	(void)state;

	for (size_t i = 0; i < 7; i++) {
		long n = kms_b64_encode((const uint8_t *)in[i], strlen(in[i]), enc, sizeof(enc));
		assert_int_equal(n, (long)strlen(out[i]));
		assert_string_equal(enc, out[i]);
		n = kms_b64_decode(out[i], strlen(out[i]), dec, sizeof(dec));
		assert_int_equal(n, (long)strlen(in[i]));
		assert_memory_equal(dec, in[i], strlen(in[i]));
	}
}

static void test_b64_rejects(void **state)
{
	static const char *const bad[] = {"Zg=",  "Zg",	 "Z===", "Zh==",     /* non-zero trailing bits */
					  "Zm9=", "Zm 9v", "Zm9v\n", "Zm=v", "=Zm9", "Zm9v-_==", "Zm9%"};
	uint8_t dec[32];
	(void)state;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(kms_b64_decode(bad[i], strlen(bad[i]), dec, sizeof(dec)), -1);
	/* output too small */
	assert_int_equal(kms_b64_decode("Zm9vYmFy", 8, dec, 5), -1);
	/* encode into too small a buffer */
	char tiny[4];
	assert_int_equal(kms_b64_encode((const uint8_t *)"foo", 3, tiny, sizeof(tiny)), -1);
}

static void test_hex(void **state)
{
	uint8_t b[4] = {0x00, 0x9f, 0xa0, 0xff}, d[4];
	char h[9];
	size_t n;
	(void)state;

	kms_hex_encode(b, 4, h);
	assert_string_equal(h, "009fa0ff");
	assert_int_equal(kms_hex_decode("009FA0ff", 8, d, sizeof(d), &n), 0);
	assert_int_equal(n, 4);
	assert_memory_equal(b, d, 4);
	assert_int_equal(kms_hex_decode("0g", 2, d, sizeof(d), &n), -1);
	assert_int_equal(kms_hex_decode("abc", 3, d, sizeof(d), &n), -1);
	assert_int_equal(kms_hex_decode("0011223344", 10, d, sizeof(d), &n), -1);
}

static void test_err_table(void **state)
{
	(void)state;
	assert_int_equal(kms_err_http_status(KMS_OK), 200);
	assert_int_equal(kms_err_http_status(KMS_ERR_INVALID), 400);
	assert_int_equal(kms_err_http_status(KMS_ERR_DECRYPT), 400);
	assert_int_equal(kms_err_http_status(KMS_ERR_UNAUTHENTICATED), 401);
	assert_int_equal(kms_err_http_status(KMS_ERR_DENIED), 403);
	assert_int_equal(kms_err_http_status(KMS_ERR_NOT_FOUND), 404);
	assert_int_equal(kms_err_http_status(KMS_ERR_CONFLICT), 409);
	assert_int_equal(kms_err_http_status(KMS_ERR_TOO_LARGE), 413);
	assert_int_equal(kms_err_http_status(KMS_ERR_TOKEN), 503);
	assert_int_equal(kms_err_http_status(KMS_ERR_AUDIT), 503);
	assert_int_equal(kms_err_http_status((kms_err)999), 500);
	for (int e = 0; e < KMS_ERR__COUNT; e++)
		assert_non_null(kms_strerror((kms_err)e));
	kms_err_clear();
	assert_string_equal(kms_err_detail(KMS_ERR_DENIED), "permission denied");
	assert_int_equal(kms_errf(KMS_ERR_INVALID, "bits must be %d", 7), KMS_ERR_INVALID);
	assert_string_equal(kms_err_detail(KMS_ERR_INVALID), "bits must be 7");
}

static void test_json_strict(void **state)
{
	static const char *const allowed[] = {"a", "b", NULL};
	kms_err e;
	json_t *v;
	const char *s;
	long long n;
	int b;
	(void)state;

	v = kms_json_parse_object("{\"a\":1,\"a\":2}", 13, &e);
	assert_null(v);
	assert_int_equal(e, KMS_ERR_INVALID);
	assert_non_null(strstr(kms_err_detail(e), "duplicate"));
	assert_null(kms_json_parse_object("[1,2]", 5, &e));
	assert_int_equal(e, KMS_ERR_INVALID);
	assert_null(kms_json_parse_object("{\"a\":", 5, &e));
	assert_null(kms_json_parse_object("{} {}", 5, &e));

	v = kms_json_parse_object("{\"a\":\"x\",\"b\":\"12\",\"c\":true}", 27, &e);
	assert_non_null(v);
	assert_int_equal(kms_json_only(v, allowed), KMS_ERR_INVALID);
	assert_non_null(strstr(kms_err_detail(KMS_ERR_INVALID), "\"c\""));
	assert_int_equal(kms_json_opt_string(v, "a", &s), KMS_OK);
	assert_string_equal(s, "x");
	assert_int_equal(kms_json_opt_string(v, "c", &s), KMS_ERR_INVALID);
	assert_int_equal(kms_json_opt_uint(v, "b", 0, 100, &n), KMS_OK);
	assert_int_equal(n, 12);
	assert_int_equal(kms_json_opt_uint(v, "b", 0, 10, &n), KMS_ERR_INVALID);
	assert_int_equal(kms_json_opt_uint(v, "a", 0, 10, &n), KMS_ERR_INVALID);
	assert_int_equal(kms_json_opt_uint(v, "zz", 5, 10, &n), KMS_OK);
	assert_int_equal(n, 5);
	assert_int_equal(kms_json_opt_bool(v, "c", 0, &b), KMS_OK);
	assert_int_equal(b, 1);
	assert_int_equal(kms_json_opt_bool(v, "a", 0, &b), KMS_ERR_INVALID);
	json_decref(v);
}

/* Strings that exercise every escape: quotes, backslash, each control character, DEL,
 * 2-, 3- and 4-byte UTF-8 (a surrogate pair with JSON_ENSURE_ASCII), an embedded NUL. */
static const char *const jw_strings[] = {
	"", "plain", "q\"uo\\te/slash", "\b\f\n\r\t\x01\x1f\x7f", "caf\xc3\xa9",
	"\xe2\x82\xac uro", "\xf0\x9f\x98\x80 smile", "\xef\xbf\xbf\xf4\x8f\xbf\xbf", NULL,
};

/* One document with nested containers, every scalar type and the strings above, as keys
 * and as values. */
static json_t *jw_doc(void)
{
	json_t *o = json_object(), *arr = json_array(), *inner = json_object();

	for (size_t i = 0; jw_strings[i] != NULL; i++) {
		json_object_set_new(o, jw_strings[i], json_string(jw_strings[i]));
		json_array_append_new(arr, json_string(jw_strings[i]));
	}
	json_object_set_new(o, "nul", json_stringn("a\0b", 3));
	json_object_set_new(o, "ints", json_pack("[I,I,I,I,i]", (json_int_t)0, (json_int_t)-1,
						 (json_int_t)INT64_MAX, (json_int_t)INT64_MIN, 42));
	json_object_set_new(o, "reals", json_pack("[f,f,f,f]", 0.1, 3.0, -1e300, 1.5e-7));
	json_object_set_new(o, "bools", json_pack("[b,b,n]", 1, 0));
	json_object_set_new(o, "empty", json_pack("{s:{},s:[]}", "o", "a"));
	json_object_set_new(inner, "zeta", json_integer(1));
	json_object_set_new(inner, "alpha", arr);
	json_object_set_new(o, "inner", inner);
	return o;
}

static void test_json_writer_matches_jansson(void **state)
{
	json_t *doc = jw_doc(), *bad;
	char *want, *got, small[8], buf[512];
	struct kms_jw w;
	size_t n, len = 0;
	(void)state;

	assert_non_null(doc);
	want = json_dumps(doc, JSON_COMPACT);
	got = kms_json_dump(doc, &len);
	assert_non_null(want);
	assert_non_null(got);
	assert_int_equal(len, strlen(want));
	assert_string_equal(got, want);
	kms_json_free_str(got, len);
	kms_json_free_str(want, 0); /* jansson allocated it through kms_json_init's allocator */

	/* JSON_ENSURE_ASCII, as the audit log writes */
	want = json_dumps(doc, JSON_COMPACT | JSON_ENSURE_ASCII);
	kms_jw_init(&w, NULL, 0, true);
	kms_jw_value(&w, doc);
	assert_true(w.ok);
	assert_int_equal(w.len, strlen(want));
	got = malloc(w.len);
	kms_jw_init(&w, got, strlen(want), true);
	kms_jw_value(&w, doc);
	assert_true(w.ok);
	assert_memory_equal(got, want, strlen(want));
	free(got);

	/* too small a buffer: the length is counted, nothing is written past the end */
	memset(small, 'x', sizeof(small));
	kms_jw_init(&w, small, 4, true);
	kms_jw_value(&w, doc);
	assert_int_equal(w.len, strlen(want));
	assert_memory_equal(small + 4, "xxxx", 4);
	kms_json_free_str(want, 0);
	json_decref(doc);

	/* kms_jw_text writes what kms_json_text makes: invalid UTF-8 masked, NULL as null */
	{
		static const char *const texts[] = {"ok \xc3\xa9", "bad \xc3 x \xe9", "\xed\xa0\x80",
						    "\xc0\xaf", "\xf4\x90\x80\x80", "tab\there", NULL};
		for (size_t i = 0; i <= sizeof(texts) / sizeof(texts[0]) - 1; i++) {
			json_t *t = kms_json_text(texts[i]);
			assert_non_null(t);
			n = json_dumpb(t, buf, sizeof(buf), JSON_COMPACT | JSON_ENCODE_ANY | JSON_ENSURE_ASCII);
			assert_true(n > 0 && n < sizeof(buf));
			kms_jw_init(&w, small, 0, true);
			kms_jw_text(&w, texts[i]);
			assert_int_equal(w.len, n);
			got = malloc(n);
			kms_jw_init(&w, got, n, true);
			kms_jw_text(&w, texts[i]);
			assert_memory_equal(got, buf, n);
			free(got);
			json_decref(t);
		}
	}

	/* a string jansson would not dump (not UTF-8, made without its check) fails here too */
	bad = json_object();
	json_object_set_new_nocheck(bad, "k", json_string_nocheck("\xff"));
	assert_null(json_dumps(bad, JSON_COMPACT));
	assert_null(kms_json_dump(bad, &len));
	json_decref(bad);
	assert_null(kms_json_dump(NULL, &len));
}

/* kms_json_parse_object reads the usual body itself and leaves the rest to jansson: for
 * every input the result must be what json_loadb(JSON_REJECT_DUPLICATES) makes (same
 * members, same order, same types), and a refusal must be a refusal. */
static void test_json_parse_matches_jansson(void **state)
{
	static const char *const inputs[] = {
		"{}", " {\"a\":1} ", "{\"ciphertext\":\"kms:v1:AAAA\",\"bits\":256}",
		"{\"a\":{\"b\":[1,-2,0,-0,true,false,null,\"x\",[],{}]},\"c\":\"\"}",
		"{\"u\":\"caf\xc3\xa9 \xf0\x9f\x98\x80\",\"\xc3\xa9\":1}", "{\"n\":123456789012345678}",
		"{\"n\":1234567890123456789}", "{\"n\":9223372036854775808}", "{\"n\":1.5}", "{\"n\":1e3}",
		"{\"n\":01}", "{\"n\":-}", "{\"n\":1x}", "{\"e\":\"a\\\"b\\\\c\\u00e9\\n\"}", "{\"a\":1,\"a\":2}",
		"{\"a\":1,}", "{\"a\" 1}", "{\"a\":tru}", "{\"a\":truex}", "{\"a\":nul}", "{\"a\":[1,]}",
		"{\"a\":1} x", "[1]", "\"s\"", "", "   ", "{", "{\"a\":\"\xc3\"}", "{\"a\":\"\xed\xa0\x80\"}",
		"{\"a\":\"tab\there\"}", "{\"a\":\"\x7f\"}", "\xef\xbb\xbf{}", "{\t\"a\"\r\n:\n1\t}",
		"{\"d\":[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]}",
		"{\"batch_input\":[{\"ciphertext\":\"c1\"},{\"ciphertext\":\"c2\",\"encryption_context\":{\"p\":\"t\"}}]}",
	};
	size_t i;
	(void)state;

	for (i = 0; i < sizeof(inputs) / sizeof(inputs[0]); i++) {
		const char *in = inputs[i];
		json_error_t je;
		json_t *want = json_loadb(in, strlen(in), JSON_REJECT_DUPLICATES, &je), *got;
		kms_err e;

		got = kms_json_parse_object(in, strlen(in), &e);
		if (want == NULL || !json_is_object(want)) {
			if (got != NULL)
				fail_msg("input %zu (%s): jansson refuses it, kms_json_parse_object took it", i, in);
			assert_int_equal(e, KMS_ERR_INVALID);
		} else {
			char *a, *b;
			if (got == NULL)
				fail_msg("input %zu (%s): refused: %s", i, in, kms_err_detail(e));
			assert_int_equal(e, KMS_OK);
			assert_true(json_equal(want, got));
			a = json_dumps(want, JSON_COMPACT | JSON_ENCODE_ANY);
			b = json_dumps(got, JSON_COMPACT | JSON_ENCODE_ANY);
			assert_string_equal(a, b); /* the same order too */
			kms_json_free_str(a, 0);
			kms_json_free_str(b, 0);
		}
		json_decref(want);
		json_decref(got);
	}
	/* a NUL byte inside the buffer */
	{
		kms_err e;
		assert_null(kms_json_parse_object("{\"a\":\"x\0y\"}", 11, &e));
		assert_int_equal(e, KMS_ERR_INVALID);
	}
}

static void test_secret_memory(void **state)
{
	char path[] = "/tmp/kms-secret-XXXXXX";
	char *s = NULL;
	size_t len = 0;
	int fd;
	(void)state;

	s = kms_secret_alloc(100);
	assert_non_null(s);
	for (int i = 0; i < 100; i++)
		assert_int_equal(s[i], 0);
	kms_secret_free(s);
	kms_secret_free(NULL);
	assert_null(kms_secret_alloc(0));

	fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "1234\n", 5), 5);
	close(fd);
	assert_int_equal(chmod(path, 0600), 0);
	assert_int_equal(kms_secret_read_file(path, &s, &len), 0);
	assert_string_equal(s, "1234");
	assert_int_equal(len, 4);
	kms_secret_free(s);
	/* group-readable PIN files are refused */
	assert_int_equal(chmod(path, 0640), 0);
	assert_int_equal(kms_secret_read_file(path, &s, &len), -1);
	unlink(path);

	setenv("KMS_TEST_PIN", "5678", 1);
	assert_int_equal(kms_secret_from_env("KMS_TEST_PIN", &s, &len), 0);
	assert_string_equal(s, "5678");
	assert_null(getenv("KMS_TEST_PIN"));
	kms_secret_free(s);
	assert_int_equal(kms_secret_from_env("KMS_TEST_PIN", &s, &len), -1);
}

/* kms/base/fileio: whole writes and reads through a pipe (short reads), end of file,
 * and the directory syncs with their edge cases. */
static void test_fileio(void **state)
{
	char dir[] = "/tmp/kmsd-fileio-XXXXXX", path[256], big[PATH_MAX + 16];
	uint8_t out[100000], in[100001];
	int p[2], fd;
	pid_t pid;
	(void)state;

	for (size_t i = 0; i < sizeof(out); i++)
		out[i] = (uint8_t)(i * 7 + 3);
	/* more than a pipe buffer: the reader sees short reads, the writer short writes */
	assert_int_equal(pipe(p), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(p[0]);
		_exit(kms_write_all(p[1], out, sizeof(out)) == 0 ? 0 : 1);
	}
	close(p[1]);
	assert_int_equal(kms_read_full(p[0], in, sizeof(in)), (ssize_t)sizeof(out)); /* end of file */
	assert_memory_equal(in, out, sizeof(out));
	close(p[0]);
	{
		int st = -1;

		assert_int_equal(waitpid(pid, &st, 0), pid);
		assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	}
	assert_int_equal(kms_write_all(-1, out, 1), -1);
	assert_int_equal(errno, EBADF);
	assert_int_equal(kms_read_full(-1, in, 1), -1);

	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/f", dir);
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
	assert_true(fd >= 0);
	assert_int_equal(kms_write_all(fd, "abc", 3), 0);
	close(fd);
	assert_int_equal(kms_fsync_dir(dir), 0);
	assert_int_equal(kms_fsync_parent(path), 0);
	assert_int_equal(kms_fsync_parent("/etc"), 0); /* a name in the root */
	assert_int_equal(kms_fsync_parent("relative-name"), 0); /* the working directory */
	assert_int_equal(kms_fsync_dir(path), -1); /* not a directory */
	assert_int_equal(errno, ENOTDIR);
	memset(big, 'a', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	big[sizeof(big) - 3] = '/';
	assert_int_equal(kms_fsync_parent(big), -1);
	assert_int_equal(errno, ENAMETOOLONG);
	assert_int_equal(unlink(path), 0);
	assert_int_equal(rmdir(dir), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_b64_rfc4648_vectors), cmocka_unit_test(test_b64_rejects),
		cmocka_unit_test(test_hex),		     cmocka_unit_test(test_err_table),
		cmocka_unit_test(test_json_strict),	     cmocka_unit_test(test_secret_memory),
		cmocka_unit_test(test_fileio),		     cmocka_unit_test(test_json_writer_matches_jansson),
		cmocka_unit_test(test_json_parse_matches_jansson),
	};
	kms_json_init();
	return cmocka_run_group_tests_name("base", tests, NULL, NULL);
}
